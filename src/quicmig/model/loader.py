"""Scenarios from TOML: the built-in ones ship as TOML files and custom ones use the same keys.

`--set dotted.key=value` edits the parsed tree before it becomes a Scenario, so built-in
parameters and custom files are overridden the same way. Every unknown key, wrong type or
out-of-range value is an InputError that names the key and what is allowed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from quicmig.core.datagram import parse_address
from quicmig.errors import InputError
from quicmig.model.events import (
    AddressChange,
    Blackhole,
    CidRotate,
    EventKind,
    InterfaceDown,
    InterfaceUp,
    LinkChange,
    NatRebind,
    Switch,
    SwitchMode,
    TimelineEvent,
    event_kind,
)
from quicmig.model.scenario import (
    ATTACK_KINDS,
    Attacker,
    ClientSettings,
    Download,
    Expectation,
    Messages,
    QuicExtensions,
    Scenario,
    ServerSettings,
    Stream,
    Workload,
)
from quicmig.model.settings import LINK_KEYS, apply_link_settings, number
from quicmig.model.topology import (
    PROFILES,
    Host,
    Interface,
    Link,
    LinkProfile,
    Nat,
    Topology,
)
from quicmig.model.verdicts import MigrationKind, Verdict

Tree = dict[str, Any]
TOPOLOGY_SHORTCUTS = ("hosts", "links", "nats", "server")


# --- reading -----------------------------------------------------------------------------


def builtin_names() -> list[str]:
    folder = resources.files("quicmig") / "scenarios"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def builtin_text(name: str) -> str:
    if name not in builtin_names():
        known = ", ".join(builtin_names())
        raise InputError(f"unknown scenario {name!r}; built-in scenarios: {known} (or a FILE.toml)")
    return (resources.files("quicmig") / "scenarios" / f"{name}.toml").read_text()


def read_tree(name_or_path: str) -> Tree:
    """The TOML tree of a built-in scenario name or of a .toml file."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise InputError(f"cannot read scenario file {path}: {exc.strerror}") from None
        source = str(path)
    else:
        text = builtin_text(name_or_path)
        source = name_or_path
    try:
        return _expand_topology(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source}: malformed TOML: {exc}") from None


def topology_names() -> list[str]:
    folder = resources.files("quicmig") / "topologies"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def _expand_topology(tree: Tree) -> Tree:
    """`topology = "phone"` names a shipped topology; replace it with that table (once: a
    tree whose topology is a table already is returned as it is)."""
    name = tree.get("topology")
    if isinstance(name, str):
        if name not in topology_names():
            known = ", ".join(topology_names())
            raise InputError(
                f"topology: unknown {name!r}; shipped topologies: {known} (or a table)"
            )
        text = (resources.files("quicmig") / "topologies" / f"{name}.toml").read_text()
        tree["topology"] = tomllib.loads(text)
    return tree


def apply_overrides(tree: Tree, overrides: Iterable[str]) -> Tree:
    """Apply `key=value` strings (dotted keys, TOML values) to `tree`, in place; a named
    topology must have been expanded first (read_tree does it)."""
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise InputError(f"--set {item!r}: expected key=value, e.g. links.wifi.delay_ms=30")
        parts = key.strip().split(".")
        # `server=NAME` names the server host; `server.KEY` is the [server] table.
        if parts[0] in TOPOLOGY_SHORTCUTS and not (parts[0] == "server" and len(parts) > 1):
            parts = ["topology", *parts]
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        node: Any = tree
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: depth + 1]), item)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, key, item)] = value
        else:
            node[last] = value
    return tree


def _index(node: list[Any], part: str, key: str, item: str) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    where = key.rpartition(".")[0] or key
    count = len(node)
    if count == 0:
        raise InputError(f"--set {item!r}: {where} is empty: there is no entry {part} to set")
    held = f"{where} has {count} entr{'y' if count == 1 else 'ies'}"
    allowed = "index 0" if count == 1 else f"an index from 0 to {count - 1}"
    raise InputError(f"--set {item!r}: {held}; use {allowed} (not {part})")


def _child(node: Any, part: str, key: str, item: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, key, item)]
    if not isinstance(node, dict):
        raise InputError(f"--set {item!r}: {key} is a value, not a table")
    return node.setdefault(part, {})


