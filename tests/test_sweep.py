"""`quicmig sweep`: grid expansion and task names, resumable storage, the local pool and a real
dask.distributed LocalCluster giving identical runs, version checks, aggregation, bad input.

Runs are tiny: nat-rebinding with a 200 kB download and the rebinding at 0.1 s (about 0.05 s
of CPU each), on a lossy WiFi link so that seeds give different runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from quicmig.cli import main
from quicmig.core.results import write_atomically
from quicmig.errors import InputError, QuicmigError
from quicmig.model.loader import builtin_names
from quicmig.sweep import task as task_module
from quicmig.sweep.aggregate import aggregate, check_state
from quicmig.sweep.engine import map_tasks
from quicmig.sweep.spec import Flags, SweepSpec, build_spec, parse_seeds, sweep_names
from quicmig.sweep.stats import bootstrap_interval, median
from quicmig.sweep.store import MANIFEST, RunStore
from quicmig.sweep.task import Task, run_task

TINY = ("workload.bytes=200000", "timeline.0.at_s=0.1", "duration_s=3", "links.wifi.loss_pct=3")
TINY_ARGS = [arg for item in TINY for arg in ("--set", item)]


def tiny(seeds: tuple[int, ...] = (1, 2, 3), **changes: Any) -> SweepSpec:
    return replace(SweepSpec("nat-rebinding", fixed=TINY, seeds=seeds), **changes)


def without_wall(record: dict[str, Any]) -> dict[str, Any]:
    """A run minus its wall-clock fields, the only ones that vary between runs."""
    return {key: value for key, value in record.items() if key != "wall"}


# --- grid expansion and naming -------------------------------------------------------------


def test_grid_expands_to_the_cartesian_product_with_stable_distinct_names() -> None:
    spec = tiny(
        seeds=(1, 2),
        grid=(("links.wifi.delay_ms", (10, 30)), ("client.keepalive_s", (0.5, 1.0, 2.0))),
        stacks=("stock", "quicmig"),
    )
    tasks = spec.expand()
    assert len(tasks) == spec.runs == 2 * 3 * 2 * 2
    assert len({t.id for t in tasks}) == len(tasks)
    assert [t.id for t in tiny(seeds=(1, 2), grid=spec.grid, stacks=spec.stacks).expand()] == [
        t.id for t in tasks
    ]
    point = next(
        t for t in tasks if dict(t.params) == {"links.wifi.delay_ms": 30, "client.keepalive_s": 2.0}
    )
    # The grid's values are in the scenario each run gets, after the fixed ones.
    assert point.tree["topology"]["links"]["wifi"]["delay_ms"] == 30
    assert point.tree["client"]["keepalive_s"] == 2.0
    assert point.tree["workload"]["bytes"] == 200000
    assert point.overrides[-2:] == ("links.wifi.delay_ms=30", "client.keepalive_s=2.0")
    # Another value changes the names of its own runs only.
    other = tiny(
        seeds=(1, 2), grid=(("links.wifi.delay_ms", (10, 40)), spec.grid[1]), stacks=spec.stacks
    )
    kept = {t.id for t in tasks} & {t.id for t in other.expand()}
    assert len(kept) == len(tasks) // 2


def test_task_name_depends_on_content_seed_stack_and_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (base,) = tiny(seeds=(1,)).expand()
    (seed,) = tiny(seeds=(2,)).expand()
    (stack,) = tiny(seeds=(1,), stacks=("quicmig",)).expand()
    (content,) = replace(tiny(seeds=(1,)), fixed=(*TINY, "workload.bytes=300000")).expand()
    assert len({base.id, seed.id, stack.id, content.id}) == 4
    monkeypatch.setattr(task_module, "versions", lambda: {"quicmig": "0.1.0", "aioquic": "1.7.3"})
    (newer,) = tiny(seeds=(1,)).expand()
    assert newer.id != base.id


def test_seed_ranges() -> None:
    assert parse_seeds("1-3,7,2") == (1, 2, 3, 7)
    assert parse_seeds("5") == (5,)
    for bad in ("5-1", "a-b", "", "1-", "-3"):
        with pytest.raises(InputError, match="--seeds"):
            parse_seeds(bad)


def test_shipped_sweep_file() -> None:
    assert not set(sweep_names()) & set(builtin_names())
    spec = build_spec("network-switch-cellular", Flags())
    assert spec.target == "network-switch"
    assert [key for key, _ in spec.grid] == ["links.cellular.delay_ms", "links.cellular.loss_pct"]
    assert spec.runs == 4 * 4 * 2 * 20
    # A --grid flag replaces the file's values for its key; --seeds replaces the seeds.
    spec = build_spec(
        "network-switch-cellular", Flags(grid=("links.cellular.delay_ms=20",), seeds="1-2")
    )
    assert spec.runs == 1 * 4 * 2 * 2


# --- bad input -----------------------------------------------------------------------------


def sweep_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["sweep", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "workload.byts=1,2"], "workload.byts: unknown key; allowed: "),
        (
            ["--grid", "links.wifi.delay_mss=1,2"],
            "delay_mss: unknown key; allowed: a, b, burst_len, delay_ms",
        ),
        (["--grid", "links.wifi.delay_ms="], "no values for links.wifi.delay_ms"),
        (["--grid", "links.wifi.delay_ms=-5"], "links.wifi.delay_ms=-5: "),
        (["--seeds", "5-1"], "--seeds '5-1'"),
        (["--stack", "stock,quic"], "--stack 'quic': allowed: stock, quicmig"),
        (["--backend", "proxy"], "--backend proxy: a sweep runs on the simulator only"),
        (["--grid", "duration_s=3,4"], "duration_s: both fixed (--set) and swept (--grid)"),
        (
            ["--seeds", "0-999999", "--stack", "stock,quicmig"],
            "2,000,000 runs (1 grid points x 2 stacks x 1,000,000 seeds)",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    code, _, err = sweep_cli(capsys, "nat-rebinding", *TINY_ARGS, *args, "--out", str(out))
    assert code == 2
    assert message in err
    assert err.count("\n") == 1
    assert not out.exists()


def test_folder_of_another_sweep_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, _, _ = sweep_cli(
        capsys, "nat-rebinding", *TINY_ARGS, "--seeds", "1", "--out", str(out), "-q"
    )
    assert code == 0
    before = sorted(p.name for p in (out / "runs").iterdir())
    # Another fixed value is another study: refused, and nothing is added.
    code, _, err = sweep_cli(
        capsys, "nat-rebinding", *TINY_ARGS, "--set", "links.wifi.delay_ms=5", "--out", str(out)
    )
    assert code == 2
    assert "holds the runs of another sweep: fixed --set values" in err
    assert sorted(p.name for p in (out / "runs").iterdir()) == before
    # A folder with other files and no manifest is not taken either.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    code, _, err = sweep_cli(capsys, "nat-rebinding", *TINY_ARGS, "--out", str(other))
    assert code == 2
    assert "not empty and not a sweep folder" in err


def test_dry_run_counts_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, stdout, _ = sweep_cli(
        capsys, "nat-rebinding", *TINY_ARGS, "--grid", "links.wifi.delay_ms=10,20,30",
        "--seeds", "1-5", "--stack", "stock,quicmig", "--dry-run", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    assert stdout.startswith("30 runs (3 links.wifi.delay_ms x 2 stacks x 5 seeds); 0 already")
    assert "30 to run: about" in stdout
    assert not out.exists()


# --- storage: resume, interruption ---------------------------------------------------------


def _start_sweep(out: Path, seeds: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "quicmig", "sweep", "nat-rebinding", *TINY_ARGS,
         "--seeds", seeds, "--workers", "1", "--out", str(out), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def _wait_for_runs(out: Path, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "runs").is_dir() and len(list((out / "runs").glob("*.json"))) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the sweep stored fewer than {count} runs (exit {process.poll()})")


def _group_gone(pgid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _stored(out: Path, partial: bool = False) -> dict[str, int]:
    """Run files and their modification times; each must be a whole run, and unless
    `partial` (a SIGKILL of the sweep itself) there is no other file."""
    files = {}
    for path in (out / "runs").iterdir():
        if partial and path.name.endswith(".part"):
            continue
        assert path.suffix == ".json", path
        assert json.loads(path.read_text())["transfer"]["intact"] is True
        files[path.name] = path.stat().st_mtime_ns
    return files


def test_ctrl_c_keeps_finished_runs_and_a_rerun_runs_only_the_rest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    process = _start_sweep(out, "1-60")
    try:
        _wait_for_runs(out, 3, process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err
    assert _group_gone(process.pid), "worker processes left behind"
    first = _stored(out)
    assert 3 <= len(first) < 60
    assert f"interrupted: {len(first)} of 60 runs done" in err
    assert not list(out.rglob("*.part"))
    code, stdout, _ = sweep_cli(
        capsys, "nat-rebinding", *TINY_ARGS, "--seeds", "1-60", "--out", str(out)
    )
    assert code == 0
    assert f"60 of 60 runs done in {out} ({60 - len(first)} run now" in stdout
    second = _stored(out)
    assert len(second) == 60
    assert {name: second[name] for name in first} == first  # finished runs were not redone
    # The report was printed and written: one CSV row per run and migration.
    assert "Sweep: median [bootstrap 95 % interval]" in stdout
    rows = (out / "report.csv").read_text().splitlines()
    assert len(rows) == 1 + sum(
        max(1, len(json.loads(p.read_text())["migrations"])) for p in (out / "runs").iterdir()
    )
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_killed_sweep_keeps_whole_runs_and_resumes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    process = _start_sweep(out, "1-40")
    try:
        _wait_for_runs(out, 2, process)
        os.killpg(process.pid, signal.SIGKILL)  # no cleanup runs: the worst case
        process.communicate(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert _group_gone(process.pid)
    first = _stored(out, partial=True)
    assert 2 <= len(first) < 40
    (out / "runs" / "deadbeef.json.part").write_text('{"half": ')  # as a kill mid-write leaves
    code, stdout, _ = sweep_cli(
        capsys, "nat-rebinding", *TINY_ARGS, "--seeds", "1-40", "--out", str(out), "-q"
    )
    assert code == 0
    assert f"({40 - len(first)} run now" in stdout
    assert not list(out.rglob("*.part"))
    second = _stored(out)
    assert len(second) == 40
    assert {name: second[name] for name in first} == first


def test_write_atomically_leaves_nothing_on_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: Path, target: Path) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "run.json", "{}\n")
    assert list(tmp_path.iterdir()) == []


# --- engines -------------------------------------------------------------------------------


def test_a_killed_pool_worker_fails_its_run_only() -> None:
    import multiprocessing

    quick = tiny(seeds=(1,)).expand()
    slow = replace(tiny(seeds=(1,)), fixed=(*TINY[:3], "workload.bytes=3000000")).expand()
    tasks = quick + slow + tiny(seeds=(2, 3)).expand()
    outcomes = map_tasks(tasks, "local", workers=2)
    records = [next(outcomes)]
    assert records[0][0].id == quick[0].id  # the slow run is still going on
    # The pool started its two workers in task order: the second runs the slow task.
    workers = sorted(multiprocessing.active_children(), key=lambda c: int(c.name.split("-")[-1]))
    assert len(workers) == 2 and workers[1].pid is not None
    os.kill(workers[1].pid, signal.SIGKILL)
    records += list(outcomes)
    assert sorted(t.id for t, _ in records) == sorted(t.id for t in tasks)
    failed = {t.id: r["error"] for t, r in records if "error" in r}
    assert list(failed) == [slow[0].id]
    assert "worker process died (exit code -9)" in failed[slow[0].id]


def test_run_errors_are_recorded_with_the_versions_named() -> None:
    (task,) = tiny(seeds=(1,)).expand()
    record = run_task(replace(task, versions=(("aioquic", "1.6.0"), ("quicmig", "0.1.0"))))
    assert record["sweep"]["task"] == task.id
    assert record["error"].startswith("VersionMismatch: worker runs quicmig 0.1.0, aioquic 1.7.2")
    assert "planned with quicmig 0.1.0, aioquic 1.6.0" in record["error"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A real dask.distributed LocalCluster of 2 worker processes, closed after the tests."""
    pytest.importorskip("distributed", reason="dask.distributed not installed (the cluster extra)")
    from quicmig.sweep.engine import dask_client

    with dask_client(2, None) as client:
        yield str(client.scheduler.address)


