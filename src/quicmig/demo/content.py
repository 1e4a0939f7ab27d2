"""The words of the demo: topics, the tutorial's real-world scenarios, benefits and use cases.

Text only. Numbers and packets never come from here: they come from running the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topic:
    key: str
    title: str
    body: str  # rich markup
    see: tuple[str, ...] = ()  # scenarios that show it


@dataclass(frozen=True, slots=True)
class Story:
    """How the seed tutorial named a real-world situation, and what to look at in its run."""

    title: str
    look_at: str


INTRO = """\
QUIC connections survive a change of network: a NAT that forgets its mapping, a phone that
leaves WiFi, a new DHCP address. Each scenario here runs [bold]real aioquic endpoints[/bold]
in quicmig's simulator (virtual time: a 10 s download takes a second) and shows the
[bold]packets the server really sent and received[/bold] around each migration, then what
they measure: how soon the server noticed, the validation round trip, the wait for the app.
"""

UNLIKE_TCP = "unlike-tcp"  # the topic that runs `quicmig lab race` where the lab is available
RACE_HOWTO = (
    "Measured on this machine it needs the namespace lab: Linux, root, iproute2, nftables, "
    "conntrack and /dev/net/tun (MPTCP too for its column). Then run "
    "[bold]sudo quicmig lab race[/bold] (the WiFi -> cellular switch; also nat-rebinding, "
    "make-before-break, ip-change), with --plot race.png for the three curves."
)

TOPICS: tuple[Topic, ...] = (
    Topic(
        "cids",
        "Connection IDs vs the TCP 4-tuple",
        """\
A TCP connection [bold]is[/bold] its 4-tuple (source IP, source port, destination IP, destination
port). Change any of them and the segments belong to no connection: the app must reconnect,
redo the handshake and resume by itself.

QUIC names a connection by [bold]connection IDs[/bold] (RFC 9000 §5.1) carried in every packet
header. Each endpoint issues several IDs to its peer with NEW_CONNECTION_ID frames; the peer puts
one of them in the Destination Connection ID (DCID) of the packets it sends. A server routes an
incoming packet by its DCID, not by the address it came from, so packets from a new address
still find their connection — and the keys, streams and congestion state that go with it.

In the diagrams the DCID column shows the sequence number of the ID in use (#0 is the one from
the handshake) and its first bytes.""",
        ("nat-rebinding", "network-switch"),
    ),
    Topic(
        "validation",
        "Path validation, and why it stops spoofing",
        """\
A packet from a new address only proves that someone who holds the keys sent it — not that the
address is real. An attacker on the path could copy a packet and replay it with a forged source
address, to make the server blast its download at a victim.

So before trusting a new address the server sends a [bold]PATH_CHALLENGE[/bold] carrying 8
unpredictable bytes to it (RFC 9000 §8.2, §9.3). Only an endpoint that really receives packets
at that address can echo them in a [bold]PATH_RESPONSE[/bold]. Until the response arrives the
server limits what it sends there (see anti-amplification). In the diagrams: the PATH_CHALLENGE row,
then the PATH_RESPONSE row with the same data one round trip later; the gap between them is the
[bold]validation RTT[/bold].""",
        ("nat-rebinding", "ip-change"),
    ),
    Topic(
        "amplification",
        "Anti-amplification: the 3\u00d7 limit",
        """\
Until an address is validated, a server may send it at most [bold]three times the bytes it has
received from it[/bold] (RFC 9000 §8, §8.2.1, §9.3). This holds during the handshake and again
on every unvalidated new path, so the owner of a spoofed source address receives at most three
times what the attacker sent. It is why a client pads its first Initial to 1200 bytes, and why
PATH_CHALLENGE packets are padded to 1200 bytes too (§8.2.1): padding proves the path carries
full-size packets while staying within the budget.

After each migration the demo reports the bytes the server sent to the new address before
the PATH_RESPONSE arrived, next to the bytes it received from there — measured from the packets
aioquic logged.""",
        ("nat-rebinding-addr", "rebind-addr"),
    ),
    Topic(
        "probing",
        "Probing vs non-probing packets",
        """\
