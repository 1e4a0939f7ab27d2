#!/usr/bin/env python3
"""connect to the live server and migrate the connection for real.

The same as `quicmig client` (see `python quic_client.py --help`). Works from a clone after
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
    sys.exit(main(["client", *sys.argv[1:]]))
