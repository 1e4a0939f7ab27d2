"""The table the field lacks: each move x each transport, measured in the namespace lab.

    sudo python benchmarks/bench_race.py [--repeats N] [--races a,b] [--json FILE]

Runs `quicmig lab race` (quicmig.race.run) for every race scenario (nat-rebinding,
network-switch, make-before-break, ip-change, and no-move as the baseline) with its
defaults: the phone topology, WiFi 20 ms / 50 Mbit/s, cellular 60 ms / 10 Mbit/s / 1 %
loss, a 4 MB download, the move once 1 MB has arrived, TCP's 10 s read timeout (OkHttp's).
Each repeat uses the next seed (the element's loss draws and the body's bytes), so the
repeats are independent runs. Prints, per race and transport, the median of the repeats of what the
judge measured (Result.stats["continuity"]): survival (how many of the runs), handshakes,
interruption, resume time after the move, bytes fetched twice, completion, and the
server-side retransmissions; with --json, every Result and the medians.

The machine is shared (2 cores): the lab's clock is the real one, so rerun a figure that
looks odd. About 1 minute per race and repeat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from quicmig.race import race_names
from quicmig.race.run import TRANSPORTS, RaceSettings, race_scenario, run_race

ORDER = ("nat-rebinding", "network-switch", "make-before-break", "ip-change", "no-move")
FIGURES = (
    "handshakes",
    "interruption_s",
    "resume_s",
    "longest_gap_s",
    "refetched_bytes",
    "retransmitted_bytes",
    "completed_at",
)


def median(values: list[Any]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return statistics.median(known) if known else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of one race and transport over its repeats."""
    figures = [r["stats"]["continuity"] for r in runs]
    out: dict[str, Any] = {
        "runs": len(runs),
        "survived": sum(bool(f["survived"]) for f in figures),
        "intact": sum(bool(r["transfer"]["intact"]) for r in runs),
        "never_resumed": sum(f["resume_s"] is None and f["moves"] != [] for f in figures),
    }
    for name in FIGURES:
        values = [f.get(name) for f in figures]
        out[name] = median(values)
        out[f"{name}_all"] = values
    return out


def _s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.0f} ms" if value < 1 else f"{value:.1f} s"


def _b(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1e3:.0f} kB" if value >= 1000 else f"{value:.0f} B"


def markdown(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| move | transport | survived | handshakes | interruption | resume | fetched twice "
        "| retransmitted | done at |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for race, by_transport in table.items():
        for transport, row in by_transport.items():
            lines.append(
                f"| {race} | {transport} | {row['survived']} of {row['runs']} "
                f"| {row['handshakes']:g} | {_s(row['interruption_s'])} | {_s(row['resume_s'])} "
                f"| {_b(row['refetched_bytes'])} | {_b(row['retransmitted_bytes'])} "
                f"| {_s(row['completed_at'])} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--races", default=",".join(ORDER))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    races = [r for r in args.races.split(",") if r]
    unknown = [r for r in races if r not in race_names()]
    if unknown:
        parser.error(f"unknown race {', '.join(unknown)}; there are {', '.join(race_names())}")
    records: dict[str, dict[str, list[dict[str, Any]]]] = {}
    started = time.perf_counter()
    for race in races:
        scenario = race_scenario(race, [])
        for repeat in range(args.repeats):
            settings = RaceSettings(seed=repeat + 1)
            for result in run_race(scenario, settings):
                runs = records.setdefault(race, {}).setdefault(result.transport, [])
                runs.append(result.to_dict(series=True))
                c = result.stats["continuity"]
                print(
                    f"{race} seed {repeat + 1} {result.transport}: survived {c['survived']}, "
                    f"resume {_s(c['resume_s'])}, done {_s(c['completed_at'])} "
                    f"({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    table = {
        race: {t: summarise(records[race][t]) for t in TRANSPORTS if t in records[race]}
        for race in races
    }
    print(markdown(table))
    if args.json is not None:
        args.json.write_text(json.dumps({"medians": table, "runs": records}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