def test_local_pool_and_dask_give_identical_runs(cluster: str) -> None:
    tasks = tiny(seeds=(1, 2, 3), stacks=("stock", "quicmig")).expand()
    runs = {}
    for engine, scheduler in (("serial", None), ("local", None), ("dask", cluster)):
        outcomes = map_tasks(tasks, engine, workers=2, scheduler=scheduler, ordered=True)
        runs[engine] = [(t.id, without_wall(r)) for t, r in outcomes]
    assert [task_id for task_id, _ in runs["local"]] == [t.id for t in tasks]  # ordered
    assert runs["serial"] == runs["local"] == runs["dask"]
    completions = {r["transfer"]["completed_at"] for _, r in runs["dask"]}
    assert len(completions) >= 2  # the seeds made different runs: the comparison has teeth
    assert all("error" not in r and r["sweep"]["task"] == i for i, r in runs["dask"])


def test_dask_workers_with_other_versions_are_refused(
    cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = tiny(seeds=(1,)).expand()
    monkeypatch.setattr(task_module, "versions", lambda: {"quicmig": "0.1.0", "aioquic": "1.7.3"})
    with pytest.raises(
        QuicmigError,
        match=r"dask worker tcp://\S+ runs quicmig 0\.1\.0, aioquic 1\.7\.2, "
        r"this machine quicmig 0\.1\.0, aioquic 1\.7\.3",
    ):
        list(map_tasks(tasks, "dask", scheduler=cluster))


def test_a_scheduler_that_does_not_answer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("distributed", reason="dask.distributed not installed (the cluster extra)")
    started = time.monotonic()
    code, _, err = sweep_cli(
        capsys, "nat-rebinding", *TINY_ARGS, "--engine", "dask",
        "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "out"), "-q",
    )  # fmt: skip
    assert code == 1
    assert "--scheduler tcp://127.0.0.1:9: no dask scheduler answered within" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing half-made
    assert time.monotonic() - started < 10


# --- aggregation ---------------------------------------------------------------------------


def test_median_and_bootstrap_interval_on_known_inputs() -> None:
    import numpy as np

    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert bootstrap_interval([7.0]) == (7.0, 7.0)
    assert bootstrap_interval([5.0] * 20) == (5.0, 5.0)
    sample = list(np.random.default_rng(1).normal(10.0, 2.0, size=400))
    low, high = bootstrap_interval(sample)
    assert bootstrap_interval(sample) == (low, high)  # seeded
    assert low < median(sample) < high
    # The median's standard error for a normal sample is about 1.2533 sigma / sqrt(n).
    expected = 2 * 1.96 * 1.2533 * 2.0 / 400**0.5
    assert 0.7 * expected < high - low < 1.3 * expected


def test_check_state_reads_both_schemas() -> None:
    assert check_state({"name": "a", "passed": True}) == "passed"
    assert check_state({"name": "a", "passed": False}) == "failed"
    assert check_state({"name": "a", "passed": None}) == "unsupported"
    assert check_state({"name": "a", "state": "not_applicable"}) == "not_applicable"


def _fake_run(
    task: str, delay: int, stack: str, rtts: list[float | None], ok: bool
) -> dict[str, Any]:
    return {
        "schema": "quicmig.result/2",
        "verdict": "passed" if ok else "failed",
        "expected_verdict": "passed",
        "seed": 1,
        "scenario": "s",
        "checks": [
            {"name": "paths-validated", "state": "passed" if ok else "failed"},
            {"name": "first-packet-challenge", "state": "unsupported"},
        ],
        "transfer": {"completed_at": 2.0 if ok else None, "intact": ok},
        "migrations": [
            {
                "observed": "port_change",
                "validation_rtt": r,
                "detection_delay": 0.01,
                "interruption": 0.1,
                "retransmitted_bytes": 1000,
            }
            for r in rtts
        ],
        "sweep": {"task": task, "params": {"links.wifi.delay_ms": delay}, "stack": stack},
    }


def test_aggregate_groups_and_rates_on_known_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = RunStore(tmp_path)
    store.claim(SweepSpec("nat-rebinding", grid=(("links.wifi.delay_ms", (10, 30)),)))
    runs = [
        _fake_run("a1", 10, "stock", [0.02, 0.04], True),
        _fake_run("a2", 10, "stock", [0.03], True),
        _fake_run("a3", 10, "stock", [None], False),
        _fake_run("b1", 30, "stock", [0.06], True),
        _fake_run("c1", 10, "quicmig", [], True),
    ]
    for run in runs:
        store.put(run)
    store.put(
        {"error": "ValueError: boom", "traceback": "", "sweep": runs[3]["sweep"] | {"task": "b2"}}
    )
    summary = aggregate(store, tmp_path / "runs.csv")
    by_group = {(g.params, g.stack): g for g in summary.groups}
    assert list(by_group) == [((10,), "quicmig"), ((10,), "stock"), ((30,), "stock")]
    stock10 = by_group[(10,), "stock"]
    assert stock10.runs == 3
    assert stock10.pass_rate("paths-validated") == (2, 3)
    assert stock10.pass_rate("first-packet-challenge") == (0, 0)  # unsupported: not judged
    rtt = stock10.estimate("validation_rtt")
    assert (rtt.count, rtt.missing, rtt.median) == (3, 1, 0.03)
    assert (
        rtt.low is not None and rtt.high is not None and 0.02 <= rtt.low <= 0.03 <= rtt.high <= 0.04
    )
    assert stock10.estimate("completion").count == 2
    assert by_group[(30,), "stock"].errors == 1
    assert summary.errors == ["b2: ValueError: boom"]
    rows = (tmp_path / "runs.csv").read_text().splitlines()
    assert rows[0].startswith("task,scenario,stack,seed,links.wifi.delay_ms,verdict")
    assert len(rows) == 1 + 2 + 1 + 1 + 1 + 1  # one row per run and migration (at least one)
    code, _, err = sweep_cli(capsys, "report", str(tmp_path), "--metrics", "rtt")
    assert (code, err.count("\n")) == (2, 1)
    assert "--metrics 'rtt': allowed: validation_rtt" in err
    code, stdout, _ = sweep_cli(capsys, "report", str(tmp_path), "--plot", str(tmp_path / "f.svg"))
    assert code == 0
    assert "5 runs; CSV" in stdout
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:500]


def test_report_of_a_folder_that_is_no_sweep(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = sweep_cli(capsys, "report", str(tmp_path))
    assert code == 2
    assert f"no {MANIFEST}" in err


def test_tasks_pickle_as_plain_data() -> None:
    import pickle

    (task,) = tiny(seeds=(1,)).expand()
    copy = pickle.loads(pickle.dumps(task))
    assert isinstance(copy, Task) and copy == task
