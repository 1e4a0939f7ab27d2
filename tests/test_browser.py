"""A real browser, Chromium, speaks HTTP/3 to `quicmig server` across a NAT rebinding.

Three programs: `quicmig server`, `quicmig proxy` in front of it, and headless Chromium
(Debian's `chromium` package) forced onto QUIC for the proxy's origin. Chromium opens the
server's `/fetch/N` page, whose script downloads `/bytes/N` with fetch(), hashes the body with
WebCrypto and then fetches `/migrations`. The test drives Chromium over the DevTools protocol on
`--remote-debugging-pipe` (NUL-terminated JSON on file descriptors 3 and 4, so no websocket
library) and watches the download's progress in Chromium's own network events: a third of the
way through the body the proxy is told to rebind (SIGUSR1). The rest of the body then reaches
the browser through the proxy's new source port, and `/migrations`, fetched by the browser on
the same connection, must show the server's view: ALPN h3 and a validated port change from the
proxy's old source port to its new one. The body's SHA-256, computed in the browser, must be
the server's content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import ssl
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol, QuicStreamHandler
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent
from conftest import run_bounded, start_quicmig, stop_process

from quicmig.core.app import content
from quicmig.errors import QuicmigError
from quicmig.interop.chromium_client import (
    STARTUP,
    Browser,
    DevTools,
    browser_flags,
    quic_flags,
    session_processes,
)
from quicmig.interop.transfer import spki_hash
from quicmig.live.certs import CertPaths
from quicmig.live.server import BYTES_SEED, MAX_BYTES, LiveServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = os.access(CHROMIUM, os.X_OK)
SIZE = 10_000_000  # bytes of /bytes/N
# The proxy's one-way delay. With none, a rebinding can fall when nothing is in flight through
# the proxy: the server's next packets go to the closed old mapping, and Chromium, which only
# receives, says nothing for about 15 s. With a delay, packets in the proxy's pipes cross the
# rebinding and carry the new mapping to the server at once.
DELAY_MS = 10
TEST_TIMEOUT = 30.0  # seconds for the exchange, once Chromium has answered on its pipe
PROXY_DURATION = STARTUP + TEST_TIMEOUT  # the proxy outlives the browser's longest start
REBIND_LINE = re.compile(r"rebind 1: client \S+ now reaches \S+ from (\S+) \(was (\S+)\)")


async def _browse(certs: CertPaths, folder: Path, proxy_lines: list[str]) -> dict[str, Any]:
    """Run the three programs; return what the browser and the proxy reported. Everything the
    proxy prints goes to `proxy_lines`, as it comes."""
    server, line = await start_quicmig(
        ["server", "--host", "127.0.0.1", "--port", "0", "--cert", str(certs.cert),
         "--key", str(certs.key)],
        re.compile(r"Starting QUIC server on 127\.0\.0\.1:\d+"),
    )  # fmt: skip
    processes = [server]
    watcher: asyncio.Future[None] | None = None
    try:
        server_port = int(re.findall(r"127\.0\.0\.1:(\d+)", line)[0])
        proxy, line = await start_quicmig(
            ["proxy", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{server_port}",
             "--delay-ms", str(DELAY_MS), "--control", "off", "--duration", str(PROXY_DURATION)],
            re.compile(r"quicmig proxy: 127\.0\.0\.1:\d+ →"),
        )  # fmt: skip
        processes.append(proxy)
        proxy_port = int(re.findall(r"127\.0\.0\.1:(\d+) →", line)[0])
        origin = f"127.0.0.1:{proxy_port}"
        rebind_lines: list[str] = []
        received = [0]  # body bytes Chromium has received (its Network.dataReceived events)
        at_rebind: list[int] = []  # ... when the proxy said it rebound
        asked = [False]  # SIGUSR1 sent
        protocols: list[str] = []  # the protocol Chromium says the body came over
        body_request: list[str] = []
        loaded = asyncio.Event()

        async def watch_proxy() -> None:
            assert proxy.stdout is not None
            while text := (await proxy.stdout.readline()).decode():
                proxy_lines.append(text.rstrip())
                if REBIND_LINE.search(text):
                    rebind_lines.append(text.strip())
                    at_rebind.append(received[0])

        watcher = asyncio.ensure_future(watch_proxy())

        def on_event(method: str, params: dict[str, Any]) -> None:
            if method == "Page.loadEventFired":
                loaded.set()
            elif method == "Network.responseReceived":
                response = params["response"]
                if response["url"].endswith(f"/bytes/{SIZE}"):
                    body_request.append(params["requestId"])
                    protocols.append(response.get("protocol", ""))
            elif method == "Network.dataReceived" and params["requestId"] in body_request:
                received[0] += params["dataLength"]
                if received[0] >= SIZE // 3 and not asked[0] and proxy.returncode is None:
                    asked[0] = True
                    proxy.send_signal(signal.SIGUSR1)

        flags = [
            *browser_flags(folder / "chromium-profile"),
            *quic_flags(origin, spki_hash(certs.cert)),  # no port migration of its own
            "about:blank",
        ]
        browser = Browser(CHROMIUM, flags, folder / "chromium.log")
        async with browser as devtools:
            devtools.on_event = on_event
            # From here on the exchange itself is bounded, not Chromium's start.
            page = await asyncio.wait_for(_load(devtools, origin, loaded), TEST_TIMEOUT)
        return {
            "page": page,
            "browser": browser.product,
            "protocols": protocols,
            "received": received[0],
            "rebind_lines": rebind_lines,
            "received_at_rebind": at_rebind,
        }
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        for process in reversed(processes):
            await stop_process(process)


async def _load(devtools: DevTools, origin: str, loaded: asyncio.Event) -> Any:
    """Open `/fetch/SIZE` in a new tab; return what its script found (window.quicmigFetch)."""
    target = await devtools.send("Target.createTarget", {"url": "about:blank"})
    attached = await devtools.send(
        "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
    )
    session = attached["sessionId"]
    await devtools.send("Network.enable", session=session)
    await devtools.send("Page.enable", session=session)
    navigated = await devtools.send(
        "Page.navigate", {"url": f"https://{origin}/fetch/{SIZE}"}, session
    )
    assert "errorText" not in navigated, f"Chromium could not load the page: {navigated}"
    await loaded.wait()
    evaluated = await devtools.send(
        "Runtime.evaluate",
        {"expression": "window.quicmigFetch", "awaitPromise": True, "returnByValue": True},
        session,
    )
    assert "exceptionDetails" not in evaluated, evaluated
    page = evaluated["result"].get("value")
    assert isinstance(page, dict), f"the page's script did not run: {evaluated}"
    return page


@pytest.mark.skipif(
    not HAVE_CHROMIUM, reason=f"Chromium is not installed ({CHROMIUM}; apt-get install chromium)"
)
def test_chromium_downloads_over_http3_across_a_proxy_rebinding(
    certs: CertPaths, tmp_path: Path
) -> None:
    proxy_lines: list[str] = []
    try:
        out = asyncio.run(_browse(certs, tmp_path, proxy_lines))
    except TimeoutError:
        log_file = tmp_path / "chromium.log"
        log = log_file.read_text(errors="replace").splitlines() if log_file.exists() else []
        pytest.fail(
            f"no answer within {TEST_TIMEOUT:g} s; the proxy said: {' | '.join(proxy_lines)}; "
            f"Chromium's last lines: {' | '.join(log[-5:])}"
        )
    page = out["page"]
    assert page["error"] is None, page["error"]
    proxy_said = "the proxy said: " + " | ".join(proxy_lines)

    # What the browser received: the whole body, byte for byte the server's content.
    assert page["status"] == 200 and page["bytes"] == SIZE and out["received"] == SIZE
    assert page["sha256"] == hashlib.sha256(content(SIZE, BYTES_SEED)).hexdigest()
    assert out["protocols"] == ["h3"] and page["protocol"] == "h3"  # Chromium's own view

    # The proxy rebound while the body was still arriving.
    assert len(out["rebind_lines"]) == 1, proxy_said  # one client, rebound once
    (line,) = out["rebind_lines"]
    new_source, old_source = REBIND_LINE.search(line).groups()  # type: ignore[union-attr]
    (received,) = out["received_at_rebind"]
    assert SIZE // 3 <= received < SIZE, "the rebinding must happen during the download"

    # What the server observed on the browser's connection (it answered /migrations on it).
    records = page["migrations"]
    (ours,) = [c for c in records["connections"] if c["connection"] == records["requested_by"]]
    assert ours["alpn"] == "h3"
    assert len(ours["migrations"]) == 1, (ours["migrations"], proxy_said)
    (migration,) = ours["migrations"]
    assert migration["observed"] == "port_change"
    assert (migration["old_peer"], migration["new_peer"]) == (old_source, new_source), proxy_said
    assert old_source.rpartition(":")[0] == new_source.rpartition(":")[0] == "127.0.0.1"
    assert migration["validated_at"] is not None and migration["challenges"] >= 1
    # PATH_CHALLENGE and PATH_RESPONSE both crossed the proxy's delay
    assert migration["validation_rtt"] >= 0.9 * 2 * DELAY_MS / 1000
    tracker = ours["tracker"]  # the server's MigrationTracker, as its record
    assert tracker["peers_seen"] == [old_source, new_source] and ours["peer"] == new_source
    assert tracker["peer"] == new_source
    # The server challenged the new path, and every PATH_CHALLENGE it sent was answered.
    assert new_source in [c["peer"] for c in tracker["challenges"]]
    assert all(c["answered_at"] is not None for c in tracker["challenges"])


class _H3Get(QuicConnectionProtocol):
    """One HTTP/3 GET at a time over aioquic's public API."""

    def __init__(self, quic: QuicConnection, stream_handler: QuicStreamHandler | None = None):
        super().__init__(quic, stream_handler)
        self.h3 = H3Connection(quic)
        self._answers: dict[int, tuple[list[bytes], asyncio.Future[None]]] = {}
        self._status: dict[int, int] = {}

    async def get(self, path: str) -> tuple[int, bytes]:
        stream_id = self._quic.get_next_available_stream_id()
        chunks: list[bytes] = []
        done = asyncio.get_running_loop().create_future()
        self._answers[stream_id] = (chunks, done)
        self.h3.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
             (b":path", path.encode())],
            end_stream=True,
        )  # fmt: skip
        self.transmit()
        await done
        return self._status[stream_id], b"".join(chunks)

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if not isinstance(h3_event, HeadersReceived | DataReceived):
                continue
            chunks, done = self._answers[h3_event.stream_id]
            if isinstance(h3_event, HeadersReceived):
                self._status[h3_event.stream_id] = int(dict(h3_event.headers)[b":status"])
            else:
                chunks.append(h3_event.data)
            if h3_event.stream_ended and not done.done():
                done.set_result(None)