RFC 9000 §9.1: a packet that holds only PATH_CHALLENGE, PATH_RESPONSE, NEW_CONNECTION_ID and
PADDING frames is a [bold]probing packet[/bold]. An endpoint can probe a path (is it there? what
is its RTT?) without moving to it. Any other frame — ACK, STREAM, PING — makes a packet
[bold]non-probing[/bold], and the server moves the connection to the new address only when the
highest-numbered non-probing packet arrives from it (§9.3). That is what "migration detected"
marks in the diagrams; rows marked "probing" did not move anything.

The simulated client sends a PING after it knows it moved, so its very next packet is
non-probing and the server learns the new address at once (§9.2).""",
        ("network-switch", "make-before-break"),
    ),
    Topic(
        "privacy",
        "Connection ID rotation for privacy",
        """\
A connection ID that stays the same across networks would let anyone watching both networks
link the phone at the café to the phone on the train. RFC 9000 §9.5: an endpoint that moves
[bold]must not[/bold] reuse a connection ID on the new path; it switches to a fresh ID the peer
issued and retires the old one with RETIRE_CONNECTION_ID, and the peer does likewise for its
own DCID. An endpoint may also rotate IDs on the same path at any time.

A NAT rebinding is different: the client does not know it moved, so it keeps its ID — one of the
reasons the spec cannot give full unlinkability there. Compare the DCID column of nat-rebinding
(#0 before and after) with network-switch and ip-change (a new number after the move), and see
cid-rotation for rotation without any address change.""",
        ("cid-rotation", "ip-change"),
    ),
    Topic(
        UNLIKE_TCP,
        "Unlike TCP: the same move on TCP, MPTCP and QUIC, measured",
        """\
A TCP download that loses its path cannot follow it: the connection [bold]is[/bold] its
4-tuple (RFC 9293 §3.1). What a well-written app does then is slow by design. It has to
[bold]notice[/bold]: a socket error comes only if something answers (a NAT rebinding draws a
reset from the server); a WiFi link that is gone, or an address that was taken away, says
nothing, and the app waits for its read timeout (OkHttp, most Android apps' HTTP client: 10 s).
Then it [bold]reconnects[/bold]: a new TCP handshake, a new TLS 1.3 handshake and the request,
three round trips on the new path, and a new slow start; with [bold]Range: bytes=N-[/bold]
(RFC 9110 §14.2) it fetches only what it lacks.

[bold]MPTCP[/bold] (RFC 8684), the kernel's own answer, keeps one connection over a TCP subflow per
interface: it lives while one subflow does. But the kernel's path manager opens subflows from
the endpoints it was given, once: after a NAT rebinding or a new address the WiFi subflow is
gone for good, and the download goes on over cellular only.

[bold]QUIC[/bold] keeps its connection: packets from the new address carry a connection ID the
server knows, it validates the path and carries on, with no new handshake.

quicmig's simulator has no TCP (a home-made model would not be TCP): this comparison runs the
kernel's own TCP and MPTCP, and aioquic, through the same namespace lab, the same links (the
simulator's link model in a userspace element) and the same move.""",
    ),
    Topic(
        "preferred",
        "Server preferred address",
        """\
Migration is a client feature: a server cannot move by itself. It can, however, offer a
[bold]preferred address[/bold] in its transport parameters (RFC 9000 §9.6, §18.2): after the
handshake the client validates that address and moves the connection there, using a connection
ID that came with it. Deployments use it to hand connections from an anycast or load-balanced
address to one server's own address.

aioquic 1.7 clients honour a preferred address, but [bold]aioquic 1.7 servers cannot send
one[/bold]. quicmig's server connection adds it (src/quicmig/aioquic_ext.py: the connection ID
with sequence number 1 and its reset token in the transport parameter) and accepts the
connection on both addresses. See the scenarios preferred-address (the client's first packet
there carries a new DCID: quic-interop-runner's connectionmigration check) and
preferred-address-unreachable (the client stays where it is), or live:
quicmig server --preferred-address 127.0.0.1:4434.""",
    ),
    Topic(
        "benefits",
        "Benefits and use cases",
        """\
• [bold]Mobile apps[/bold]: walking out of WiFi does not kill a download, an upload or an API
  session; no reconnect, no new TLS handshake, no lost request. See network-switch and
  make-before-break.
• [bold]Video and voice calls[/bold]: a NAT rebinding or a network switch costs a round trip or
  two of validation instead of a dropped call; the interruption is measured in each run.
• [bold]IoT and long-lived connections[/bold]: devices behind home and carrier-grade NATs whose
  mappings time out or move (nat-rebinding, nat-rebinding-addr). The catch: a device that only
  listens cannot be found again after its NAT forgets it (nat-rebinding-idle) — it has to send
  something, e.g. a small keep-alive (nat-rebinding-keepalive).
• [bold]Operators[/bold]: servers route by connection ID, so a load balancer that understands
  IDs keeps a moving client on the same backend.

What it does not do by itself: reset the congestion window and RTT estimate for the new path
(RFC 9000 §9.4; stock aioquic 1.7 keeps the old path's, visible in network-switch and
blackhole), or notice a silent dead path — that is up to the client (blackhole).""",
    ),
)

