"""HTTP/3 on the live server: `/`, `/migrations`, `/bytes/N`, `/fetch/N` (GET and HEAD).

`/bytes/N` is `content(N, BYTES_SEED)`, generated as the connection sends it (see
`ServerApp.pump`), so its size does not decide the server's memory. The pages read the
server through `ServerView`: its clock, addresses, connections and records.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any, Protocol

from aioquic.h3.connection import H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic import events as quic_events
from aioquic.quic.connection import QuicConnection

from quicmig import __version__
from quicmig.core.app import ServerApp, content_digest
from quicmig.core.datagram import Address, format_address
from quicmig.core.endpoint import ServerConnection

MAX_BYTES = 50_000_000  # bytes: the largest /bytes/N
BYTES_SEED = 0  # /bytes/N serves content(N, BYTES_SEED)


class ConnectionView(Protocol):
    @property
    def number(self) -> int: ...

    @property
    def server_conn(self) -> ServerConnection: ...


class ServerView(Protocol):
    """What the pages show of the server."""

    def now(self) -> float: ...

    @property
    def addresses(self) -> list[Address]: ...

    @property
    def connections(self) -> Sequence[ConnectionView]: ...

    def records(self) -> dict[str, Any]: ...

    def totals(self) -> dict[str, int]: ...

    def number_of(self, server_conn: ServerConnection) -> int | None: ...


class H3App(ServerApp):
    """HTTP/3 on one server connection."""

    def __init__(self, server_conn: ServerConnection, server: ServerView) -> None:
        conn = server_conn.conn
        assert isinstance(conn, QuicConnection), "made at the handshake, before any release"
        super().__init__(conn)
        self._server = server
        self._server_conn = server_conn
        self._h3: H3Connection | None = H3Connection(self.conn)

    def release(self) -> None:
        super().release()
        self._h3 = None

    def write(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        assert self._h3 is not None
        self._h3.send_data(stream_id, data, end_stream=end_stream)

    def stream_data(self, stream_id: int, data: bytes, end_stream: bool, now: float) -> None:
        if self._h3 is None:
            return
        event = quic_events.StreamDataReceived(
            data=data, end_stream=end_stream, stream_id=stream_id
        )
        for h3_event in self._h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self._respond(h3_event)

    def _respond(self, event: HeadersReceived) -> None:
        assert self._h3 is not None
        headers = dict(event.headers)
        method = headers.get(b":method", b"").decode()
        path = headers.get(b":path", b"/").decode().split("?", 1)[0]
        size: int | None = None  # /bytes/N: generated as it is sent
        body = b""
        if method not in ("GET", "HEAD"):
            status, kind, body = 405, "text/plain", b"only GET\n"
        elif path == "/":
            status, kind, body = 200, "text/html; charset=utf-8", self._status_page()
        elif path == "/migrations":
            records = self._server.records()
            records["requested_by"] = self._server.number_of(self._server_conn)
            status, kind, body = 200, "application/json", json.dumps(records, indent=2).encode()
        elif path.startswith("/bytes/"):
            status, kind, size, body = _bytes(path.removeprefix("/bytes/"))
        elif path.startswith("/fetch/"):
            status, kind, body = _fetch_page(path.removeprefix("/fetch/"))
        else:
            status, kind = 404, "text/plain"
            body = b"not found: try /, /migrations, /bytes/N, /fetch/N\n"
        self._h3.send_headers(
            event.stream_id,
            [
                (b":status", str(status).encode()),
                (b"server", f"quicmig/{__version__}".encode()),
                (b"content-type", kind.encode()),
                (b"content-length", str(len(body) if size is None else size).encode()),
            ],
        )
        if method == "HEAD":
            self.write(event.stream_id, b"", True)
        elif size is not None:
            self.send_content(event.stream_id, size, BYTES_SEED)
        else:
            self.write(event.stream_id, body, True)

    def _status_page(self) -> bytes:
        server = self._server
        rows = []
        for live in server.connections:
            server_conn = live.server_conn
            tracker = server_conn.tracker
            validated = sum(m.validated_at is not None for m in tracker.migrations)
            peer = format_address(tracker.peer) if tracker.peer else "-"
            rows.append(
                f"<tr><td>{live.number}</td><td>{html.escape(str(server_conn.alpn))}</td>"
                f"<td>{html.escape(peer)}</td><td>{len(tracker.migrations)} "
                f"({validated} validated)</td><td>{len(tracker.cid_rotations)}</td>"
                f"<td>{'closed' if server_conn.closed else 'open'}</td></tr>"
            )
        listening = ", ".join(format_address(a) for a in server.addresses)
        totals = server.totals()
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>quicmig live server</title></head>
<body>
<h1>quicmig live server</h1>
<p>Listening on {html.escape(listening)}, up {server.now():.0f} s. This page came over HTTP/3.
Connection migration is supported: move your client and watch <a href="/migrations">/migrations</a>.
</p>
<p>{totals["connections"]} connections so far ({totals["open"]} open), {totals["migrations"]}
migrations; the table shows the open ones and the newest closed ones
({totals["records_dropped"]} older records dropped).</p>
<table border="1" cellpadding="4">
<tr><th>#</th><th>ALPN</th><th>client address</th><th>migrations</th><th>CID rotations</th>
<th>state</th></tr>
{"".join(rows)}
</table>
<p><a href="/migrations">/migrations</a> (JSON) · <a href="/bytes/1000000">/bytes/1000000</a>
· <a href="/fetch/10000000">/fetch/10000000</a> (your browser downloads 10 MB and checks it)</p>
</body></html>
"""
        return page.encode()


