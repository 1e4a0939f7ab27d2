#!/usr/bin/env python3
"""make the local CA and the server certificate (cert.pem, key.pem, ca.pem).

The same as `quicmig certs` (see `python generate_certs.py --help`). Works from a clone after
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
    sys.exit(main(["certs", *sys.argv[1:]]))
