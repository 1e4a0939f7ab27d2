"""Headless Chromium as an HTTP/3 download client, driven over --remote-debugging-pipe.

    python -m quicmig.interop.chromium_client --url https://localhost:P/file --host 127.0.0.1
        --spki BASE64 --download-dir D [--keylog F] [--netlog F] --profile DIR

Chromium is forced onto QUIC for the URL's origin (no Alt-Svc over TCP first), resolves the
URL's name to --host (so the TLS server name stays the certificate's, e.g. localhost), trusts
the server's key by its SPKI hash, and saves the body with its own download manager into
--download-dir; this program prints the file's SHA-256. The DevTools protocol runs over file
descriptors 3 and 4 as NUL-terminated JSON, so no websocket library is needed.

Every Chromium process runs in a session of its own and is killed with it. Chromium's own
port migration (a new local port when the path looks degraded) is off unless
--allow-port-migration: a test's path changes are then the network's only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from quicmig.errors import InputError, QuicmigError
from quicmig.live.stop import run_stoppable

DEFAULT_TIMEOUT = 60.0  # seconds for the download, once Chromium is up
# Seconds for Chromium to answer on the DevTools pipe. It usually takes under 2 s, but on a
# loaded machine a start has been seen to go silent for over 15 s before its first line.
STARTUP = 60.0
QUIT_GRACE = 5.0  # seconds for Chromium to exit after Browser.close

# Runs in the child before Chromium: --remote-debugging-pipe reads the DevTools protocol from
# file descriptor 3 and writes to 4, so move the two pipe ends there, then become Chromium.
EXEC_WITH_PIPE = """
import fcntl, os, sys
ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD_CLOEXEC, 10) for fd in sys.argv[1:3]]
for fd in sys.argv[1:3]:
    os.close(int(fd))
os.dup2(ends[0], 3)
os.dup2(ends[1], 4)
for fd in ends:
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


def browser_flags(profile: Path) -> list[str]:
    """Headless Chromium (also as root) in a fresh profile, quiet, driven over the pipe."""
    return [
        "--headless",
        "--no-sandbox",  # as root Chromium refuses to start without it
        f"--user-data-dir={profile}",  # a fresh profile: no cached session or broken-QUIC mark
        # quiet: no GPU process, no calls to Google's servers (there is no network here)
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--no-proxy-server",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-domain-reliability",
        "--metrics-recording-only",
        "--remote-debugging-pipe",
    ]


def quic_flags(origin: str, spki: str, allow_port_migration: bool = False) -> list[str]:
    """QUIC at once for `origin` (HOST:PORT), trusting the server's key by its SPKI hash."""
    # Chromium's own port migration probes a new local port when the path looks degraded;
    # off, a test's path changes are the network's only. (Chromium 156 follows a server's
    # preferred address by itself either way, as seen on the wire.)
    migration = "true" if allow_port_migration else "false"
    return [
        "--enable-quic",
        f"--origin-to-force-quic-on={origin}",  # no Alt-Svc over TCP first
        f"--ignore-certificate-errors-spki-list={spki}",  # the server's key, not a CA import
        "--force-fieldtrials=QUIC/Lab",
        f"--force-fieldtrial-params=QUIC.Lab:allow_port_migration/{migration}",
    ]


def chromium_flags(args: argparse.Namespace, origin: str, hostname: str) -> list[str]:
    """The download client's flags: QUIC for `origin`, the URL's name mapped to --host."""
    flags = [
        *browser_flags(args.profile),
        *quic_flags(origin, args.spki, args.allow_port_migration),
        f"--host-resolver-rules=MAP {hostname} {args.host}",  # the SNI stays the URL's name
    ]
    if args.keylog is not None:
        flags.append(f"--ssl-key-log-file={args.keylog}")
    if args.netlog is not None:
        flags += [f"--log-net-log={args.netlog}", "--net-log-capture-mode=Everything"]
    return [*flags, "about:blank"]


