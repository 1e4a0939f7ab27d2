"""Stopping a live run on Ctrl-C or SIGTERM: cancel it, let it clean up, then stop."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GIVE_UP_AFTER = 3  # signals: from the third on, stop waiting for the run to wind down


def run_stoppable(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, where the first SIGINT or SIGTERM cancels `main` (whose cleanup
    tears its network down) and raises KeyboardInterrupt once it has wound down.

    Instead of asyncio.run's own SIGINT handling, whose second Ctrl-C raises
    KeyboardInterrupt wherever the loop is: it can drop the wakeup of a task being
    cancelled, and asyncio.run then waits for that task forever (seen in 2 of about 30
    `quicmig run --backend lab` runs given a second Ctrl-C). Here the second is ignored; the
    third gives up waiting and raises at once, for a wind-down that hangs (the caller still
    cleans up).
    """
    count = 0
    target: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        if count == 1 and target is not None:
            loop, task = target
            loop.call_soon_threadsafe(task.cancel)
        elif count >= GIVE_UP_AFTER:
            raise KeyboardInterrupt(f"signal {signum}")

    async def supervised() -> T:
        nonlocal target
        task = asyncio.current_task()
        assert task is not None
        target = (asyncio.get_running_loop(), task)
        if count:  # a signal came before there was anything to cancel
            main.close()
            raise asyncio.CancelledError
        return await main

    previous: dict[int, signal._HANDLER] = {}
    try:
        if threading.current_thread() is threading.main_thread():
            for stop_signal in STOP_SIGNALS:
                previous[stop_signal] = signal.signal(stop_signal, stop)
        result = asyncio.run(supervised())
    except asyncio.CancelledError:
        if count:
            raise KeyboardInterrupt from None
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if count:  # asked to stop, and the run finished anyway: still an interrupted run
        raise KeyboardInterrupt
    return result
