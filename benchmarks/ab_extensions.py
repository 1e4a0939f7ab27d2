"""A/B: stock aioquic 1.7.2 against quicmig's extensions, measured on the simulator.

    python benchmarks/ab_extensions.py [--seeds 5] [--json FILE]

For each scenario (network-switch, nat-rebinding, rebind-port, and blackhole), stack (stock;
quicmig: every switch of src/quicmig/aioquic_ext.py on) and seed 1..N, runs the scenario twice:
as shipped (a download) and with its workload replaced by a constant-bitrate stream (1 Mbit/s
for 12 s, a gap over 0.2 s is a stall). Prints medians over the seeds as a markdown table. Every
number comes from the run's result, i.e. from what the server's tracker observed:

  - validate: server first saw the new address -> PATH_RESPONSE received (ms, mean over the
    run's migrations);
  - first challenge: share of migrations whose first server packet carried PATH_CHALLENGE;
  - interruption: longest gap in delivery to the client around a migration (ms, the
    run's worst);
  - completion: the download's completion time (s);
  - retransmitted: stream bytes the server sent again after the first network change (kB);
  - stalls / stalled / longest: stalls of the stream, their total and the longest (s).

Same seeds, same numbers: the simulator is deterministic.
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from quicmig.model.loader import load_scenario
from quicmig.model.scenario import Stream
from quicmig.runner import RunOptions
from quicmig.sim.runner import run_scenario

SCENARIOS = ("network-switch", "nat-rebinding", "rebind-port", "blackhole")
STACKS = ("stock", "quicmig")
STREAM = Stream(rate=1e6, duration=12.0, stall=0.2)  # 1 Mbit/s for 12 s, a video call


def one_run(name: str, stack: str, seed: int) -> dict[str, Any]:
    scenario = load_scenario(name).with_stack(stack)
    download = run_scenario(scenario, RunOptions(seed=seed))
    stream = run_scenario(replace(scenario, workload=STREAM), RunOptions(seed=seed))
    migrations = download.migrations
    validate = [m.validated_at - m.detected_at for m in migrations if m.validated_at is not None]
    interruptions = [m.interruption for m in migrations if m.interruption is not None]
    return {
        "scenario": name,
        "stack": stack,
        "seed": seed,
        "verdict": download.verdict.value,
        "validate_ms": 1e3 * statistics.fmean(validate) if validate else None,
        "validated": f"{len(validate)}/{len(migrations)}",
        "first_challenge": (
            sum(bool(m.first_packet_had_challenge) for m in migrations) / len(migrations)
            if migrations
            else None
        ),
        "interruption_ms": 1e3 * max(interruptions) if interruptions else None,
        "completion_s": download.transfer.completed_at,
        "retransmitted_kB": sum(m.retransmitted_bytes for m in migrations) / 1e3,
        "stalls": stream.transfer.detail.get("stalls", 0),
        "stalled_s": stream.transfer.detail.get("stalled_seconds", 0.0),
        "longest_stall_s": stream.transfer.detail.get("longest_stall", 0.0),
        "stream_verdict": stream.verdict.value,
    }


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(runs: list[dict[str, Any]], seeds: int) -> str:
    lines = [
        f"Medians over seeds 1..{seeds} (simulator, virtual time; `python "
        f"benchmarks/ab_extensions.py --seeds {seeds}`).",
        "",
        "| scenario | stack | verdict | validate (ms) | first packet has challenge "
        "| interruption (ms) | completion (s) | retransmitted (kB) | CBR stalls | stalled (s) "
        "| longest stall (s) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in SCENARIOS:
        for stack in STACKS:
            rows = [r for r in runs if r["scenario"] == name and r["stack"] == stack]
            passed = sum(r["verdict"] == "passed" for r in rows)
            share = median(rows, "first_challenge")
            lines.append(
                f"| {name} | {stack} | {passed}/{len(rows)} passed"
                + f" | {fmt(median(rows, 'validate_ms'), 1)}"
                + f" | {fmt(None if share is None else 100 * share, 0)} %"
                + f" | {fmt(median(rows, 'interruption_ms'), 1)}"
                + f" | {fmt(median(rows, 'completion_s'), 3)}"
                + f" | {fmt(median(rows, 'retransmitted_kB'), 1)}"
                + f" | {fmt(median(rows, 'stalls'), 1)}"
                + f" | {fmt(median(rows, 'stalled_s'), 3)}"
                + f" | {fmt(median(rows, 'longest_stall_s'), 3)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..N (default 5)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every run as JSON")
    args = parser.parse_args()
    jobs = [
        (name, stack, seed)
        for name in SCENARIOS
        for stack in STACKS
        for seed in range(1, args.seeds + 1)
    ]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(one_run, *zip(*jobs, strict=True)))
    print(table(runs, args.seeds))
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
