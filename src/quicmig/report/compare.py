"""Results of one scenario from different backends, seeds or stacks, side by side.

`load_run(path)` reads one result JSON (as written by `quicmig run ... --json FILE`) and checks
that it is one; `compare_table(runs)` lays the runs out as columns and the measurements as rows:
verdict, transfer, every check, and for each migration (by its index) the kind the server
observed, the network change behind it, detection delay, validation round trip, whether the
first packet on the new path carried PATH_CHALLENGE, new DCID, interruption and lost /
retransmitted. A value missing from a run (no second migration, a check one backend did not
make) is shown as `-`.

Results of other transports (`quicmig lab race`: TCP and MPTCP beside QUIC) line up the
same way: a `transport` row, and rows of what the application saw, for every transport
alike (the judge's `stats.continuity`: connection survived, handshakes, interruption,
resume after the move, longest gap, bytes fetched twice, done at). `load_runs(path)` reads
a race's file (the runs of one race, `quicmig lab race --json FILE`) as well as a single
result; a TCP run has no QUIC migrations, so its migration rows show `-`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from quicmig.core.results import RUNS_SCHEMA, SCHEMA
from quicmig.errors import InputError
from quicmig.report.table import MARKS

REQUIRED = ("scenario", "backend", "seed", "verdict", "checks", "transfer", "migrations")

# JSON types by name: what the table reads from a result must be of these before it is read.
KINDS: dict[str, Callable[[Any], bool]] = {
    "a string": lambda v: isinstance(v, str),
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "a number": lambda v: (
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ),
    "true or false": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "a list": lambda v: isinstance(v, list),
    "an object": lambda v: isinstance(v, dict),
}
STR, INT, NUM, BOOL, NULL = "a string", "an integer", "a number", "true or false", "null"
LIST, OBJECT = "a list", "an object"
# field -> the kinds it may have; a field not present is fine unless REQUIRED (or `*`).
TOP: dict[str, tuple[str, ...]] = {
    "scenario": (STR,),
    "backend": (STR,),
    "transport": (STR,),
    "seed": (INT,),
    "verdict": (STR,),
    "expected_verdict": (STR, NULL),
    "checks": (LIST,),
    "transfer": (OBJECT,),
    "migrations": (LIST,),
    "paths_seen": (LIST,),
    "cid_rotations": (LIST,),
    "stats": (OBJECT,),
    "wall": (OBJECT,),
}
CHECK: dict[str, tuple[str, ...]] = {"*name": (STR,), "*state": (STR,), "detail": (STR,)}
TRANSFER: dict[str, tuple[str, ...]] = {
    "bytes": (INT,),
    "intact": (BOOL,),
    "completed_at": (NUM, NULL),
}
MIGRATION: dict[str, tuple[str, ...]] = {
    "*observed": (STR,),
    "old_peer": (STR,),
    "new_peer": (STR,),
    "network_change": (STR, NULL),
    "network_change_at": (NUM, NULL),
    "detection_delay": (NUM, NULL),
    "first_packet_had_challenge": (BOOL, NULL),
    "validated_at": (NUM, NULL),
    "validation_rtt": (NUM, NULL),
    "cid_changed": (BOOL, NULL),
    "interruption": (NUM, NULL),
    "lost_packets": (INT,),
    "retransmitted_bytes": (INT,),
}
STATS: dict[str, tuple[str, ...]] = {
    "quic_extensions": (LIST, NULL),
    "run_seconds": (NUM, NULL),
    "continuity": (OBJECT,),
}
CONTINUITY: dict[str, tuple[str, ...]] = {
    "survived": (BOOL,),
    "handshakes": (INT,),
    "interruption_s": (NUM, NULL),
    "resume_s": (NUM, NULL),
    "longest_gap_s": (NUM, NULL),
    "refetched_bytes": (INT,),
    "completed_at": (NUM, NULL),
}
RACE_KEY = "race"  # a runs file with this key holds one race (quicmig.race.command)
WALL: dict[str, tuple[str, ...]] = {"seconds": (NUM, NULL)}
MARK = {state.value: mark for state, mark in MARKS.items()}
VERDICT_STYLE = {"passed": "bold green", "failed": "bold red", "unsupported": "bold yellow"}


@dataclass(frozen=True, slots=True)
class Run:
    """One result file, as read."""

    path: Path
    data: dict[str, Any]

    @property
    def scenario(self) -> str:
        return str(self.data["scenario"])

    @property
    def stack(self) -> str:
        return str(self.data.get("stack", "stock"))

    @property
    def transport(self) -> str:
        return str(self.data.get("transport", "quic"))

    def label(self, vary: set[str]) -> str:
        """The column title: the backend, plus whatever else differs between the runs
        (first the transport, where the runs are a race)."""
        parts = [str(self.data["backend"])]
        if "transport" in vary:
            parts.insert(0, self.transport)
        if "seed" in vary:
            parts.append(f"seed {self.data['seed']}")
        if "stack" in vary:
            parts.append(self.stack)
        if "scenario" in vary:
            parts.append(self.scenario)
        if "file" in vary:
            parts.append(self.path.name)
        return "\n".join(parts)


def load_runs(path: Path) -> list[Run]:
    """The results of one file: a single result, or the runs of one race (`quicmig lab race
    --json`); bad input raises InputError with one line naming the file."""
    data = _read(path)
    if isinstance(data, dict) and data.get("schema") == RUNS_SCHEMA and RACE_KEY in data:
        runs = data.get("runs")
        if not isinstance(runs, list) or not runs:
            raise InputError(f"{path}: a race without runs; is it truncated?")
        return [_checked(path, run, f"runs[{index}].") for index, run in enumerate(runs)]
    return [load_run(path)]


def load_run(path: Path) -> Run:
    """Read one quicmig result; bad input raises InputError with one line naming the file."""
    return _checked(path, _read(path))


def _read(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read it ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: not JSON (line {exc.lineno}: {exc.msg}); give files written by "
            "`quicmig run NAME --json FILE`"
        ) from None


def _checked(path: Path, data: Any, where: str = "") -> Run:
    """`data` as a Run, if it is one quicmig result (`where`: its place in the file)."""
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema == RUNS_SCHEMA:
        count = len(data.get("runs", []))
        raise InputError(
            f"{path}: holds {count} runs (`quicmig run all --json`); compare single-run files "
            "(`quicmig run NAME --json FILE`, or the per-scenario files of `run all --out DIR`)"
        )
    if isinstance(schema, str) and schema.startswith("quicmig.result/") and schema != SCHEMA:
        raise InputError(
            f"{path}: a {schema} result, from an earlier quicmig; run it again to get {SCHEMA}"
        )
    if schema != SCHEMA:
        found = f"schema {schema!r}" if schema is not None else "no quicmig schema"
        raise InputError(
            f"{path}: not a quicmig result ({found}, expected {SCHEMA!r}); give files written "
            "by `quicmig run NAME --json FILE`"
        )
    assert isinstance(data, dict)
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise InputError(
            f"{path}: {where}a {SCHEMA} without {', '.join(missing)}; is it truncated?"
        )
    _validate(path, data, where)
    return Run(path, data)


def _validate(path: Path, data: dict[str, Any], where: str = "") -> None:
    """InputError naming the file and the first field of the wrong type (what the table reads)."""
    _fields(path, where.rstrip("."), data, TOP)
    for index, check in enumerate(data["checks"]):
        _fields(path, f"{where}checks[{index}]", check, CHECK)
    _fields(path, f"{where}transfer", data["transfer"], TRANSFER)
    for index, migration in enumerate(data["migrations"]):
        _fields(path, f"{where}migrations[{index}]", migration, MIGRATION)
    for name, spec in (("stats", STATS), ("wall", WALL)):
        if name in data:
            _fields(path, f"{where}{name}", data[name], spec)
    continuity = data.get("stats", {}).get("continuity")
    if continuity is not None:
        _fields(path, f"{where}stats.continuity", continuity, CONTINUITY)


def _fields(path: Path, where: str, value: Any, spec: dict[str, tuple[str, ...]]) -> None:
    if not isinstance(value, dict):
        raise InputError(f"{path}: field `{where}` must be an object, not {_show(value)}")
    for key, kinds in spec.items():
        name = key.lstrip("*")
        field = f"{where}.{name}" if where else name
        if name not in value:
            if key.startswith("*"):
                raise InputError(f"{path}: field `{field}` is missing; is the file truncated?")
            continue
        if not any(KINDS[kind](value[name]) for kind in kinds):
            raise InputError(
                f"{path}: field `{field}` must be {' or '.join(kinds)}, not {_show(value[name])}"
            )


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def varying(runs: list[Run]) -> set[str]:
    """What tells the runs apart beyond the backend (used in the column titles)."""
    vary = {
        name
        for name, values in (
            ("seed", {r.data["seed"] for r in runs}),
            ("stack", {r.stack for r in runs}),
            ("scenario", {r.scenario for r in runs}),
            ("transport", {r.transport for r in runs}),
        )
        if len(values) > 1
    }
    titles = [r.label(vary) for r in runs]
    if len(set(titles)) < len(titles):
        vary.add("file")
    return vary


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 1e3:.1f} ms"


def _s(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f} s"


def _size(count: int) -> str:
    return f"{count / 1e3:.1f} kB" if count >= 1000 else f"{count} B"


def _yes_no(value: Any) -> str:
    return "-" if value is None else ("yes" if value else "[red]no[/red]")


def _verdict(data: dict[str, Any]) -> str:
    verdict = str(data["verdict"])
    style = VERDICT_STYLE.get(verdict, "bold")
    text = f"[{style}]{verdict}[/{style}]"
    expected = data.get("expected_verdict")
    if expected is not None and expected != verdict:
        text += f" (expected {expected})"
    return text


def _transfer(data: dict[str, Any]) -> str:
    transfer = data["transfer"]
    state = "intact" if transfer.get("intact") else "[red]not intact[/red]"
    text = f"{transfer.get('bytes', 0):,} B {state}"
    if transfer.get("completed_at") is not None:
        text += f"\ndone at {_s(transfer['completed_at'])}"
    return text


def _transport(data: dict[str, Any]) -> str:
    transport = str(data.get("transport", "quic"))
    fallback = data.get("stats", {}).get("fallback")
    return f"{transport} [yellow](MPTCP unavailable)[/yellow]" if fallback else transport


def _continuity_rows(figures: list[dict[str, Any] | None]) -> list[list[str]]:
    """What the application saw, per run (no rows when no run has the figures)."""
    if not any(figures):
        return []

    def cells(render: Callable[[dict[str, Any]], str]) -> list[str]:
        return [render(f) if f else "-" for f in figures]

    def survived(f: dict[str, Any]) -> str:
        return "yes" if f.get("survived") else "[red]no[/red]"

    def bytes_(f: dict[str, Any]) -> str:
        return _size(int(f.get("refetched_bytes", 0)))

    return [
        ["connection survived", *cells(survived)],
        ["handshakes", *cells(lambda f: str(f.get("handshakes", "-")))],
        ["interruption", *cells(lambda f: _ms(f.get("interruption_s")))],
        ["resume after move", *cells(lambda f: _ms(f.get("resume_s")))],
        ["longest gap", *cells(lambda f: _ms(f.get("longest_gap_s")))],
        ["fetched twice", *cells(bytes_)],
        ["done at", *cells(lambda f: _s(f.get("completed_at")))],
    ]


def _migration_rows(index: int, migrations: list[dict[str, Any] | None]) -> list[list[str]]:
    """Rows for migration `index` (1-based) of every run; None where a run has none."""

    def cells(render: Any) -> list[str]:
        return [render(m) if m is not None else "-" for m in migrations]

    def change(m: dict[str, Any]) -> str:
        if m.get("network_change_at") is None:
            return "-"
        return f"{m.get('network_change')} @ {_s(m['network_change_at'])}"

    def validation(m: dict[str, Any]) -> str:
        return _ms(m.get("validation_rtt")) if m.get("validated_at") is not None else "[red]never"

    def peers(m: dict[str, Any]) -> str:
        old, new = str(m.get("old_peer", "?")), str(m.get("new_peer", "?"))
        if old.rpartition(":")[0] == new.rpartition(":")[0]:
            return f":{old.rpartition(':')[2]} → :{new.rpartition(':')[2]}"
        return f"{old} →\n{new}"

    def lost(m: dict[str, Any]) -> str:
        return f"{m.get('lost_packets', 0)} / {_size(int(m.get('retransmitted_bytes', 0)))}"

    return [
        [f"migration {index}", *cells(lambda m: f"[bold]{m['observed'].replace('_', ' ')}")],
        ["  client address", *cells(peers)],
        ["  network change", *cells(change)],
        ["  detection delay", *cells(lambda m: _ms(m.get("detection_delay")))],
        ["  challenge first", *cells(lambda m: _yes_no(m.get("first_packet_had_challenge")))],
        ["  validation RTT", *cells(validation)],
        ["  new DCID", *cells(lambda m: "yes" if m.get("cid_changed") else "no")],
        ["  interruption", *cells(lambda m: _ms(m.get("interruption")))],
        ["  lost / retx", *cells(lost)],
    ]


def compare_table(runs: list[Run]) -> Table:
    """One column per run, one row per measurement; the first column names the row."""
    vary = varying(runs)
    scenarios = list(dict.fromkeys(r.scenario for r in runs))
    table = Table(
        title=f"{' vs '.join(scenarios)}: {len(runs)} runs side by side",
        title_justify="left",
        show_lines=False,
    )
    table.add_column("", style="bold", no_wrap=True)
    for run in runs:
        table.add_column(run.label(vary), overflow="fold")
    datas = [r.data for r in runs]

    def row(name: str, values: list[str], *, end_section: bool = False) -> None:
        table.add_row(name, *values, end_section=end_section)

    row("transport", [_transport(d) for d in datas])
    row("verdict", [_verdict(d) for d in datas])
    row("transfer", [_transfer(d) for d in datas], end_section=True)
    rows = _continuity_rows([d.get("stats", {}).get("continuity") for d in datas])
    for position, cells in enumerate(rows):
        row(cells[0], cells[1:], end_section=position == len(rows) - 1)

    names: list[str] = []
    for data in datas:
        for check in data["checks"]:
            if check["name"] not in names:
                names.append(check["name"])
    for position, name in enumerate(names):
        values = []
        for data in datas:
            found = [c for c in data["checks"] if c["name"] == name]
            values.append(MARK.get(found[0]["state"], "?") if found else "-")
        row(name, values, end_section=position == len(names) - 1)

    count = max(len(d["migrations"]) for d in datas)
    if count == 0:
        row("migrations", ["none observed" for _ in datas], end_section=True)
    for index in range(count):
        migrations = [
            d["migrations"][index] if index < len(d["migrations"]) else None for d in datas
        ]
        rows = _migration_rows(index + 1, migrations)
        for position, cells in enumerate(rows):
            row(cells[0], cells[1:], end_section=position == len(rows) - 1)

    row("paths seen", [str(len(d.get("paths_seen", []))) for d in datas])
    row("CID rotations", [str(len(d.get("cid_rotations", []))) for d in datas])
    row(
        "run length",
        [_s(d.get("stats", {}).get("run_seconds")) for d in datas],
    )
    row("wall", [_s(d.get("wall", {}).get("seconds")) for d in datas])
    return table


def scenario_warning(runs: list[Run]) -> str | None:
    """One line when the runs are not all of the same scenario (allowed, but say so)."""
    scenarios = list(dict.fromkeys(r.scenario for r in runs))
    if len(scenarios) < 2:
        return None
    return (
        f"warning: the runs are of different scenarios ({', '.join(scenarios)}); "
        "the rows line up migrations by their order only"
    )
