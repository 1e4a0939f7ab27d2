#!/usr/bin/env python3
"""run the live QUIC server on 127.0.0.1:4433.

The same as `quicmig server` (see `python quic_server.py --help`). Works from a clone after
`pip install .` or after `pip install -r requirements.txt` alone (it then uses ./src).
"""

import sys
from pathlib import Path

try:
    import quicmig  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from quicmig.cli import main

if __name__ == "__main__":
    sys.exit(main(["server", *sys.argv[1:]]))
