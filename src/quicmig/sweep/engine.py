"""Engines that run many Tasks: in this process, on a local process pool, or on Dask.

    for task, record in map_tasks(tasks, engine="local", workers=2):
        ...  # record: run_task(task), i.e. a Result dict, or an error record ("error" key)

Engines only schedule: every run goes through quicmig.sweep.task.run_task, and the caller
stores or prints what comes back, so the results are the same whatever the engine and the
number of workers (only the `wall` fields differ). Leaving the loop early (Ctrl-C, break)
stops the workers: a pool's processes are terminated, a Dask sweep's futures cancelled.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from quicmig.errors import QuicmigError
from quicmig.sweep import task as task_module
from quicmig.sweep.task import Task, VersionMismatch, describe_versions, error_record, run_task

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

ENGINES = ("local", "dask", "serial")
Outcome = tuple[Task, dict[str, Any]]
CONNECT_TIMEOUT = 3.0  # seconds to wait for a --scheduler to answer
IN_FLIGHT = 4  # Dask futures submitted per worker thread ahead of the results
STOP_TIMEOUT = 5.0  # seconds a pool worker gets to exit after being told to


def default_workers() -> int:
    """One worker per core this process may use."""
    return len(os.sched_getaffinity(0)) or 1


def map_tasks(
    tasks: Iterable[Task],
    engine: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    ordered: bool = False,
) -> Generator[Outcome, None, None]:
    """Run every task on `engine` and yield (task, record) as runs finish, or in task order
    if `ordered` (what `quicmig run all` wants for its table).

    `workers`: pool processes, or LocalCluster workers (default: one per core); `scheduler`:
    the address of an existing dask.distributed scheduler (engine "dask" only).
    Raises QuicmigError if Dask is missing, the scheduler does not answer, or a worker runs
    other quicmig or aioquic versions than this process.
    """
    tasks = list(tasks)
    if engine not in ENGINES:
        raise QuicmigError(f"engine {engine!r}: allowed: {', '.join(ENGINES)}")
    count = default_workers() if workers is None else workers
    if count < 1:
        raise QuicmigError(f"--workers {count}: must be at least 1")
    if engine == "serial":
        outcomes: Generator[Outcome, None, None] = ((task, run_task(task)) for task in tasks)
    elif engine == "local":
        outcomes = _local(tasks, count)
    else:
        outcomes = _dask(tasks, count, scheduler)
    if not ordered:
        return outcomes
    return _in_order(tasks, outcomes)


def _in_order(tasks: list[Task], outcomes: Iterator[Outcome]) -> Generator[Outcome, None, None]:
    position = {task.id: index for index, task in enumerate(tasks)}
    waiting: dict[int, Outcome] = {}
    next_index = 0
    for outcome in outcomes:
        waiting[position[outcome[0].id]] = outcome
        while next_index in waiting:
            yield waiting.pop(next_index)
            next_index += 1


# --- local process pool --------------------------------------------------------------------


def _worker(conn: Connection) -> None:
    """A pool process: run the tasks it is sent until told to stop (None) or orphaned."""
    # Ctrl-C reaches the whole process group; the main process decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the main process is gone
            return
        if task is None:
            return
        conn.send(run_task(task))


class _Slot:
    """One worker process and the task it is running (None: idle)."""

    def __init__(self, context: Any) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.process: BaseProcess = context.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.task: Task | None = None

    def give(self, task: Task) -> None:
        self.task = task
        self.conn.send(task)


def _context() -> Any:
    """forkserver: workers fork from a clean server that has imported the simulator once,
    so starting one is cheap and it inherits none of this process's threads (rich's progress
    refresh, Dask's event loop) or locks, as a plain fork would."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["quicmig.sweep.task", "quicmig.sim.runner"])
    return context


