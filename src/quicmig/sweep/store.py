"""A sweep's folder: a manifest (sweep.json), one JSON per finished run in runs/, one per
failed run in errors/. Only the sweep's main process writes, each file atomically, so Ctrl-C
or a killed worker leaves every finished run whole and no partial file.

Runs are named by their task's content hash: running the sweep again runs only the tasks
without a file. A run that failed is retried (its error file is replaced by the run).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from quicmig.core.results import check_output_dir, write_atomically
from quicmig.errors import InputError
from quicmig.sweep.spec import SweepSpec
from quicmig.sweep.task import describe_versions, versions

MANIFEST = "sweep.json"
SCHEMA = "quicmig.sweep/1"


class RunStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runs = folder / "runs"
        self.errors = folder / "errors"
        self._manifest: dict[str, Any] | None = None  # written with the first run (claim)

    # --- the manifest -----------------------------------------------------------------------

    def claim(self, spec: SweepSpec) -> None:
        """Make the folder this sweep's, or refuse one that holds another sweep's runs
        (InputError): runs of different studies are never mixed. A new folder is made with
        the first stored run, so a sweep whose engine fails to start leaves nothing."""
        check_output_dir(self.folder, "--out")
        manifest = self.manifest_or_none()
        identity = spec.identity()
        if manifest is None:
            if self.folder.exists() and any(self.folder.iterdir()):
                raise InputError(
                    f"--out {self.folder}: not empty and not a sweep folder (no {MANIFEST}); "
                    "give a new or empty folder"
                )
        elif manifest.get("identity") != identity:
            raise InputError(f"--out {self.folder}: {self._difference(manifest, spec)}")
        if manifest is not None:
            self._remove_partials()
        else:
            self._manifest = {
                "schema": SCHEMA,
                "identity": identity,
                "scenario": spec.target,
                "fixed": list(spec.fixed),
                "grid_keys": [key for key, _ in spec.grid],
                "backend": spec.backend,
                "versions": versions(),
            }

    def _create(self) -> None:
        self.runs.mkdir(parents=True, exist_ok=True)
        self.errors.mkdir(exist_ok=True)
        if self._manifest is not None:
            write_atomically(self.folder / MANIFEST, json.dumps(self._manifest, indent=2) + "\n")
            self._manifest = None

    def _difference(self, manifest: dict[str, Any], spec: SweepSpec) -> str:
        """Why the folder's sweep is another one, in a line."""
        start = "holds the runs of another sweep"
        fix = "; give another --out folder"
        grid_keys = [key for key, _ in spec.grid]
        if manifest.get("versions") != versions():
            found = describe_versions(manifest.get("versions", {}))
            return f"{start}, made with {found} (this is {describe_versions(versions())}){fix}"
        for what, theirs, ours in (
            ("scenario", manifest.get("scenario"), spec.target),
            ("swept keys", manifest.get("grid_keys"), grid_keys),
            ("fixed --set values", manifest.get("fixed"), list(spec.fixed)),
            ("backend", manifest.get("backend"), spec.backend),
        ):
            if theirs != ours:
                return f"{start}: {what} {theirs} (this sweep: {ours}){fix}"
        return f"{start}: scenario {spec.target} has changed since{fix}"

    def manifest_or_none(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{path}: unreadable sweep manifest ({exc}); remove the folder"
            ) from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise InputError(f"{path}: not a {SCHEMA} manifest")
        return data

    def manifest(self) -> dict[str, Any]:
        """The manifest of a sweep folder (InputError for any other folder)."""
        manifest = self.manifest_or_none()
        if manifest is None:
            raise InputError(
                f"{self.folder}: not a sweep folder (no {MANIFEST}); give a `quicmig sweep --out`"
            )
        return manifest

    def _remove_partials(self) -> None:
        """A temporary file left by a killed sweep (SIGKILL: no cleanup ran) is ours."""
        for folder in (self.runs, self.errors):
            for stale in folder.glob("*.part") if folder.is_dir() else ():
                stale.unlink(missing_ok=True)

    # --- runs -------------------------------------------------------------------------------

    def done(self) -> set[str]:
        """Task ids with a finished run (file names only: nothing is read)."""
        if not self.runs.is_dir():
            return set()
        return {p.name.removesuffix(".json") for p in self.runs.glob("*.json")}

    def failed(self) -> set[str]:
        if not self.errors.is_dir():
            return set()
        return {p.name.removesuffix(".json") for p in self.errors.glob("*.json")}

    def put(self, record: dict[str, Any]) -> None:
        """Store a run (or, with an "error" key, a failed run), atomically."""
        task = record["sweep"]["task"]
        text = json.dumps(record, indent=1) + "\n"
        if self._manifest is not None or not self.runs.is_dir():
            self._create()
        if "error" in record:
            write_atomically(self.errors / f"{task}.json", text)
        else:
            write_atomically(self.runs / f"{task}.json", text)
            (self.errors / f"{task}.json").unlink(missing_ok=True)

    def iter_runs(self) -> Iterator[dict[str, Any]]:
        """Every finished run, one file at a time, in file-name order."""
        for path in sorted(self.runs.glob("*.json")):
            yield json.loads(path.read_text())

    def iter_errors(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.errors.glob("*.json")):
            yield json.loads(path.read_text())
