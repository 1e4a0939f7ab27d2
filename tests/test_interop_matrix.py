"""The interop matrix's own logic without foreign programs: captures cut and read without
tshark, what tshark could not decrypt, a proxy that keeps a retired mapping listening, the
test cases as scenarios, which cells cannot run and why, bad input in one line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import run_bounded
from datagrams import quic_datagram

from quicmig.capture.analysis import (
    DIRECTION_CHECK,
    NEW_PATH_CHECK,
    ConnectionView,
    decryption_checks,
    replay,
)
from quicmig.capture.tshark import QuicDatagram
from quicmig.cli import main
from quicmig.core.datagram import Address, Datagram
from quicmig.core.pcap import ip_udp_packet
from quicmig.core.results import Check
from quicmig.errors import InputError
from quicmig.interop.backend import CellSetup, StackBackend
from quicmig.interop.evidence import after_retry, client_side
from quicmig.interop.matrix import (
    HEADLINES,
    TESTS,
    Job,
    headlines_first,
    load_case,
    not_run,
    select,
)
from quicmig.interop.network import ProxyNetwork
from quicmig.interop.pcapfile import (
    Record,
    gso_segments,
    read_records,
    split_gso,
    touching,
    udp_header,
    write_records,
)
from quicmig.interop.stacks import load_stacks
from quicmig.live.certs import CertPaths
from quicmig.live.udp import open_socket
from quicmig.model.events import AddressChange, NatRebind
from quicmig.model.verdicts import CheckState
from quicmig.proxy.core import Proxy, ProxyConfig
from quicmig.runner import plan

SERVER: Address = ("127.0.0.1", 4433)
CLIENT: Address = ("127.0.0.1", 50000)
MOVED: Address = ("127.0.0.1", 50001)
PREFERRED: Address = ("127.0.0.1", 4434)
THIRD: Address = ("127.0.0.1", 50002)
STACKS = load_stacks()


def record(src: Address, dst: Address, payload: bytes, at: float = 1.0) -> Record:
    return Record(at, ip_udp_packet(Datagram(src, dst, payload)))


def short_packet(dcid: bytes, size: int, fill: int) -> bytes:
    return bytes([0x41]) + dcid + bytes([fill]) * (size - 1 - len(dcid))


# --- captures without tshark ---------------------------------------------------------------


def test_records_round_trip_and_are_cut_by_address(tmp_path: Path) -> None:
    records = [
        record(CLIENT, SERVER, b"a" * 100, 1.5),
        record(SERVER, CLIENT, b"b" * 1200, 1.75),
        record(MOVED, ("127.0.0.1", 9), b"c" * 10, 2.0),
    ]
    path = tmp_path / "x.pcap"
    assert write_records(path, records) == 3
    back = list(read_records(path))
    assert [r.ip for r in back] == [r.ip for r in records]
    assert [r.at for r in back] == pytest.approx([1.5, 1.75, 2.0])
    header = udp_header(back[1].ip)
    assert header is not None and (header.src, header.dst, header.payload) == (SERVER, CLIENT, 1200)
    assert len(list(touching(back, {SERVER}))) == 2


def test_a_gso_batch_is_cut_into_its_datagrams_and_a_single_one_is_left() -> None:
    dcid = bytes.fromhex("1122334455667788")
    batch = b"".join(short_packet(dcid, 1444, n) for n in range(3)) + short_packet(dcid, 500, 9)
    segments = gso_segments(batch)
    assert segments is not None and [len(s) for s in segments] == [1444, 1444, 1444, 500]
    assert gso_segments(short_packet(dcid, 1444, 1)) is None  # one datagram
    # A zero-length connection ID leaves nothing to match: not cut.
    assert gso_segments(b"\x41" + bytes(range(256)) * 12) is None
    out = list(split_gso([record(SERVER, CLIENT, batch)]))
    sizes = [h.payload for r in out if (h := udp_header(r.ip)) is not None]
    assert sizes == [1444, 1444, 1444, 500]


def long_header(kind: int, dcid: bytes, scid: bytes) -> bytes:
    """A QUIC v1 long header of type `kind` (0 Initial, 3 Retry) and some bytes after it."""
    first = 0xC0 | kind << 4
    return (
        bytes([first])
        + b"\x00\x00\x00\x01"
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + b"x" * 40
    )


def test_the_capture_is_read_from_the_attempt_after_the_servers_retry() -> None:
    client_cid, first_dcid, retry_cid = b"c" * 8, b"d" * 8, b"r" * 18
    records = [
        record(CLIENT, SERVER, long_header(0, first_dcid, client_cid)),
        record(SERVER, CLIENT, long_header(3, client_cid, retry_cid)),
        # still in flight when the Retry came: the first attempt, left out with it
        record(CLIENT, SERVER, long_header(0, first_dcid, client_cid)),
        record(SERVER, CLIENT, long_header(0, client_cid, b"s" * 8)),
        record(CLIENT, SERVER, long_header(0, retry_cid, client_cid)),  # the new attempt
        record(SERVER, CLIENT, short_packet(b"abcdefgh", 60, 0)),
        record(SERVER, CLIENT, long_header(3, client_cid, retry_cid)),  # no Retry: after 1-RTT
    ]
    assert after_retry(records, SERVER) == 4
    assert after_retry([r for i, r in enumerate(records) if i != 1], SERVER) == 0


def test_the_client_side_gives_deliveries_and_the_addresses_it_sent_from() -> None:
    proxy: Address = ("127.0.0.1", 7000)
    records = [
        record(CLIENT, proxy, b"x" * 50, 10.0),
        record(proxy, CLIENT, b"y" * 1000, 10.1),
        record(MOVED, proxy, b"x" * 50, 10.5),
        record(proxy, MOVED, b"y" * 500, 10.6),
    ]
    side = client_side(records, lambda addr: addr != proxy, epoch_zero=10.0)
    assert side.delivery_times == pytest.approx([0.1, 0.6])
    assert side.delivery_totals == [1000, 1500]
    assert [addr for _, addr in side.sources] == [CLIENT, MOVED]
    assert side.sources[1][0] == pytest.approx(0.5)


# --- what tshark could not decrypt ---------------------------------------------------------


def dgram(number: int, src: Address, dst: Address, decrypted: bool) -> QuicDatagram:
    return quic_datagram(number, src, dst, (0x02,) if decrypted else (), at=number / 100)


def view_of(members: list[tuple[QuicDatagram, bool]]) -> ConnectionView:
    view = ConnectionView(1, SERVER, 0, 0.0, 0.0)
    replay(view, members, 0.0)
    return view


def test_a_new_paths_undecrypted_direction_and_a_whole_lost_direction_are_unsupported() -> None:
    first = [
        (dgram(1, CLIENT, SERVER, True), True),
        (dgram(2, SERVER, CLIENT, True), False),
    ]
    fine = view_of(first)
    assert decryption_checks([fine], "4.0.17") == []
    # The server's datagrams to the client's new address did not decrypt (Chromium's
    # zero-length connection IDs): unsupported, counted by path and direction.
    moved = view_of(
        [
            *first,
            (dgram(3, MOVED, SERVER, True), True),
            (dgram(4, SERVER, MOVED, False), False),
            (dgram(5, SERVER, MOVED, False), False),
        ]
    )
    (check,) = decryption_checks([moved], "4.0.17")
    assert check.name == NEW_PATH_CHECK and check.state is CheckState.UNSUPPORTED
    assert "2 of 2 datagrams the server sent to 127.0.0.1:50001" in check.detail
    # None of the server's datagrams decrypted, the client's did (aioquic to Chromium).
    lost = view_of(
        [(dgram(1, CLIENT, SERVER, True), True), (dgram(2, SERVER, CLIENT, False), False)]
    )
    (check,) = decryption_checks([lost], "4.0.17")
    assert check.name == DIRECTION_CHECK and "1 of 1 datagrams the server sent" in check.detail


def test_a_preferred_address_is_a_path_of_its_own() -> None:
    view = view_of(
        [
            (dgram(1, CLIENT, SERVER, True), True),
            (dgram(2, CLIENT, PREFERRED, True), True),
            (dgram(3, PREFERRED, CLIENT, False), False),
        ]
    )
    assert [(p.peer, p.local) for p in view.paths.values()] == [(CLIENT, None), (CLIENT, PREFERRED)]
    (check,) = decryption_checks([view], "4.0.17")
    assert "sent to 127.0.0.1:50000 at 127.0.0.1:4434" in check.detail
    use = view.tracker.server_addresses[PREFERRED]
    assert use.first_packet_at == pytest.approx(0.02) and use.moved_at is not None


# --- the proxy keeps a retired mapping -----------------------------------------------------


def test_a_retired_mapping_drops_and_records_what_the_server_still_sends_there(
    tmp_path: Path,
) -> None:
    pcap = tmp_path / "p.pcap"

    async def scenario() -> tuple[int, int, list[Address]]:
        got: list[tuple[bytes, Address]] = []
        server = await open_socket(("127.0.0.1", 0), lambda d, a: got.append((d, a)), "server")
        client = await open_socket(("127.0.0.1", 0), lambda d, a: None, "client")
        config = ProxyConfig(listen=("127.0.0.1", 0), upstream=server.local, pcap=pcap)
        try:
            async with Proxy(config, log=lambda line: None) as proxy:
                client.sendto(b"hello", proxy.local)
                while not got:
                    await asyncio.sleep(0.01)
                old = got[0][1]
                await proxy.rebind(new_address=False)
                for _ in range(3):
                    server.sendto(b"to the old mapping", old)
                while proxy.stats.late < 3:
                    await asyncio.sleep(0.01)
                client.sendto(b"again", proxy.local)
                while len(got) < 2:
                    await asyncio.sleep(0.01)
                return proxy.stats.late, proxy.stats.to_client, [old, got[1][1]]
        finally:
            for sock in (server, client):
                sock.close()

    late, to_client, (old, new) = run_bounded(scenario(), 10.0)
    assert late == 3 and to_client == 0 and old != new  # dropped, none reached the client
    captured = [h for r in read_records(pcap) if (h := udp_header(r.ip)) is not None]
    assert sum(1 for h in captured if h.dst == old and h.payload == 18) == 3


# --- cases, cells, bad input ---------------------------------------------------------------


def test_every_test_is_a_valid_scenario_with_the_runners_parameters() -> None:
    assert list(HEADLINES) == list(TESTS)
    for test in TESTS:
        scenario = load_case(test)
        assert scenario.name == test and scenario.workload.__class__.__name__ == "Download"
    rebind = load_case("rebind-port")
    link = rebind.topology.link("client").profile
    assert (link.delay, link.rate, link.queue) == (0.015, 10e6, 25)
    (event,) = rebind.timeline
    assert isinstance(event, NatRebind) and (event.at, event.every) == (1.0, 5.0)
    assert rebind.workload.size == 10_000_000  # type: ignore[union-attr]
    assert any(isinstance(e, AddressChange) for e in load_case("active-migration").timeline)
    assert load_case("connectionmigration").server.preferred_address is not None
    assert load_case("disable-migration").server.disable_active_migration


def backend_for(test: str, server: str, client: str, tmp_path: Path) -> StackBackend:
    scenario = load_case(test)
    network = ProxyNetwork(scenario, 1, tmp_path)
    setup = CellSetup(tmp_path, CertPaths.in_dir(tmp_path))
    return StackBackend(STACKS[server], STACKS[client], network, setup)


def test_what_a_stack_cannot_do_makes_its_cell_unsupported_with_the_reason(
    tmp_path: Path,
) -> None:
    def reasons(test: str, server: str, client: str) -> list[str]:
        backend = backend_for(test, server, client, tmp_path)
        scenario = backend.prepare(load_case(test))
        _, skipped = plan(scenario, backend.driver)
        found = [c.detail for c in [*backend.unsupported_settings(scenario), *skipped]]
        asyncio.run(backend.network.aclose())
        return found

    assert reasons("active-migration", "ngtcp2", "qh3") == []
    (why,) = reasons("active-migration", "ngtcp2", "chromium")
    assert "the chromium client cannot migrate by itself" in why
    (why,) = reasons("active-migration", "caddy", "ngtcp2")
    assert "caddy server sends disable_active_migration on every connection" in why
    assert reasons("disable-migration", "caddy", "ngtcp2") == []  # it sends it unasked
    (why,) = reasons("disable-migration", "ngtcp2", "ngtcp2")
    assert why == "the ngtcp2 server cannot send disable_active_migration"
    (why,) = reasons("connectionmigration", "caddy", "qh3")
    assert why.startswith("the caddy server cannot offer a preferred address")
    # Through the proxy the preferred address is one the server can bind: loopback.
    backend = backend_for("connectionmigration", "ngtcp2", "qh3", tmp_path)
    preferred = backend.prepare(load_case("connectionmigration")).server.preferred_address
    assert preferred is not None and preferred[0] == "127.0.0.1" and preferred[1] > 0
    asyncio.run(backend.network.aclose())


def test_pairs_that_speak_different_protocols_and_missing_programs(tmp_path: Path) -> None:
    scenario = load_case("transfer")
    cell = not_run(Job("transfer", STACKS["ngtcp2"], STACKS["quicmig"], 1, scenario))
    assert cell is not None and cell.letter == "-"
    gone = tmp_path / "gone.toml"
    gone.write_text(
        (STACKS["ngtcp2"].source.read_text())
        .replace('name = "ngtcp2"', 'name = "gone"')
        .replace('program = "gtlsserver"', 'program = "no-such-gtlsserver"')
    )
    stacks = load_stacks(tmp_path)
    cell = not_run(Job("transfer", stacks["gone"], stacks["qh3"], 1, scenario))
    assert cell is not None and cell.letter == "U"
    assert cell.reasons == (
        "gone server: no-such-gtlsserver is not installed: apt-get install ngtcp2-server",
    )


def test_a_cells_reasons_put_the_tests_own_checks_first() -> None:
    reasons = [
        "first-packet-challenge: a",
        "transfer-intact: b",
        "disable-active-migration-honoured: c",
    ]
    assert headlines_first("disable-migration", reasons)[0].startswith("disable-active")
    assert headlines_first("rebind-port", reasons)[0].startswith("first-packet")


def test_unknown_names_are_one_line_listing_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"unknown stack 'nope' in --servers; known servers: "):
        select(STACKS, ["nope"], None, None)
    with pytest.raises(InputError, match=r"stack chromium has no server \(roles: client\)"):
        select(STACKS, ["chromium"], None, None)
    with pytest.raises(InputError, match=r"unknown test 'x'; known: transfer, rebind-port"):
        load_case("x")
    with pytest.raises(InputError, match=r"--repeat 0"):
        select(STACKS, None, None, None, repeat=0)


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["--tests", "rebind"], "unknown test 'rebind' in --tests; known: transfer, rebind-port"),
        (["--clients", "caddy"], "stack caddy has no client (roles: server)"),
        (["--servers", ","], "--servers ',': give one name or more"),
        (["--jobs", "0"], "--jobs 0: give 1 or more"),
        (["--stacks-dir", "/nonexistent"], "--stacks-dir /nonexistent: not a directory"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(
    argv: list[str], wanted: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["interop", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and wanted in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_stack_file_with_a_mistyped_field_names_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = STACKS["qh3"].source.read_text().replace("protocol = ", "protocl = ")
    (tmp_path / "qh3.toml").write_text(text)
    assert main(["interop", "--stacks-dir", str(tmp_path), "--list"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'qh3.toml'}: missing field client.protocol" in err


def test_list_names_stacks_and_tests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["interop", "--list"]) == 0
    out = capsys.readouterr().out
    for name in (*STACKS, *TESTS):
        assert name in out


ACK, CLOSE, CHALLENGE, RESPONSE = (0x02,), (0x1C,), (0x1A,), (0x1B,)  # QUIC frame types


def _judged_after_one_move(later: list[tuple[QuicDatagram, bool]]) -> dict[str, Check]:
    """The judge's checks on a capture of a handshake, a first move validated in 40 ms, then
    the datagrams `later` (from 2.0 s, numbered from 6)."""
    from quicmig.core.judge import judge
    from quicmig.core.observation import ClientObservation, Expectations, Observation
    from quicmig.core.results import NO_TRANSFER
    from quicmig.model.scenario import Expectation

    members = [
        (quic_datagram(1, CLIENT, SERVER, (0x06,), at=0.00), True),
        (quic_datagram(2, SERVER, CLIENT, ACK, at=0.01), False),
        (quic_datagram(3, MOVED, SERVER, ACK, at=1.00), True),
        (quic_datagram(4, SERVER, MOVED, CHALLENGE, at=1.00, data="01"), False),
        (quic_datagram(5, MOVED, SERVER, RESPONSE, at=1.04, data="01"), True),
        *later,
    ]
    view = view_of(members)
    wanted = Expectations("t", "stock", Expectation(min_migrations=1), None)
    observation = Observation(
        "capture", 0, 3.0, [ClientObservation(NO_TRANSFER, (), (), view.tracker)], ()
    )
    return {c.name: c for c in judge(wanted, observation).checks}


@pytest.mark.parametrize(("closed_after", "state"), [(0.006, "passed"), (0.5, "failed")])
def test_a_client_that_closes_before_it_could_answer_does_not_fail_the_server(
    closed_after: float, state: str
) -> None:
    """A rebinding a few milliseconds before the download's end: the server's challenge on
    the new path meets a client that has already closed the connection (seen in the matrix:
    quicmig's server, qh3's client). Closing later, it could have answered: a failure."""
    checks = _judged_after_one_move(
        [
            (quic_datagram(6, THIRD, SERVER, ACK, at=2.00), True),  # the second rebinding
            (quic_datagram(7, SERVER, THIRD, CHALLENGE, at=2.00, data="02"), False),
            (quic_datagram(8, THIRD, SERVER, CLOSE, at=2.00 + closed_after), True),
        ]
    )
    assert checks["paths-validated"].state.value == state
    assert checks["challenges-answered"].state.value == state
    if state == "passed":
        assert (
            "1 cut short by the client closing the connection" in checks["paths-validated"].detail
        )


@pytest.mark.parametrize(("closed_after", "state"), [(0.0, "passed"), (0.5, "failed")])
def test_a_client_that_closes_from_a_new_path_before_any_challenge_does_not_fail_the_server(
    closed_after: float, state: str
) -> None:
    """A rebinding just after the download's end: the client's first packet from the new
    port carries its CONNECTION_CLOSE (seen in the lab: Chromium), so the server, draining,
    never challenges it. A close 0.5 s after the new path appeared, with no challenge
    meanwhile, leaves the server's failure to validate standing."""
    first = CLOSE if closed_after == 0.0 else ACK
    later = [(quic_datagram(6, THIRD, SERVER, first, at=2.00), True)]  # the second rebinding
    if closed_after:
        later.append((quic_datagram(7, THIRD, SERVER, CLOSE, at=2.00 + closed_after), True))
    checks = _judged_after_one_move(later)
    assert checks["paths-validated"].state.value == state
    # The strict rule has no first packet to judge on a path the server, draining, never
    # sent to; left open by the client, the server's silence there is not judged either way.
    assert checks["first-packet-challenge"].state.value == (
        "passed" if state == "passed" else "unsupported"
    )
