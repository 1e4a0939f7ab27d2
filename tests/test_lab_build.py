"""The namespace lab's builder and movers: a scenario's topology with its own addresses, and
every move seen from the server's side of the wire; bad input refused before anything exists.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from labnet import needs_lab, two_hosts, udp

from quicmig.errors import InputError
from quicmig.lab import build, owners, system
from quicmig.lab.build import NamespaceLab
from quicmig.lab.owners import leftovers
from quicmig.lab.plan import IFNAME_MAX, LabPlan
from quicmig.model.events import SwitchMode
from quicmig.model.loader import load_scenario
from quicmig.model.topology import Host, Interface, LinkProfile, Topology

SERVER = ("203.0.113.10", 4433)  # the phone topology's server
PREFIX = "qm0000aa"


def phone() -> Topology:
    return load_scenario("network-switch").topology


def _with_link_profile(topology: Topology, link: str, **changes: Any) -> Topology:
    return topology.with_link_profile(link, replace(topology.link(link).profile, **changes))


@pytest.mark.parametrize(
    ("topology", "named"),
    [
        (
            replace(
                two_hosts(),
                hosts=(
                    Host("client", (Interface("eth0", ("2001:db8::10",)),)),
                    Host("server", (Interface("eth0", ("2001:db8::20",)),)),
                ),
            ),
            "IPv6",
        ),
        (_with_link_profile(phone(), "wifi", delay=30.0), "wifi.delay_ms"),
        (_with_link_profile(phone(), "cellular", loss=1.5), "cellular.loss_pct"),
        (
            replace(
                phone(),
                nats=(replace(phone().nats[0], external=("192.0.2.20",)), *phone().nats[1:]),
            ),
            "192.0.2.20",
        ),
    ],
)
def test_bad_input_is_one_line_and_nothing_runs(
    topology: Topology, named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IPv6, a delay or loss out of range, an address held twice: one line, naming it, and
    not one command run, not even the root check."""
    ran: list[Any] = []
    monkeypatch.setattr(build, "run", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(build, "require", lambda *a, **k: ran.append(a))
    with pytest.raises(InputError) as error:
        NamespaceLab(topology, prefix=PREFIX)
    assert named in str(error.value) and "\n" not in str(error.value)
    assert ran == []


def test_not_root_is_refused_before_the_owner_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(system, "_capabilities", lambda: 0)
    monkeypatch.setattr(owners, "OWNER_DIR", tmp_path / "owners")
    with pytest.raises(InputError) as error, NamespaceLab(phone(), command="lab race"):
        pass
    text = str(error.value)
    assert "\n" not in text and "`sudo $(which quicmig) lab race`" in text
    assert error.value.exit_code == 2
    assert not (tmp_path / "owners").exists()


def test_names_carry_the_prefix_and_fit_the_kernel() -> None:
    plan = LabPlan(phone(), PREFIX, {"client": "cellular"})
    tuns = plan.tun_namespaces()
    assert len(tuns) == 2 * len(plan.links)  # unique across the lab
    names = [*tuns, *tuns.values(), plan.table]
    assert all(name.startswith(PREFIX) and owners.NAME.match(name) for name in names)
    assert all(len(name) <= IFNAME_MAX for name in tuns)
    assert plan.start == {"client": "cellular", "server": "eth0"}
    windows = [plan.nats["home"].window(i) for i in range(42)]
    assert windows[0] == (20000, 20999) and windows[1] == (21000, 21999)
    assert windows[41] == windows[0]  # 41 windows of 1,000 in 20000-60999, then again


def _heard(server: socket.socket, client: socket.socket, tag: bytes) -> tuple[str, int]:
    """Send `tag` from the client; the source address the server sees it come from."""
    client.sendto(tag, SERVER)
    while True:
        data, peer = server.recvfrom(64)
        if data == tag:
            return (str(peer[0]), int(peer[1]))


@pytest.fixture
def lab() -> Iterator[NamespaceLab]:
    with NamespaceLab(phone(), start={"client": "wifi"}) as net:
        net.set_link("wifi", LinkProfile(delay=0.002))
        net.set_link("cellular", LinkProfile(delay=0.002))
        yield net


@needs_lab
def test_nat_rebinding_and_switches_as_the_server_sees_them(lab: NamespaceLab) -> None:
    """The phone's NATs as built: the server sees the home NAT's first address from its first
    port window; a rebinding gives a new port, then a new address; a switch moves the client
    behind the carrier NAT. Each move's `new_public` is what the server then sees."""
    server = udp(lab.server_namespace, SERVER)
    client = udp(lab.client_namespace("client"), ("0.0.0.0", 0))
    with server, client:
        first = _heard(server, client, b"a")
        assert first[0] == "198.51.100.10" == lab.public_address("client")
        assert 20000 <= first[1] <= 20999
        move = lab.nat_rebind("home", new_address=False)
        second = _heard(server, client, b"b")
        assert second[0] == move.old_public == move.new_public == first[0]
        assert 21000 <= second[1] <= 21999  # a new mapping from the next window
        move = lab.nat_rebind("home", new_address=True)
        third = _heard(server, client, b"c")
        assert third[0] == move.new_public == "198.51.100.11" and 22000 <= third[1] <= 22999
        move = lab.switch("client", "cellular", SwitchMode.BREAK_BEFORE_MAKE, gap=0.1)
        assert move.at > 0 and move.new_public == "198.51.100.20"
        assert _heard(server, client, b"d")[0] == "198.51.100.20"
        # Make-before-break back to WiFi: the route moves at once, cellular keeps receiving.
        mover = threading.Thread(
            target=lab.switch, args=("client", "wifi", SwitchMode.MAKE_BEFORE_BREAK, 0.0, 1.0)
        )
        before = _heard(server, client, b"e")
        mover.start()
        time.sleep(0.3)
        now = _heard(server, client, b"f")
        assert now[0] == "198.51.100.11"  # the home NAT's current address again
        server.sendto(b"old path", before)  # to the carrier NAT's mapping: still delivered
        assert client.recvfrom(64)[0] == b"old path"
        mover.join(5)
    stats = lab.stats()
    assert stats["impairment"] == "quicmig-tun"
    assert stats["nats"]["home"]["external"] == "198.51.100.11"
    assert stats["links"]["wifi"]["up"]["delivered"] >= 4


@needs_lab
def test_address_change_and_interface_down_up() -> None:
    with NamespaceLab(two_hosts()) as net:
        server = udp(net.server_namespace, ("203.0.113.10", 5201))
        client = udp(net.client_namespace("client"), ("0.0.0.0", 0))
        with server, client:
            client.sendto(b"a", ("203.0.113.10", 5201))
            assert server.recvfrom(8)[1][0] == "192.0.2.10"
            move = net.address_change("client.eth0", "192.0.2.99")
            assert (move.old_public, move.new_public) == ("192.0.2.10", "192.0.2.99")
            client.sendto(b"b", ("203.0.113.10", 5201))
            data, peer = server.recvfrom(8)
            assert (data, peer[0]) == (b"b", "192.0.2.99")
            server.sendto(b"back", peer)  # the router routes the new address to the client
            assert client.recvfrom(8)[0] == b"back"
            net.interface_down("client.eth0")
            with pytest.raises(OSError):
                client.sendto(b"c", ("203.0.113.10", 5201))  # no route: the link is down
            net.interface_up("client.eth0")
            client.sendto(b"d", ("203.0.113.10", 5201))
            assert server.recvfrom(8)[0] == b"d"
    assert leftovers(net.prefix) == []


@needs_lab
def test_capture_on_a_lab_interface(tmp_path: Path) -> None:
    if not system.detect(f"{owners.new_prefix()}-probe").dumpcap:
        pytest.skip("dumpcap (package tshark) not installed")
    pcap = tmp_path / "server.pcap"
    with NamespaceLab(two_hosts()) as net:
        net.start_capture(net.interface_of("server.eth0"), pcap)
        client = udp(net.client_namespace("client"), ("0.0.0.0", 0))
        with client:
            for _ in range(5):  # a loaded machine may still be starting the element
                client.sendto(b"captured payload", ("203.0.113.10", 5201))
                time.sleep(0.1)
            time.sleep(0.3)
    data = pcap.read_bytes()
    assert b"captured payload" in data
