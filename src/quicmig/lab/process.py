"""A child process (inside a lab namespace, or the impairment element), its output read line
by line by threads, stopped with SIGTERM and then SIGKILL."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

STOP_TIMEOUT = 3.0  # seconds to wait for a process to exit after SIGTERM


class Process:
    """A child process inside a namespace, its output read line by line by threads."""

    def __init__(self, name: str, args: Sequence[str], cwd: Path, stdin: bool) -> None:
        self.name = name
        self.popen = subprocess.Popen(
            list(args),
            cwd=cwd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches only quicmig lab, which stops us
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._on_line: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def on_line(self, callback: Callable[[str], None]) -> None:
        """Call `callback(line)` for every stdout line, including those already read."""
        with self._lock:
            self._on_line = callback
            lines = list(self.stdout)
        for line in lines:
            callback(line)

    def _read(self, stream: IO[str] | None, into: list[str]) -> None:
        if stream is None:
            return
        for raw in stream:
            line = raw.rstrip("\n")
            with self._lock:
                into.append(line)
                callback = self._on_line if into is self.stdout else None
            if callback is not None:
                callback(line)

    def write(self, line: str) -> None:
        if self.popen.stdin is not None and self.popen.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.popen.stdin.write(line + "\n")
                self.popen.stdin.flush()

    def tail(self, lines: int = 3) -> str:
        text = [line for line in self.stderr + self.stdout if line.strip()]
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; closes the pipes."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait()
        for thread in self._threads:
            thread.join(1.0)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll `condition` every 20 ms for up to `timeout` seconds; its last value."""
    deadline = time.monotonic() + timeout
    while not (met := condition()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return met
