"""The same download and the same move over QUIC, TCP and MPTCP (`quicmig lab race`).

quicmig.race.run runs one scenario once per transport through the one pipeline: QUIC with
the live backend, TCP and MPTCP with quicmig.race.backend, each in the namespace lab built
by the same driver (quicmig.race.driver). The race's own scenarios (race/scenarios/*.toml)
share one topology and one download and differ in their move.
"""

from __future__ import annotations

from importlib import resources

DEFAULT_RACE = "network-switch"


def race_names() -> list[str]:
    """The race's own scenarios, by name."""
    folder = resources.files("quicmig.race") / "scenarios"
    names = (p.name for p in folder.iterdir())
    return sorted(n.removesuffix(".toml") for n in names if n.endswith(".toml"))