# The seed tutorial's real-world situations, in its order, then the rest of the built-ins.
STORIES: dict[str, Story] = {
    "nat-rebinding": Story(
        "NAT rebinding (home router forgets the mapping)",
        "The client's socket never changes; the server sees a new port. The first packet the "
        "server sends there carries PATH_CHALLENGE, and data keeps flowing while it waits.",
    ),
    "network-switch": Story(
        "WiFi → cellular (break-before-make)",
        "Packets in flight on WiFi are lost. The client arrives with a new DCID and a new address "
        "(the carrier NAT's). Note whether the server's first packet there carries PATH_CHALLENGE.",
    ),
    "ip-change": Story(
        "DHCP renewal (new address, same port)",
        "An active migration: the client knows it moved, so it switches connection ID at once.",
    ),
    "nat-rebinding-addr": Story(
        "Carrier-grade NAT moves the client to another public address",
        "Only the address the server sees changes; the client keeps its socket and its DCID.",
    ),
    "make-before-break": Story(
        "WiFi → cellular (make-before-break)",
        "WiFi still receives for a second: compare the lost packets with network-switch.",
    ),
    "blackhole": Story(
        "WiFi goes silent (dead access point, captive portal)",
        "Nothing tells the client: it notices the silence after 1 s and fails over to cellular.",
    ),
    "nat-rebinding-idle": Story(
        "NAT rebinding while the client only listens",
        "The server's packets die at the NAT and the client never sends: no migration can happen.",
    ),
    "nat-rebinding-keepalive": Story(
        "NAT rebinding with client keep-alives",
        "The first keep-alive PING after the rebinding opens a new mapping; the stream resumes.",
    ),
    "cid-rotation": Story(
        "Connection ID rotation on an unchanged path (privacy)",
        "No address changes: the DCID column changes, and no migration is detected.",
    ),
    "rebind-port": Story(
        "Interop test rebind-port (NAT port changes every 5 s)",
        "Every new path must be challenged in the server's first packet to it.",
    ),
    "rebind-addr": Story(
        "Interop test rebind-addr (NAT address changes every 5 s)",
        "As rebind-port, with the public address changing too.",
    ),
    "disable-migration": Story(
        "A server that asks clients not to migrate",
        "The NAT rebinding is still followed; watch whether the client switches to cellular.",
    ),
    "preferred-address": Story(
        "The server asks clients to move to its preferred address",
        "The client probes the new server address with a new DCID, then moves its data there.",
    ),
    "preferred-address-unreachable": Story(
        "A preferred address that cannot be reached",
        "The client's probes go unanswered; it stays on the original address and carries on.",
    ),
    "spoofed-address": Story(
        "An attacker forges the client's source address",
        "The server challenges the forged address, sends it at most 3x what it received, and "
        "goes back to the real client.",
    ),
    "off-path-forward": Story(
        "An off-path attacker forwards the client's packets from its own address",
        "Each copy arriving first moves the server; it challenges the attacker's address and "
        "returns with the real client's next packet (with probe_old_path it also probes the "
        "old path).",
    ),
}

TUTORIAL_ORDER = ("nat-rebinding", "network-switch", "ip-change", "nat-rebinding-addr")


def story(name: str, summary: str) -> Story:
    return STORIES.get(name, Story(name, summary))