def _local(tasks: Iterable[Task], workers: int) -> Generator[Outcome, None, None]:
    pending = deque(tasks)
    context = _context()
    slots: list[_Slot] = []
    try:
        slots = [_Slot(context) for _ in range(min(workers, len(pending)))]
        while pending or any(slot.task is not None for slot in slots):
            for index, slot in enumerate(slots):
                if slot.task is None and pending:
                    slots[index] = _give(slot, pending.popleft(), context)
            busy = [slot for slot in slots if slot.task is not None]
            ready = set(wait([s.conn for s in busy] + [s.process.sentinel for s in slots]))
            for index, slot in enumerate(slots):
                task = slot.task
                if task is not None and slot.conn in ready:
                    try:
                        record = slot.conn.recv()
                    except (EOFError, OSError):  # the pipe closed: the worker died
                        pass
                    else:
                        slot.task = None
                        yield task, record
                        continue
                if slot.process.sentinel in ready or (task is not None and slot.conn in ready):
                    slot.process.join()
                    slot.conn.close()
                    slots[index] = _Slot(context)
                    if slot.task is not None:
                        yield slot.task, _died(slot.task, slot.process.exitcode)
    finally:
        _stop(slots)


def _give(slot: _Slot, task: Task, context: Any) -> _Slot:
    """Hand `task` to `slot`, or to a new worker if that one has died since."""
    try:
        slot.give(task)
        return slot
    except OSError:
        slot.process.join()
        slot.conn.close()
        fresh = _Slot(context)
        fresh.give(task)
        return fresh


def _died(task: Task, exitcode: int | None) -> dict[str, Any]:
    return error_record(task, f"worker process died (exit code {exitcode}) while running this task")


def _stop(slots: list[_Slot]) -> None:
    """Tell idle workers to exit; terminate busy ones (an interrupted sweep)."""
    for slot in slots:
        if slot.task is None and slot.process.is_alive():
            with contextlib.suppress(OSError):
                slot.conn.send(None)
        else:
            slot.process.terminate()
    for slot in slots:
        slot.process.join(STOP_TIMEOUT)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join()
        slot.conn.close()


# --- Dask ----------------------------------------------------------------------------------


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    """A distributed.Client of the scheduler at `scheduler`, or of a LocalCluster of
    `workers` single-threaded processes that is closed again on exit."""
    distributed = _distributed()
    Client, LocalCluster = distributed.Client, distributed.LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except Exception as exc:  # OSError, TimeoutError, ValueError for a bad address
            raise QuicmigError(
                f"--scheduler {scheduler}: no dask scheduler answered within "
                f"{CONNECT_TIMEOUT:g} s ({type(exc).__name__}); start one (`dask scheduler`) "
                "or leave out --scheduler for a cluster on this machine"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _distributed() -> Any:
    """The dask.distributed module (an optional dependency: the `cluster` extra)."""
    try:
        return importlib.import_module("distributed")
    except ImportError:
        raise QuicmigError(
            "--engine dask needs dask.distributed: pip install 'quicmig[cluster]'"
        ) from None


def worker_versions() -> dict[str, str]:
    """What a worker reports: a module-level function, so Dask sends it by name and the
    worker answers with its own installed versions."""
    return importlib.import_module("quicmig.sweep.task").versions()  # type: ignore[no-any-return]


def check_versions(client: Any) -> None:
    """Refuse workers whose quicmig or aioquic differ from this process's (QuicmigError)."""
    here = task_module.versions()
    try:
        found: dict[str, dict[str, str]] = client.run(worker_versions)
    except ModuleNotFoundError as exc:
        raise QuicmigError(
            f"dask workers cannot import {exc.name}: install quicmig "
            f"({describe_versions(here)}) on every worker"
        ) from None
    for address, theirs in sorted(found.items()):
        if theirs != here:
            raise VersionMismatch(
                f"dask worker {address} runs {describe_versions(theirs)}, this machine "
                f"{describe_versions(here)}; install the same versions on every worker"
            )


def _dask(
    tasks: Iterable[Task], workers: int, scheduler: str | None
) -> Generator[Outcome, None, None]:
    as_completed = _distributed().as_completed
    with dask_client(workers, scheduler) as client:
        check_versions(client)
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        queue = iter(tasks)
        running: dict[Any, Task] = {}
        futures = as_completed()

        def submit() -> None:
            for task in queue:
                future = client.submit(run_task, task, key=f"quicmig-run-{task.id}", pure=False)
                running[future.key] = task
                futures.add(future)
                return

        for _ in range(max(threads, 1) * IN_FLIGHT):
            submit()
        try:
            for future in futures:
                task = running.pop(future.key)
                try:
                    record = future.result()
                except Exception as exc:  # KilledWorker: the run killed its worker each time
                    record = error_record(task, f"{type(exc).__name__}: {exc}")
                future.release()
                submit()
                yield task, record
        finally:
            if running:
                client.cancel(list(futures.futures))
