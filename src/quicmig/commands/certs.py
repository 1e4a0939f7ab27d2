"""`quicmig certs`: make the local CA and server certificate the live server and client use."""

from __future__ import annotations

import argparse
from pathlib import Path

from quicmig.errors import InputError, QuicmigError
from quicmig.live.certs import SAN_IPS, SAN_NAMES, CertPaths, check_server_pair, write


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "certs",
        description="Create cert.pem and key.pem (the server's certificate and key) and ca.pem "
        "(the local CA that signed it; clients verify the server against it) in DIR, the "
        "current directory by default. `quicmig server` does this by itself on first start. "
        f"The certificate names {', '.join(SAN_NAMES + SAN_IPS)}.",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("."), help="where to write them (default: .)"
    )
    parser.add_argument("--force", action="store_true", help="replace existing files")
    parser.set_defaults(handler=run)


def describe(paths: CertPaths) -> list[str]:
    return [
        f"   {paths.ca}  the local CA: clients verify the server against it",
        f"   {paths.cert}  the server certificate for {', '.join(SAN_NAMES + SAN_IPS)}",
        f"   {paths.key}  the server's private key (readable by you only)",
    ]


def run(args: argparse.Namespace) -> int:
    paths = CertPaths.in_dir(args.dir)
    existing = [p for p in (paths.cert, paths.key, paths.ca) if p.exists()]
    if existing and not args.force:
        if len(existing) == 3:
            try:
                cert = check_server_pair(paths)
            except QuicmigError as exc:
                raise InputError(f"existing certificates are unusable: {exc}") from None
            print(
                f"✅ Certificates already in {args.dir}/ (valid until "
                f"{cert.not_valid_after_utc:%Y-%m-%d}); use --force to make new ones."
            )
            for line in describe(paths):
                print(line)
            return 0
        names = ", ".join(str(p) for p in existing)
        raise QuicmigError(
            f"{names} already exist(s) but not all three of cert.pem, key.pem and ca.pem: "
            f"replace them with `quicmig certs --force"
            f"{'' if args.dir == Path('.') else f' --dir {args.dir}'}`"
        )
    write(paths)
    print(f"🔐 Created a local CA and a server certificate in {args.dir}/:")
    for line in describe(paths):
        print(line)
    print("   Next: quicmig server (or python quic_server.py)")
    return 0