def load_scenario(name_or_path: str, overrides: Iterable[str] = ()) -> Scenario:
    tree = apply_overrides(read_tree(name_or_path), overrides)
    return scenario_from_tree(tree, default_name=Path(name_or_path).stem)


# --- parsing -----------------------------------------------------------------------------

E = TypeVar("E", bound=Enum)


def _member(enum: type[E], value: Any, where: str) -> E:
    for member in enum:
        if member.value == value:
            return member
    allowed = ", ".join(str(m.value) for m in enum)
    raise InputError(f"{where}: {value!r}; allowed: {allowed}")


class _Table:
    """Typed access to one TOML table; remembers which keys were read to catch typos."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a table")
        self.data: Tree = data
        self.where = where
        self.used: set[str] = set()

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def _name(self, key: str) -> str:
        """The dotted name of `key`, as users write it in --set."""
        return f"{self.where}.{key}" if self.where else key

    def string(self, key: str, default: str | None = None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise InputError(f"{self._name(key)}: expected a string, got {value!r}")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self._get(key, default)
        if value is None:
            raise InputError(f"{self._name(key)}: required (a number)")
        return number(value, self._name(key))

    def optional(self, key: str) -> float | None:
        value = self._get(key, None)
        return None if value is None else number(value, self._name(key))

    def integer(self, key: str, default: int | None = None) -> int:
        value = self._get(key, default)
        if isinstance(value, float) and value.is_integer():  # 2e6 is a TOML float
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{self._name(key)}: expected a whole number, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise InputError(f"{self._name(key)}: expected true or false, got {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{self._name(key)}: expected a string or a list of strings")
        return tuple(value)

    def choice(self, key: str, enum: type[E], default: E | None = None) -> E:
        """A string naming a member of `enum` by its value."""
        value = self._get(key, None if default is None else default.value)
        if value is None:
            raise InputError(f"{self._name(key)}: required")
        return _member(enum, value, self._name(key))

    def table(self, key: str) -> _Table:
        return _Table(self._get(key, {}), self._name(key))

    def finish(self, allowed: Iterable[str] = ()) -> None:
        extra = set(self.data) - self.used - set(allowed)
        if extra:
            known = ", ".join(sorted(self.used | set(allowed)))
            raise InputError(
                f"{self.where or 'scenario'}.{sorted(extra)[0]}: unknown key; allowed: {known}"
            )


def scenario_from_tree(tree: Tree, default_name: str = "custom") -> Scenario:
    """The validated Scenario of a TOML tree (a named topology already expanded): the one
    place a scenario is converted and checked."""
    root = _Table(_expand_topology(tree), "")
    name = root.string("name", default_name)
    topology = _topology(root.table("topology"))
    scenario = Scenario(
        name=name,
        summary=root.string("summary", ""),
        doc=root.string("doc", ""),
        duration=root.number("duration_s", 30.0),
        topology=topology,
        workload=_workload(root.table("workload")),
        timeline=tuple(_event(e, i, topology) for i, e in enumerate(_list(root, "timeline"))),
        client=_client(root.table("client")),
        quic=_quic(root.table("quic")),
        server=_server(root.table("server")),
        attackers=tuple(_attacker(a, i) for i, a in enumerate(_list(root, "attackers"))),
        expect=_expect(root.table("expect")),
    )
    root.finish()
    return scenario.validated()


def _list(table: _Table, key: str) -> list[Any]:
    value = table._get(key, [])
    if not isinstance(value, list):
        raise InputError(f"{key}: expected an array of tables ([[{key}]])")
    return value


def _topology(table: _Table) -> Topology:
    hosts = []
    hosts_table = table.table("hosts")
    for host_name in hosts_table.data:
        host_table = hosts_table.table(host_name)
        ifaces_table = host_table.table("interfaces")
        interfaces = tuple(
            Interface(iface, ifaces_table.strings(iface)) for iface in ifaces_table.data
        )
        host_table.finish()
        hosts.append(Host(host_name, interfaces))
    nats = []
    nats_table = table.table("nats")
    for nat_name in nats_table.data:
        nat_table = nats_table.table(nat_name)
        low, high = Nat(nat_name, ()).port_range
        nats.append(
            Nat(
                name=nat_name,
                external=nat_table.strings("external"),
                idle_timeout=nat_table.number("idle_timeout_s", 30.0),
                port_range=(
                    nat_table.integer("port_low", low),
                    nat_table.integer("port_high", high),
                ),
            )
        )
        nat_table.finish()
    links = []
    links_table = table.table("links")
    for link_name in links_table.data:
        link_table = links_table.table(link_name)
        base_name = link_table.string("profile", "ideal")
        if base_name not in PROFILES:
            raise InputError(
                f"{link_table.where}.profile: unknown profile {base_name!r}; "
                f"known: {', '.join(PROFILES)}"
            )
        settings = [(k, link_table.data[k]) for k in LINK_KEYS if k in link_table.data]
        profile = apply_link_settings(PROFILES[base_name], settings, link_table.where)
        if "a" not in link_table.data:  # typically --set on a link the topology lacks
            known = ", ".join(name for name in links_table.data if name != link_name)
            raise InputError(
                f"{link_table.where}: no such link (links: {known}); a new link needs a and b"
            )
        links.append(Link(link_name, link_table.string("a"), link_table.string("b"), profile))
        link_table.finish(LINK_KEYS)
    topology = Topology(tuple(hosts), tuple(links), tuple(nats), table.string("server", "server"))
    table.finish()
    return topology


def _workload(table: _Table) -> Workload:
    kind = table.string("kind", "download")
    workload: Workload
    if kind == "download":
        workload = Download(size=table.integer("bytes", Download().size))
    elif kind == "messages":
        workload = Messages(
            count=table.integer("count", Messages().count),
            interval=table.number("interval_s", Messages().interval),
            size=table.integer("size", Messages().size),
        )
    elif kind == "stream":
        workload = Stream(
            rate=table.number("rate_mbit", Stream().rate / 1e6) * 1e6,
            duration=table.number("duration_s", Stream().duration),
            chunk=table.integer("chunk", Stream().chunk),
            stall=table.number("stall_s", Stream().stall),
        )
    else:
        raise InputError(f"workload.kind: unknown {kind!r}; allowed: download, messages, stream")
    table.finish()
    return workload


def _client(table: _Table) -> ClientSettings:
    interface = table._get("interface", None)
    if interface is not None and not isinstance(interface, str):
        raise InputError("client.interface: expected an interface name")
    settings = ClientSettings(
        interface=interface,
        keepalive=table.optional("keepalive_s"),
        failover_after=table.optional("failover_after_s"),
    )
    for key in ("keepalive_s", "failover_after_s"):
        value = getattr(settings, "keepalive" if key == "keepalive_s" else "failover_after")
        if value is not None and value <= 0:
            raise InputError(f"client.{key}: must be > 0 seconds (omit it to turn it off)")
    table.finish()
    return settings


def _quic(table: _Table) -> QuicExtensions:
    """`[quic]`: quicmig's extensions to aioquic, booleans, all false (stock) by default."""
    quic = QuicExtensions(**{name: table.boolean(name, False) for name in QuicExtensions.NAMES})
    table.finish()
    return quic