def test_fetch_page_names_the_body_and_its_sha256(certs: CertPaths) -> None:
    """`/fetch/N` (the page the browser runs) without a browser: what it asks for and expects."""

    async def scenario() -> dict[str, tuple[int, bytes]]:
        async with LiveServer(certs, [("127.0.0.1", 0)], log=lambda line: None) as server:
            host, port = server.addresses[0]
            config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
            config.load_verify_locations(cafile=str(certs.ca))
            config.server_name = "localhost"
            config.verify_mode = ssl.CERT_REQUIRED
            async with connect(host, port, configuration=config, create_protocol=_H3Get) as h3:
                assert isinstance(h3, _H3Get)
                paths = ["/fetch/1234", "/fetch/0", "/fetch/x", f"/fetch/{MAX_BYTES + 1}"]
                return {path: await h3.get(path) for path in paths}

    answers = run_bounded(scenario())
    status, page = answers["/fetch/1234"]
    assert status == 200 and page.startswith(b"<!doctype html>")
    assert b'const url = "/bytes/" + 1234;' in page and b'fetch("/migrations"' in page
    expected = hashlib.sha256(content(1234, BYTES_SEED)).hexdigest().encode()
    assert b'expected_sha256: "' + expected + b'"' in page
    assert hashlib.sha256(b"").hexdigest().encode() in answers["/fetch/0"][1]
    assert answers["/fetch/x"][0] == answers[f"/fetch/{MAX_BYTES + 1}"][0] == 400


def test_a_browser_silent_on_its_pipe_is_named_with_where_it_waits_and_killed(
    tmp_path: Path,
) -> None:
    """A "browser" that never answers on the DevTools pipe: the error says for how long and
    where its processes wait, and none of them outlives the attempt."""
    silent = tmp_path / "silent-browser"
    silent.write_text("#!/bin/sh\nsleep 60 &\nexec sleep 61\n")
    silent.chmod(0o755)
    browser = Browser(str(silent), [], tmp_path / "log", startup=0.5)

    async def start() -> None:
        async with browser:
            raise AssertionError("the silent browser must not come up")

    with pytest.raises(QuicmigError) as raised:
        run_bounded(start())
    message = str(raised.value)
    assert message.startswith("Chromium did not answer on its DevTools pipe within 0.5 s")
    assert re.search(r"its processes: sleep \d+ S in \w+; sleep \d+ S in \w+\)$", message), message
    assert browser.process is not None and browser.process.returncode is not None
    assert session_processes(browser.process.pid) == []  # the background sleep too