class DevTools:
    """The DevTools protocol over Chromium's --remote-debugging-pipe."""

    def __init__(self, reader: asyncio.StreamReader, write_fd: int) -> None:
        self._reader = reader
        self._write_fd = write_fd
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.on_event: Callable[[str, dict[str, Any]], None] = lambda method, params: None
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                message = json.loads((await self._reader.readuntil(b"\0"))[:-1])
                if "id" not in message:
                    self.on_event(message.get("method", ""), message.get("params", {}))
                    continue
                future = self._pending.pop(message["id"], None)
                if future is None or future.done():
                    continue
                if "error" in message:
                    future.set_exception(QuicmigError(f"DevTools: {message['error']}"))
                else:
                    future.set_result(message.get("result", {}))
        except asyncio.IncompleteReadError:
            pass  # Chromium closed its end
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(QuicmigError("Chromium closed the DevTools pipe"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        if self._task.done():
            raise QuicmigError("Chromium closed the DevTools pipe")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        try:
            os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise QuicmigError("Chromium closed the DevTools pipe") from None
        return await future

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        os.close(self._write_fd)


def session_processes(session: int) -> list[str]:
    """Each process of a session as `name pid STATE in WCHAN`: where a silent browser waits."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            wchan = (stat.parent / "wchan").read_text().strip()
        except OSError:
            continue  # gone meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        state, _ppid, _group, sid = text[text.rindex(")") + 2 :].split()[:4]
        if int(sid) == session and state != "Z":  # a zombie is dead, only not yet reaped
            found.append(f"{name} {stat.parent.name} {state} in {wchan or '-'}")
    return sorted(found, key=lambda line: int(line.split()[1]))


class Browser:
    """Chromium with its DevTools pipe, up once it has answered Browser.getVersion:
    `async with Browser(...) as devtools:`; `product` is then Chromium's name and version."""

    def __init__(
        self, chromium: str, flags: list[str], log: Path | None, startup: float = STARTUP
    ) -> None:
        self.chromium = chromium
        self.flags = flags
        self.log = log
        self.startup = startup
        self.product = ""
        self.process: asyncio.subprocess.Process | None = None
        self.devtools: DevTools | None = None
        self._pipe: asyncio.ReadTransport | None = None

    async def __aenter__(self) -> DevTools:
        try:
            devtools = await self._start()
            version = await asyncio.wait_for(devtools.send("Browser.getVersion"), self.startup)
        except TimeoutError:
            assert self.process is not None
            waiting = "; ".join(session_processes(self.process.pid)) or "none left"
            await self._stop(polite=False)
            raise QuicmigError(
                f"Chromium did not answer on its DevTools pipe within {self.startup:g} s "
                f"(its processes: {waiting})"
            ) from None
        except BaseException:
            await self._stop(polite=False)
            raise
        self.product = version.get("product", "?")
        return devtools

    async def _start(self) -> DevTools:
        to_chrome, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome = os.pipe()
        stderr = self.log.open("ab") if self.log is not None else None
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", EXEC_WITH_PIPE, str(to_chrome), str(from_chrome),
                self.chromium, *self.flags,
                pass_fds=(to_chrome, from_chrome), stdin=asyncio.subprocess.DEVNULL,
                stdout=stderr or asyncio.subprocess.DEVNULL,
                stderr=stderr or asyncio.subprocess.DEVNULL,
                start_new_session=True,  # its own group: renderer, GPU, zygotes die with it
            )  # fmt: skip
        except BaseException:
            for fd in (to_chrome_w, from_chrome_r):
                os.close(fd)
            raise
        finally:
            os.close(to_chrome)
            os.close(from_chrome)
            if stderr is not None:
                stderr.close()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
        self._pipe, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_chrome_r, "rb", 0)
        )
        self.devtools = DevTools(reader, to_chrome_w)
        return self.devtools

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop(polite=True)

    async def _stop(self, polite: bool) -> None:
        """Ask Chromium to close (if `polite`), give it a moment, then kill its session."""
        if self.devtools is not None:
            if polite:
                with contextlib.suppress(QuicmigError, TimeoutError):  # it may close the pipe first
                    await asyncio.wait_for(self.devtools.send("Browser.close"), QUIT_GRACE)
            await self.devtools.aclose()
        if self._pipe is not None:
            self._pipe.close()
        if self.process is not None:
            if polite:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.process.wait(), QUIT_GRACE)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()