def _server(table: _Table) -> ServerSettings:
    """`[server]`: what the server advertises (preferred address, disable_active_migration)."""
    preferred = table._get("preferred_address", None)
    if preferred is not None and not isinstance(preferred, str):
        raise InputError(f'server.preferred_address: expected "IP:PORT", got {preferred!r}')
    settings = ServerSettings(
        preferred_address=(
            None if preferred is None else parse_address(preferred, "server.preferred_address")
        ),
        disable_active_migration=table.boolean("disable_active_migration", False),
    )
    table.finish()
    return settings


def _attacker(data: Any, index: int) -> Attacker:
    table = _Table(data, f"attackers[{index}]")
    kind = table.string("kind", "")
    if kind not in ATTACK_KINDS:
        raise InputError(f"{table.where}.kind: {kind!r}; allowed: {', '.join(ATTACK_KINDS)}")
    attacker = Attacker(
        kind=kind,
        watch=table.string("watch"),
        source=parse_address(table.string("source"), f"{table.where}.source"),
        at=table.number("at_s", 1.0),
        count=table.integer("count", 3),
        every=table.number("every_s", 1.0),
        delay=table.number("delay_ms", 1.0) / 1e3,
    )
    table.finish()
    return attacker


def _expect(table: _Table) -> Expectation:
    minimum = table._get("min_migrations", None)
    quicmig = table._get("quicmig_verdict", None)
    expectation = Expectation(
        verdict=table.choice("verdict", Verdict, Verdict.PASSED),
        migrations=tuple(
            _member(MigrationKind, kind, "expect.migrations")
            for kind in table.strings("migrations")
        ),
        min_migrations=None if minimum is None else table.integer("min_migrations"),
        cid_rotations=table.integer("cid_rotations", 0),
        why=table.string("why", ""),
        quicmig_verdict=None if quicmig is None else table.choice("quicmig_verdict", Verdict),
        quicmig_why=table.string("quicmig_why", ""),
        preferred_address_used=_optional_bool(table, "preferred_address_used"),
    )
    table.finish()
    return expectation


