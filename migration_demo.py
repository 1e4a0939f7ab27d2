#!/usr/bin/env python3
"""QUIC connection migration, step by step: `python migration_demo.py` (same as `quicmig demo`).

Works from a fresh clone after `pip install -r requirements.txt`, without installing quicmig:
the package is then imported from src/. Options: --scenario NAME, --no-input, --seed N.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import quicmig  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from quicmig.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
