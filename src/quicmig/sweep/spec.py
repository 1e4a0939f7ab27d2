"""What a sweep is: a scenario, fixed overrides, a grid of swept keys, seeds and stacks.

It comes from the command line (`--grid KEY=V1,V2 --seeds 1-30 --stack stock,quicmig`) or
from a sweep file (a TOML file with a `[sweep]` table; see src/quicmig/sweeps/), the flags
adding to or replacing what the file says. `expand()` turns it into Tasks: the cartesian
product of the grid, then stacks, then seeds.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from quicmig.errors import InputError
from quicmig.model.loader import builtin_names, read_tree
from quicmig.model.scenario import STACKS
from quicmig.sweep.task import Task, make_tasks, task_id, versions

MAX_RUNS = 1_000_000  # runs a sweep may have without --yes
SWEEP_KEYS = ("scenario", "seeds", "stacks", "backend", "set", "grid", "summary")


@dataclass(frozen=True, slots=True)
class SweepSpec:
    target: str  # built-in scenario name or a scenario FILE.toml
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (key, values), in the order given
    fixed: tuple[str, ...] = ()  # `KEY=VALUE` applied to every run
    seeds: tuple[int, ...] = (1,)
    stacks: tuple[str | None, ...] = (None,)  # None: as the scenario's [quic] table says
    backend: str = "sim"
    summary: str = ""

    @property
    def points(self) -> int:
        return math.prod(len(values) for _, values in self.grid)

    @property
    def runs(self) -> int:
        return self.points * len(self.stacks) * len(self.seeds)

    def identity(self) -> str:
        """What makes two sweeps the same study, so their runs may share a folder: the
        scenario's content, the fixed overrides, which keys are swept, the backend and the
        versions. More values, seeds or stacks extend the same study."""
        return task_id(
            {
                "scenario": read_tree(self.target),
                "name": Path(self.target).stem,
                "fixed": list(self.fixed),
                "grid_keys": [key for key, _ in self.grid],
                "backend": self.backend,
                "versions": versions(),
            }
        )

    def expand(self) -> list[Task]:
        """Every run, each grid point validated once (InputError names a bad key or value)."""
        base = read_tree(self.target)
        name = Path(self.target).stem
        keys = [key for key, _ in self.grid]
        tasks: list[Task] = []
        seen: set[str] = set()
        for values in itertools.product(*(values for _, values in self.grid)):
            point = tuple(zip(keys, values, strict=True))
            overrides = self.fixed + tuple(f"{key}={toml_value(value)}" for key, value in point)
            try:
                made = make_tasks(base, name, overrides, point, self.seeds, self.stacks)
            except InputError as exc:
                where = " ".join(f"{key}={toml_value(value)}" for key, value in point)
                raise InputError(f"{where}: {exc}" if where else str(exc)) from None
            for task in made:
                if task.id not in seen:  # a value given twice is one run, not two
                    seen.add(task.id)
                    tasks.append(task)
        return tasks


def toml_value(value: Any) -> str:
    """`value` as it is written after `=` in TOML (what --set parses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise InputError(f"grid value {value!r}: use numbers, strings or true/false")


def parse_value(raw: str) -> Any:
    """A command-line value as --set reads it: a TOML value, else the bare string."""
    try:
        return tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()


def parse_grid(item: str) -> tuple[str, tuple[Any, ...]]:
    """`KEY=V1,V2,...` -> (KEY, values)."""
    key, eq, raw = item.partition("=")
    key = key.strip()
    if not eq or not key:
        raise InputError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. links.wifi.delay_ms=20,50")
    values = tuple(parse_value(part) for part in raw.split(",") if part.strip())
    if not values:
        raise InputError(f"--grid {item!r}: no values for {key}; give {key}=V1,V2,...")
    return key, values


def parse_seeds(text: str) -> tuple[int, ...]:
    """`1-30`, `7`, `1,5,9` or `1-10,20`: seeds in the order given, each once."""
    seeds: dict[int, None] = {}  # ordered, each once
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise InputError(
                f"--seeds {text!r}: {part.strip()!r} is not a seed or a range; "
                "use e.g. 1-30, 7 or 1,5,9"
            ) from None
        if first < 0 or last < first:
            raise InputError(
                f"--seeds {text!r}: {part.strip()!r} is empty or negative; "
                "a range goes from low to high, e.g. 1-30"
            )
        seeds.update(dict.fromkeys(range(first, last + 1)))
    return tuple(seeds)


def parse_stacks(text: str) -> tuple[str | None, ...]:
    stacks = tuple(part.strip() for part in text.split(",") if part.strip())
    for stack in stacks:
        if stack not in STACKS:
            raise InputError(f"--stack {stack!r}: allowed: {', '.join(STACKS)} (comma-separated)")
    if not stacks:
        raise InputError(f"--stack {text!r}: name one or more of {', '.join(STACKS)}")
    return stacks


# --- sweep files ---------------------------------------------------------------------------


def sweep_names() -> list[str]:
    folder = resources.files("quicmig") / "sweeps"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def is_sweep_file(target: str) -> bool:
    """A shipped sweep's name, or a .toml file with a [sweep] table (else a scenario)."""
    if target in sweep_names() and target not in builtin_names():
        return True
    if not target.endswith(".toml"):
        return False
    try:
        return "sweep" in tomllib.loads(Path(target).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False  # read_tree reports it as the scenario file it then must be


def load_sweep_file(target: str) -> SweepSpec:
    """A sweep file: `[sweep]` scenario (a built-in name, or a path relative to the file),
    seeds, stacks, backend, summary; `[sweep.set]` fixed values; `[sweep.grid]` KEY = [values]."""
    if target in sweep_names() and not target.endswith(".toml"):
        text = (resources.files("quicmig") / "sweeps" / f"{target}.toml").read_text()
        folder = None
    else:
        text = Path(target).read_text()
        folder = Path(target).parent
    try:
        table = tomllib.loads(text).get("sweep")
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{target}: malformed TOML: {exc}") from None
    if not isinstance(table, dict):
        raise InputError(f"{target}: expected a [sweep] table")
    extra = sorted(set(table) - set(SWEEP_KEYS))
    if extra:
        raise InputError(
            f"{target}: sweep.{extra[0]}: unknown key; allowed: {', '.join(SWEEP_KEYS)}"
        )
    scenario = table.get("scenario")
    if not isinstance(scenario, str):
        raise InputError(f"{target}: sweep.scenario: name a built-in scenario or a FILE.toml")
    if scenario.endswith(".toml") and folder is not None:
        scenario = str(folder / scenario)
    spec = SweepSpec(target=scenario, summary=str(table.get("summary", "")))
    seeds = table.get("seeds")
    if seeds is not None:
        spec = replace(spec, seeds=parse_seeds(str(seeds)))
    stacks = table.get("stacks")
    if stacks is not None:
        spec = replace(spec, stacks=parse_stacks(",".join(_strings(stacks, "sweep.stacks"))))
    if "backend" in table:
        spec = replace(spec, backend=str(table["backend"]))
    fixed = table.get("set", {})
    grid = table.get("grid", {})
    if not isinstance(fixed, dict) or not isinstance(grid, dict):
        raise InputError(f"{target}: sweep.set and sweep.grid are tables of KEY = value(s)")
    spec = replace(spec, fixed=tuple(f"{k}={toml_value(v)}" for k, v in _flat(fixed)))
    points = []
    for key, values in _flat(grid):
        listed = tuple(values) if isinstance(values, list) else (values,)
        if not listed:
            raise InputError(f"{target}: sweep.grid.{key}: no values; give a list, e.g. [20, 50]")
        points.append((key, listed))
    return replace(spec, grid=tuple(points))


def _strings(value: Any, where: str) -> list[str]:
    listed = [value] if isinstance(value, str) else value
    if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
        raise InputError(f"{where}: expected a string or a list of strings")
    return listed


def _flat(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """`{"links": {"wifi": {"delay_ms": 5}}}` or `{"links.wifi.delay_ms": 5}` ->
    [("links.wifi.delay_ms", 5)]: dotted TOML keys and quoted dotted keys alike."""
    pairs: list[tuple[str, Any]] = []
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            pairs.extend(_flat(value, f"{name}."))
        else:
            pairs.append((name, value))
    return pairs


@dataclass(frozen=True, slots=True)
class Flags:
    """What the command line says about a sweep (None/empty: not given)."""

    grid: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()
    seeds: str | None = None
    stacks: str | None = None
    backend: str | None = None


def build_spec(target: str, flags: Flags) -> SweepSpec:
    """The sweep of `target` (a scenario or a sweep file) with the command line's flags: a
    --grid key replaces the file's values for it, --set adds to the file's fixed values."""
    spec = load_sweep_file(target) if is_sweep_file(target) else SweepSpec(target=target)
    grid = dict(spec.grid)
    for item in flags.grid:
        key, values = parse_grid(item)
        grid[key] = values
    fixed = spec.fixed + flags.fixed
    for item in fixed:
        key = item.partition("=")[0].strip()
        if key in grid:
            raise InputError(f"{key}: both fixed (--set) and swept (--grid); choose one")
    spec = replace(spec, grid=tuple(grid.items()), fixed=fixed)
    if flags.seeds is not None:
        spec = replace(spec, seeds=parse_seeds(flags.seeds))
    if flags.stacks is not None:
        spec = replace(spec, stacks=parse_stacks(flags.stacks))
    if flags.backend is not None:
        spec = replace(spec, backend=flags.backend)
    return spec
