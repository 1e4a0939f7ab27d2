"""One run of a sweep: what it is (a Task, named by a content hash) and how it runs.

`execute(task)` is the only place in quicmig.sweep that runs a scenario; every engine (the
serial loop, the local process pool, Dask workers) calls it through `run_task`, which turns
an exception into a recorded error instead of losing the run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import traceback
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from quicmig import __version__
from quicmig.errors import QuicmigError
from quicmig.model.loader import Tree, apply_overrides, read_tree, scenario_from_tree

ID_LENGTH = 24  # hex digits of the SHA-256 kept in a run's file name (96 bits)


def versions() -> dict[str, str]:
    """The versions a run's outcome depends on: quicmig's and aioquic's."""
    return {"quicmig": __version__, "aioquic": metadata.version("aioquic")}


def describe_versions(found: dict[str, str]) -> str:
    return ", ".join(f"{name} {found.get(name, '?')}" for name in ("quicmig", "aioquic"))


class VersionMismatch(QuicmigError):
    """A worker runs other quicmig or aioquic versions than the sweep was planned with."""


@dataclass(frozen=True, slots=True)
class Task:
    """Everything a worker needs for one run; `id` is its identity and its file name.

    `tree` is the scenario's TOML tree after the overrides (topology expanded), so a worker
    on another machine needs neither the scenario file nor the shipped topologies.
    """

    id: str
    name: str  # the scenario's name when its tree has none (the file's stem)
    tree: Tree
    overrides: tuple[str, ...]  # fixed --set values, then the grid point's, as applied
    params: tuple[tuple[str, Any], ...]  # the grid point: (key, value), in grid order
    seed: int
    stack: str | None  # None: as the scenario's [quic] table says
    backend: str
    versions: tuple[tuple[str, str], ...]
    series: bool = False  # keep the time series in the result (figures); not part of `id`

    @property
    def stack_label(self) -> str:
        return self.stack or "scenario"


def task_id(material: dict[str, Any]) -> str:
    """A hash of the canonical JSON of `material` (sorted keys, no whitespace)."""
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def make_tasks(
    base: Tree,
    name: str,
    overrides: tuple[str, ...],
    params: tuple[tuple[str, Any], ...] = (),
    seeds: tuple[int, ...] = (1,),
    stacks: tuple[str | None, ...] = (None,),
    backend: str = "sim",
) -> list[Task]:
    """The tasks of one grid point: `base` (a read_tree() result, left untouched) with
    `overrides` applied, for every stack and seed (in that order).

    Raises InputError (naming the key and what is allowed) if the overrides do not make a
    valid scenario, so a sweep refuses a misspelt key before anything runs.
    """
    tree = apply_overrides(copy.deepcopy(base), overrides)
    scenario_from_tree(copy.deepcopy(tree), default_name=name)  # validate here, not in a worker
    found = versions()
    tasks = []
    for stack in stacks:
        for seed in seeds:
            material = {
                "scenario": tree,
                "name": name,
                "overrides": list(overrides),
                "seed": seed,
                "stack": stack,
                "backend": backend,
                "versions": found,
            }
            tasks.append(
                Task(
                    id=task_id(material),
                    name=name,
                    tree=tree,
                    overrides=overrides,
                    params=params,
                    seed=seed,
                    stack=stack,
                    backend=backend,
                    versions=tuple(sorted(found.items())),
                )
            )
    return tasks


def tasks_for(
    target: str,
    overrides: tuple[str, ...] = (),
    seeds: tuple[int, ...] = (1,),
    stacks: tuple[str | None, ...] = (None,),
    series: bool = False,
) -> list[Task]:
    """Tasks for one scenario (built-in name or FILE.toml): every stack, every seed; with
    `series`, their results keep the time series (`quicmig run all --out` draws figures)."""
    tasks = make_tasks(read_tree(target), Path(target).stem, overrides, (), seeds, stacks)
    return [replace(t, series=True) for t in tasks] if series else tasks


def execute(task: Task) -> dict[str, Any]:
    """Run `task` and return its Result as `to_dict()` gives it, plus a `sweep` table saying
    which task it was. Raises VersionMismatch on a worker with other versions."""
    from quicmig.runner import RunOptions
    from quicmig.sim.runner import run_scenario

    here = versions()
    if tuple(sorted(here.items())) != task.versions:
        raise VersionMismatch(
            f"worker runs {describe_versions(here)}, the sweep was planned with "
            f"{describe_versions(dict(task.versions))}; install the same versions everywhere"
        )
    scenario = scenario_from_tree(copy.deepcopy(task.tree), default_name=task.name)
    if task.stack is not None:
        scenario = scenario.with_stack(task.stack)
    result = run_scenario(scenario, RunOptions(seed=task.seed))
    return {**result.to_dict(series=task.series), "sweep": sweep_table(task)}


def sweep_table(task: Task) -> dict[str, Any]:
    return {
        "task": task.id,
        "params": dict(task.params),
        "stack": task.stack_label,
        "overrides": list(task.overrides),
        "versions": dict(task.versions),
    }


def run_task(task: Task) -> dict[str, Any]:
    """`execute(task)`, with an exception returned as an error record (`"error"` key) so that
    a failed run is counted and stored, never dropped; what engines call."""
    try:
        return execute(task)
    except Exception as exc:
        return error_record(task, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def error_record(task: Task, error: str, trace: str = "") -> dict[str, Any]:
    return {"error": error, "traceback": trace, "sweep": sweep_table(task)}
