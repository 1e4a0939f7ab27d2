"""`quicmig lab race`: one scenario, one run per transport, each a run of the one pipeline.

QUIC is exactly `quicmig run --backend lab`'s run (quicmig.live.backend.LiveBackend on the
lab driver); TCP and MPTCP are quicmig.race.backend.StreamBackend on the same driver. Each
run builds the lab anew (the same topology, addresses, link models and NAT port windows),
plays the same timeline through it, and is judged by the same judge into a Result whose
`transport` says what carried the bytes. The runs go one after another, never at once:
they would share the machine's two cores and the links.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from quicmig.core.connections import MPTCP, QUIC, TCP
from quicmig.core.results import Result
from quicmig.errors import InputError
from quicmig.model.events import (
    AddressChange,
    InterfaceDown,
    NatRebind,
    Switch,
)
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import Download, Expectation, Scenario
from quicmig.model.verdicts import Verdict
from quicmig.race import race_names
from quicmig.race.client import ClientSettings
from quicmig.race.driver import RaceLabDriver
from quicmig.runner import Backend, RunOptions, execute

TRANSPORTS = (QUIC, TCP, MPTCP)
MOVES = (NatRebind, Switch, AddressChange, InterfaceDown)  # each gives the client a new path
TCP_WHY = (
    "TCP names a connection by its 4-tuple (RFC 9293 section 3.1): a move ends it, and the "
    "download resumes on a new connection"
)
MPTCP_WHY = "RFC 8684: the connection lives on over its subflow on the other interface"


def race_scenario(target: str, overrides: list[str], download: int | None = None) -> Scenario:
    """A race by name (the race's own scenarios: one topology and one download, a move
    each), or any scenario name or FILE.toml, with `--set` overrides; InputError else."""
    source = target
    if target in race_names():
        source = str(resources.files("quicmig.race") / "scenarios" / f"{target}.toml")
    scenario = load_scenario(source, overrides)
    if download is not None:
        scenario = replace(scenario, workload=Download(download)).validated()
    if not isinstance(scenario.workload, Download):
        raise InputError(
            f"{target}: a {type(scenario.workload).__name__.lower()} workload; the race "
            'downloads (set workload.kind = "download", or --download BYTES)'
        )
    return scenario


def parse_transports(text: str) -> tuple[str, ...]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in TRANSPORTS]
    if unknown or not names:
        raise InputError(
            f"--transports {text!r}: "
            + (f"unknown {', '.join(unknown)}; " if unknown else "none given; ")
            + f"choose from {', '.join(TRANSPORTS)}"
        )
    if len(set(names)) < len(names):
        raise InputError(f"--transports {text!r}: each transport once")
    return tuple(names)


def for_transport(scenario: Scenario, transport: str) -> Scenario:
    """The scenario as `transport` runs it: TCP and MPTCP expect their own outcome."""
    if transport == QUIC:
        return scenario
    moved = any(isinstance(e, MOVES) for e in scenario.timeline)
    if transport == TCP:
        verdict, why = (Verdict.FAILED, TCP_WHY) if moved else (Verdict.PASSED, "")
    else:
        verdict, why = Verdict.PASSED, MPTCP_WHY if moved else ""
    return replace(scenario, expect=Expectation(verdict=verdict, why=why))


@dataclass(frozen=True, slots=True)
class RaceSettings:
    transports: tuple[str, ...] = TRANSPORTS
    seed: int = 1
    client: ClientSettings = field(default_factory=ClientSettings)
    mptcp_backup: bool = True  # the second subflow stands by (iOS's handover mode)
    quic_timeout: float = 5.0  # seconds: the QUIC client's handshake and request timeout
    pcap: Path | None = None  # a folder: TRANSPORT.pcap and TRANSPORT.keys per run
    # MPTCP cannot be used here (quicmig.race.mptcp.unavailable): the mptcp run is plain TCP
    mptcp_fallback: str | None = None


def run_race(
    scenario: Scenario,
    settings: RaceSettings,
    *,
    log: Callable[[str], None] | None = None,
    done: Callable[[Result], None] | None = None,
) -> list[Result]:
    """One Result per transport, in the order asked; `done` is told of each as it ends."""
    results = []
    for transport in settings.transports:
        result = run_one(scenario, transport, settings, log=log)
        if done is not None:
            done(result)
        results.append(result)
    return results


def run_one(
    scenario: Scenario,
    transport: str,
    settings: RaceSettings,
    *,
    log: Callable[[str], None] | None = None,
) -> Result:
    from quicmig.live.backend import ClientOptions, LiveBackend
    from quicmig.live.stop import run_stoppable
    from quicmig.race.backend import StreamBackend

    pcap = keylog = None
    if settings.pcap is not None:
        pcap, keylog = settings.pcap / f"{transport}.pcap", settings.pcap / f"{transport}.keys"
        keylog.unlink(missing_ok=True)  # both clients append to a key log
    mptcp = transport == MPTCP and settings.mptcp_fallback is None
    driver = RaceLabDriver(
        scenario,
        settings.seed,
        mptcp=mptcp,
        mptcp_backup=settings.mptcp_backup,
        pcap=pcap,
        log=log,
    )
    backend: Backend
    if transport == QUIC:
        backend = LiveBackend(driver, client=ClientOptions(timeout=settings.quic_timeout))
    else:
        backend = StreamBackend(
            driver,
            mptcp=mptcp,
            settings=settings.client,
            fallback=settings.mptcp_fallback if transport == MPTCP else None,
        )
    options = RunOptions(seed=settings.seed, pcap=pcap, keylog=keylog)
    try:
        result = run_stoppable(execute(for_transport(scenario, transport), backend, options))
    finally:
        driver.close()  # for the Ctrl-C that gave up waiting (a no-op otherwise)
    if pcap is not None:
        result.files["pcap"] = str(pcap)
    return result