def _optional_bool(table: _Table, key: str) -> bool | None:
    return None if table.data.get(key) is None else table.boolean(key, False)


def _event(data: Any, index: int, topology: Topology) -> TimelineEvent:
    table = _Table(data, f"timeline[{index}]")
    kind = event_kind(table.string("event", ""), f"{table.where}.event")
    when = _when(table)
    client = topology.clients[0].name if topology.clients else ""
    event: TimelineEvent
    match kind:
        case EventKind.NAT_REBINDING | EventKind.ADDRESS_REBINDING:
            new_address = kind is EventKind.ADDRESS_REBINDING
            event = NatRebind(
                when.at,
                table.string("nat"),
                table.boolean("new_address", new_address),
                table.optional("every_s"),
                progress=when.progress,
            )
        case EventKind.INTERFACE_DOWN:
            event = InterfaceDown(when.at, table.string("iface"), progress=when.progress)
        case EventKind.INTERFACE_UP:
            event = InterfaceUp(when.at, table.string("iface"), progress=when.progress)
        case EventKind.ADDRESS_CHANGE:
            event = AddressChange(
                when.at, table.string("iface"), table.string("address"), progress=when.progress
            )
        case EventKind.INTERFACE_SWITCH:
            event = Switch(
                when.at,
                table.string("host", client),
                table.string("to"),
                table.choice("mode", SwitchMode, SwitchMode.BREAK_BEFORE_MAKE),
                table.boolean("new_cid", True),
                table.number("gap_s", 0.0),
                table.number("overlap_s", 1.0),
                progress=when.progress,
            )
        case EventKind.CID_ROTATION:
            event = CidRotate(when.at, table.string("host", client), progress=when.progress)
        case EventKind.BLACKHOLE:
            event = Blackhole(
                when.at, table.string("link"), table.number("duration_s"), progress=when.progress
            )
        case EventKind.LINK_CHANGE:
            settings = tuple((k, table.data[k]) for k in LINK_KEYS if k in table.data)
            profile = table._get("profile", None)
            if profile is not None and profile not in PROFILES:
                raise InputError(
                    f"{table.where}.profile: unknown profile {profile!r}; known: "
                    f"{', '.join(PROFILES)}"
                )
            if not settings and profile is None:
                raise InputError(
                    f"{table.where}: link-change needs a profile or one of {', '.join(LINK_KEYS)}"
                )
            apply_link_settings(LinkProfile(), settings, table.where)  # check values now
            event = LinkChange(
                when.at,
                table.string("link"),
                tuple((k, number(v, k)) for k, v in settings),
                profile,
                progress=when.progress,
            )
            table.finish(LINK_KEYS)
            return event
        case _:
            raise AssertionError(kind)  # event_kind() allows only schedulable kinds
    table.finish()
    return event


class _When(NamedTuple):
    at: float  # seconds; 0 for an event triggered by progress
    progress: float | None


def _when(table: _Table) -> _When:
    """`at_s` (seconds) or `at_progress` (fraction of the workload delivered): one of them."""
    if "at_progress" in table.data:
        if "at_s" in table.data:
            raise InputError(f"{table.where}: give at_s or at_progress, not both")
        return _When(0.0, table.number("at_progress"))
    return _When(table.number("at_s"), None)