def _size(count: str) -> int | None:
    if not count.isdigit() or int(count) > MAX_BYTES:
        return None
    return int(count)


def _bytes(count: str) -> tuple[int, str, int | None, bytes]:
    size = _size(count)
    if size is None:
        return 400, "text/plain", None, f"/bytes/N needs 0 <= N <= {MAX_BYTES}\n".encode()
    return 200, "application/octet-stream", size, b""


# The page of `/fetch/N`: its script downloads /bytes/N with fetch(), hashes the body with
# WebCrypto, then fetches /migrations, and writes all of it as JSON into <pre id="result">. The
# promise `window.quicmigFetch` resolves to the same object (for the DevTools protocol).
_FETCH_SCRIPT = """
window.quicmigFetch = (async () => {
  const url = "/bytes/" + COUNT;
  const out = {url: url, expected_sha256: EXPECTED, status: null, bytes: null, sha256: null,
               ms: null, protocol: null, migrations: null, error: null};
  try {
    const t0 = performance.now();
    const response = await fetch(url, {cache: "no-store"});
    const body = await response.arrayBuffer();
    out.ms = performance.now() - t0;
    out.status = response.status;
    out.bytes = body.byteLength;
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
    out.sha256 = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    const entry = performance.getEntriesByName(new URL(url, location.href).href).pop();
    out.protocol = entry ? entry.nextHopProtocol : null;
    out.migrations = await (await fetch("/migrations", {cache: "no-store"})).json();
  } catch (error) {
    out.error = String(error);
  }
  document.getElementById("verdict").textContent = out.error ? "error: " + out.error
    : out.sha256 === out.expected_sha256 ? "body intact (SHA-256 matches)" : "BODY DIFFERS";
  document.getElementById("result").textContent = JSON.stringify(out);
  return out;
})();
"""


def _fetch_page(count: str) -> tuple[int, str, bytes]:
    """`/fetch/N`: an HTML page whose script GETs /bytes/N, then /migrations (see above)."""
    size = _size(count)
    if size is None:
        return 400, "text/plain", f"/fetch/N needs 0 <= N <= {MAX_BYTES}\n".encode()
    expected = content_digest(size, BYTES_SEED)
    script = _FETCH_SCRIPT.replace("COUNT", str(size)).replace("EXPECTED", json.dumps(expected))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>quicmig: fetching {size} bytes</title></head>
<body>
<h1>quicmig: this browser downloads /bytes/{size}</h1>
<p id="verdict">fetching…</p>
<pre id="result"></pre>
<script>{script}</script>
</body></html>
"""
    return 200, "text/html; charset=utf-8", page.encode()
