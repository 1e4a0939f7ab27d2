"""The lab's client program, run inside the client namespace by `quicmig lab run`.

It is the live client (`LiveClient`) with one socket bound to 0.0.0.0 that it never moves:
the network moves it. The kernel picks the source address for every datagram, so when the
route or the address changes, or the NAT maps it anew, the server sees a new address without
the client knowing (same connection ID, no PING: RFC 9000 section 9.3's passive migration).

It talks to `quicmig lab run` in JSON lines: events on stdout, commands on stdin.

- `{"event": "connected", ...}` after the handshake.
- download: `{"event": "mark", "index": k, "received": n}` when k+1 of the `--marks` fractions
  of the bytes have arrived (the lab moves the network then, while the transfer goes on), then
  `{"event": "downloaded", ...}` with the SHA-256.
- messages: `--messages` echoes, `{"event": "mark", "index": k}`, then it waits for `go` on
  stdin (the lab has moved the network) before the next echoes.
- `{"event": "done"}`, then on `record N` it fetches the server's record (MIGRATIONS, over the
  connection) until N migrations are validated or `--timeout` passes, prints
  `{"event": "record", "record": {...}}` and closes the connection.
- `{"event": "error", "message": ...}` and exit status 1 on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from quicmig.errors import QuicmigError
from quicmig.live.client import LiveClient

RECORD_POLL = 0.05  # seconds between MIGRATIONS requests while waiting for validation


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def read_command() -> str:
    line: str = await asyncio.to_thread(sys.stdin.readline)
    return line.strip()


def settled(migrations: list[dict[str, Any]], expected: int) -> bool:
    """`expected` migrations seen, each validated or back on an address validated before."""
    known = {str(migrations[0]["old_peer"])} if migrations else set()
    for migration in migrations:
        if migration["validated_at"] is not None:
            known.add(str(migration["new_peer"]))
        elif str(migration["new_peer"]) not in known:
            return False
    return len(migrations) >= expected


async def wait_record(client: LiveClient, expected: int, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        record = await client.server_record()
        if settled(record["migrations"], expected) or loop.time() >= deadline:
            return record
        await asyncio.sleep(RECORD_POLL)


async def session(args: argparse.Namespace, secrets: TextIO | None) -> None:
    host, _, port = args.server.rpartition(":")
    client = LiveClient(
        (host, int(port)),
        ca=Path(args.ca),
        server_name=args.server_name,
        addresses=("0.0.0.0",),
        secrets_log=secrets,
        timeout=args.timeout,
    )
    marks = [float(x) for x in args.marks.split(",")] if args.marks else []
    async with client:
        assert client.endpoint is not None
        # A receive-only client whose path changed under it stays silent, and the server keeps
        # sending to the old address (the simulator's nat-rebinding-idle): PING when quiet.
        client.endpoint.keepalive = args.keepalive if args.keepalive > 0 else None
        emit("connected", handshake_s=client.handshake_seconds, local=list(client.local))
        if args.download:
            size = args.download
            thresholds = [int(size * fraction) for fraction in marks]
            passed = 0

            def progress(received: int) -> None:
                nonlocal passed
                while passed < len(thresholds) and received >= thresholds[passed]:
                    emit("mark", index=passed, received=received)
                    passed += 1

            limit = args.timeout + size / 200_000  # seconds: at least 1.6 Mbit/s
            download = await client.download(size, seed=1, on_progress=progress, timeout=limit)
            emit(
                "downloaded",
                size=download.size,
                received=download.received,
                stream_id=download.stream_id,
                sha256=download.sha256,
                expected_sha256=download.expected_sha256,
                intact=download.intact,
                seconds=download.seconds,
            )
        else:
            rtts: list[float] = []
            number = 0
            for index in range(len(marks) + 1):
                for _ in range(args.messages):
                    number += 1
                    rtts.append(await client.send_message(f"hello #{number}".encode()))
                if index < len(marks):
                    emit("mark", index=index)
                    if await read_command() != "go":
                        raise QuicmigError("the lab stopped the client")
            emit("messages", count=number, rtts=rtts)
        emit("done")
        command = await read_command()
        expected = int(command.split()[1]) if command.startswith("record ") else 0
        record = await wait_record(client, expected, args.timeout)
        emit("record", record=record)


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("quic").addHandler(logging.NullHandler())
    parser = argparse.ArgumentParser(prog="python -m quicmig.lab.agent")
    parser.add_argument("--server", required=True, help="HOST:PORT")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--download", type=int, default=0)
    parser.add_argument("--messages", type=int, default=2)
    parser.add_argument("--marks", default="", help="fractions (download) or one per move")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--keepalive", type=float, default=0.1, help="seconds; 0: none")
    parser.add_argument("--secrets-log")
    args = parser.parse_args(argv)
    secrets = open(args.secrets_log, "a") if args.secrets_log else None  # noqa: SIM115
    try:
        asyncio.run(session(args, secrets))
    except QuicmigError as exc:
        emit("error", message=str(exc))
        return 1
    finally:
        if secrets is not None:
            secrets.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