async def download(args: argparse.Namespace) -> int:
    url = urlsplit(args.url)
    if url.scheme != "https" or not url.hostname or url.port is None:
        raise InputError(f"--url {args.url!r}: expected https://NAME:PORT/PATH")
    if not args.download_dir.is_dir():
        raise InputError(f"--download-dir {args.download_dir}: not a directory")
    chromium = shutil.which(args.chromium)
    if chromium is None:
        raise InputError(f"--chromium {args.chromium}: not found (apt-get install chromium)")
    origin = f"{url.hostname}:{url.port}"
    flags = chromium_flags(args, origin, url.hostname)
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    names: dict[str, str] = {}  # download guid -> suggested file name

    def on_event(method: str, params: dict[str, Any]) -> None:
        if method == "Browser.downloadWillBegin":
            names[params["guid"]] = params.get("suggestedFilename", "")
        elif (
            method == "Browser.downloadProgress"
            and params.get("state") != "inProgress"
            and not done.done()  # the first end only: completed or canceled
        ):
            done.set_result(params)

    browser = Browser(chromium, flags, args.log)
    async with browser as devtools:
        devtools.on_event = on_event
        print(f"browser {browser.product}", flush=True)
        started = time.monotonic()  # --timeout counts from here, not from Chromium's start
        try:
            progress = await asyncio.wait_for(_fetch(devtools, args, done), args.timeout)
        except TimeoutError:
            print(f"chromium: no complete download within {args.timeout:g} s", file=sys.stderr)
            return 1
    if progress is None:
        return 1
    seconds = time.monotonic() - started
    if progress.get("state") != "completed":
        print(
            f"chromium: the download of {args.url} ended {progress.get('state')}", file=sys.stderr
        )
        return 1
    path = args.download_dir / names.get(progress["guid"], "")
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "none"
    size = path.stat().st_size if path.is_file() else 0
    print(f"received {size} bytes in {seconds:.2f} s sha256 {digest} file {path.name}", flush=True)
    return 0 if path.is_file() else 1


async def _fetch(
    devtools: DevTools, args: argparse.Namespace, done: asyncio.Future[dict[str, Any]]
) -> dict[str, Any] | None:
    """Open --url in a new tab; the download's last progress event (None: it did not load)."""
    await devtools.send(
        "Browser.setDownloadBehavior",
        {"behavior": "allow", "downloadPath": str(args.download_dir), "eventsEnabled": True},
    )
    target = await devtools.send("Target.createTarget", {"url": "about:blank"})
    attached = await devtools.send(
        "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
    )
    navigated = await devtools.send("Page.navigate", {"url": args.url}, attached["sessionId"])
    error = navigated.get("errorText", "")
    # A body Chromium does not render becomes a download: the navigation says "aborted".
    if error and error != "net::ERR_ABORTED":
        print(f"chromium: cannot load {args.url}: {error}", file=sys.stderr)
        return None
    return await done


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m quicmig.interop.chromium_client",
        description="headless Chromium downloads one URL over HTTP/3",
    )
    top.add_argument("--chromium", default="chromium", help="the browser (default chromium)")
    top.add_argument("--url", required=True, help="https://NAME:PORT/PATH (NAME is the SNI)")
    top.add_argument("--host", default="127.0.0.1", help="IP address the URL's NAME maps to")
    top.add_argument("--spki", required=True, help="base64 SHA-256 of the server's public key")
    top.add_argument("--download-dir", type=Path, required=True)
    top.add_argument("--profile", type=Path, required=True, help="a fresh user-data directory")
    top.add_argument("--keylog", type=Path, help="TLS key log (--ssl-key-log-file)")
    top.add_argument("--netlog", type=Path, help="Chromium's NetLog JSON (--log-net-log)")
    top.add_argument("--log", type=Path, help="Chromium's own output (default: discarded)")
    top.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds for the download once Chromium is up (its start has {STARTUP:g} s)",
    )
    top.add_argument(
        "--allow-port-migration",
        action="store_true",
        help="let Chromium move to a new local port when the path looks degraded",
    )
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run_stoppable(download(args))
    except KeyboardInterrupt:
        return 130
    except QuicmigError as exc:
        print(f"chromium: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
