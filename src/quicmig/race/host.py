"""The race's client host: a phone's routing and, for MPTCP, its endpoints.

Made inside the lab's namespaces (quicmig.lab.build), so they go with them:

- Source routing, as a multihomed phone has (Android keeps one routing table per network):
  a packet from an interface's address leaves by that interface, or not at all (`ip rule
  from ADDR lookup TABLE`, then `from ADDR unreachable`). Without it, a TCP socket whose
  WiFi link went down would send its WiFi-sourced packets out of the cellular link, and
  the router, holding both NATs in one conntrack table, would translate them as WiFi's: a
  half-working path that no real network offers. A QUIC socket that is not bound to an
  address takes its source from the main table, as before. The tables follow the moves
  (`refresh()` after each: a link going down takes its routes along).
- For MPTCP (RFC 8684): the limits of both ends (`ip mptcp limits`), and an endpoint on
  each client interface besides the one it starts on (`ip mptcp endpoint add ADDR dev TUN
  subflow`, `backup` too by default: the second subflow stands by, as in iOS's handover
  mode, and carries data only when the first fails), so that every MPTCP connection gets
  a subflow on each. Nothing adds endpoints later (no mptcpd or NetworkManager): an
  address that appears after the start gets none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quicmig.lab.build import NamespaceLab
from quicmig.lab.system import run

FIRST_TABLE = 100  # routing table of the client's first interface; the next get 101, ...
FIRST_RULE = 1000  # ip rule priority of the first interface's rules (before main, 32766)
SUBFLOWS = 2  # MPTCP subflows per connection, both ends: one per client interface


@dataclass(slots=True)
class ClientHost:
    """The routing (and MPTCP endpoints) of client `host` in a built lab."""

    net: NamespaceLab
    host: str
    rules: set[str] = field(default_factory=set)  # "from ADDR lookup N" made so far

    @property
    def namespace(self) -> str:
        return self.net.client_namespace(self.host)

    def _interfaces(self) -> list[tuple[int, str]]:
        host = self.net.plan.topology.host(self.host)
        return [(index, f"{self.host}.{i.name}") for index, i in enumerate(host.interfaces)]

    def refresh(self) -> None:
        """Each up interface's table routes out of it; each address has its rules."""
        lines = []
        for index, ref in self._interfaces():
            table = FIRST_TABLE + index
            if ref not in self.net.down:
                tun = self.net.interface_of(ref)
                lines.append(f"route replace default dev {tun} table {table}")
            for address in self.net.addresses[ref]:
                rule = f"from {address} lookup {table}"
                if rule not in self.rules:
                    priority = FIRST_RULE + 2 * index
                    lines.append(f"rule add {rule} priority {priority}")
                    lines.append(f"rule add from {address} unreachable priority {priority + 1}")
                    self.rules.add(rule)
        if lines:
            run(["ip", "-n", self.namespace, "-batch", "-"], input="\n".join(lines) + "\n")

    def describe(self) -> dict[str, Any]:
        return {
            "source_routing": sorted(self.rules),
            "tables": {ref: FIRST_TABLE + index for index, ref in self._interfaces()},
        }


def add_mptcp_endpoints(net: NamespaceLab, host: str, backup: bool) -> list[str]:
    """Limits on both ends, and an endpoint on every interface of `host` but its first
    route's; returns the endpoints made (`ADDR dev TUN FLAGS`)."""
    client = net.client_namespace(host)
    limits = f"limits set subflows {SUBFLOWS} add_addr_accepted 0"
    for namespace in (client, net.server_namespace):
        run(["ip", "-n", namespace, "mptcp", *limits.split()])
    made = []
    flags = "subflow backup" if backup else "subflow"
    for iface in net.plan.topology.host(host).interfaces:
        ref = f"{host}.{iface.name}"
        if iface.name == net.current[host]:
            continue  # the first subflow's: its address is the connection's own
        for address in net.addresses[ref]:
            endpoint = f"{address} dev {net.interface_of(ref)} {flags}"
            run(["ip", "-n", client, "mptcp", "endpoint", "add", *endpoint.split()])
            made.append(endpoint)
    return made
