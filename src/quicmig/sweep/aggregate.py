"""Aggregate a sweep's run files: groups by swept parameters and stack, pass rates per check,
medians with bootstrap intervals, and a tidy CSV (one row per run and migration).

The run files are read one at a time and only numbers are kept (a few per run), so a sweep
of 10,000 runs aggregates in a few megabytes whatever the size of its files.
"""

from __future__ import annotations

import contextlib
import csv
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicmig.sweep.stats import bootstrap_interval, median
from quicmig.sweep.store import RunStore

# name -> (label, unit); per migration except completion (per run)
METRICS: dict[str, tuple[str, str]] = {
    "validation_rtt": ("validation round trip", "s"),
    "detection_delay": ("detection delay", "s"),
    "interruption": ("interruption", "s"),
    "completion": ("completion time", "s"),
    "retransmitted_bytes": ("bytes retransmitted", "B"),
}
MIGRATION_METRICS = ("validation_rtt", "detection_delay", "interruption", "retransmitted_bytes")
STATES = ("passed", "failed", "unsupported", "not_applicable")


def check_state(check: dict[str, Any]) -> str:
    """A check's state from either result schema: quicmig.result/2 says "state"; /1 said
    "passed": true / false / null (null: unsupported)."""
    state = check.get("state")
    if isinstance(state, str):
        return state
    passed = check.get("passed")
    return "unsupported" if passed is None else "passed" if passed else "failed"


@dataclass(frozen=True, slots=True)
class Estimate:
    count: int  # values the estimate is made of
    missing: int  # runs or migrations where the value was absent (not validated, not done)
    median: float | None
    low: float | None
    high: float | None


@dataclass(slots=True)
class Group:
    """The runs of one grid point and stack."""

    params: tuple[Any, ...]
    stack: str
    runs: int = 0
    errors: int = 0  # runs that raised in their worker (errors/)
    verdicts: Counter[str] = field(default_factory=Counter)
    as_expected: int = 0
    checks: dict[str, Counter[str]] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)
    missing: Counter[str] = field(default_factory=Counter)

    def add(self, run: dict[str, Any]) -> None:
        self.runs += 1
        self.verdicts[run["verdict"]] += 1
        self.as_expected += run["verdict"] == run.get("expected_verdict")
        for check in run.get("checks", []):
            self.checks.setdefault(check["name"], Counter())[check_state(check)] += 1
        for migration in run.get("migrations", []):
            for name in MIGRATION_METRICS:
                self._value(name, migration.get(name))
        self._value("completion", (run.get("transfer") or {}).get("completed_at"))

    def _value(self, name: str, value: Any) -> None:
        if value is None:
            self.missing[name] += 1
        else:
            self.values.setdefault(name, []).append(float(value))

    def pass_rate(self, check: str) -> tuple[int, int]:
        """(passed, judged): unsupported and not-applicable runs are not judged."""
        states = self.checks.get(check, Counter())
        return states["passed"], states["passed"] + states["failed"]

    def estimate(self, name: str) -> Estimate:
        values = self.values.get(name, [])
        if not values:
            return Estimate(0, self.missing[name], None, None, None)
        low, high = bootstrap_interval(values)
        return Estimate(len(values), self.missing[name], median(values), low, high)


@dataclass(frozen=True, slots=True)
class Summary:
    keys: tuple[str, ...]  # the swept keys, in grid order
    groups: list[Group]
    check_names: list[str]
    errors: list[str]  # one line per failed run: "task: error"

    @property
    def runs(self) -> int:
        return sum(g.runs for g in self.groups)


CSV_FIXED = ("task", "scenario", "stack", "seed")
CSV_RUN = ("verdict", "expected_verdict", "intact", "completed_at", "failed_checks")
CSV_MIGRATION = ("migration", "observed", *MIGRATION_METRICS)


def aggregate(store: RunStore, csv_path: Path | None = None) -> Summary:
    """Read every run of the sweep in `store` once; write the tidy CSV to `csv_path`."""
    keys = tuple(store.manifest().get("grid_keys", []))
    groups: dict[tuple[tuple[Any, ...], str], Group] = {}
    check_names: dict[str, None] = {}

    def group(sweep: dict[str, Any]) -> Group:
        params = tuple(sweep.get("params", {}).get(key) for key in keys)
        stack = str(sweep.get("stack", "scenario"))
        return groups.setdefault((params, stack), Group(params, stack))

    with _csv_writer(csv_path) as writer:
        if writer is not None:
            writer.writerow([*CSV_FIXED, *keys, *CSV_RUN, *CSV_MIGRATION])
        for run in store.iter_runs():
            group(run["sweep"]).add(run)
            check_names.update(dict.fromkeys(c["name"] for c in run.get("checks", [])))
            if writer is not None:
                writer.writerows(_rows(run, keys))
    errors = []
    for record in store.iter_errors():
        group(record["sweep"]).errors += 1
        errors.append(f"{record['sweep']['task']}: {record['error']}")
    ordered = sorted(groups.values(), key=lambda g: (tuple(sortable(v) for v in g.params), g.stack))
    return Summary(keys, ordered, list(check_names), errors)


@contextlib.contextmanager
def _csv_writer(path: Path | None) -> Iterator[Any]:
    """A csv.writer on a temporary file that becomes `path` once complete (None: no CSV)."""
    if path is None:
        yield None
        return
    tmp = path.with_name(path.name + ".part")
    try:
        with tmp.open("w", newline="") as out:
            yield csv.writer(out)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def sortable(value: Any) -> tuple[int, Any]:
    """Numbers before strings, each in their own order (a key may mix them)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def _rows(run: dict[str, Any], keys: tuple[str, ...]) -> list[list[Any]]:
    sweep = run["sweep"]
    transfer = run.get("transfer") or {}
    failed = [c["name"] for c in run.get("checks", []) if check_state(c) == "failed"]
    head = [
        sweep["task"],
        run.get("scenario"),
        sweep.get("stack"),
        run.get("seed"),
        *(sweep.get("params", {}).get(key) for key in keys),
        run.get("verdict"),
        run.get("expected_verdict"),
        transfer.get("intact"),
        _blank(transfer.get("completed_at")),
        " ".join(failed),
    ]
    migrations = run.get("migrations", [])
    if not migrations:
        return [head + [""] * len(CSV_MIGRATION)]
    return [
        [*head, index, m.get("observed"), *(_blank(m.get(name)) for name in MIGRATION_METRICS)]
        for index, m in enumerate(migrations)
    ]


def _blank(value: Any) -> Any:
    return "" if value is None else value
