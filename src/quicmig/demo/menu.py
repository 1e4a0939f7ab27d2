"""The demo's flow: topics as text, scenarios run step by step in the simulator, and a menu.

`interactive=False` never reads the keyboard (tests, CI, pipes): every pause is skipped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import IO, cast

from rich.console import Console, Group
from rich.panel import Panel
from rich.prompt import Prompt
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from quicmig.core.datagram import format_address
from quicmig.core.results import MigrationResult, Result
from quicmig.demo.content import (
    INTRO,
    RACE_HOWTO,
    STORIES,
    TOPICS,
    TUTORIAL_ORDER,
    UNLIKE_TCP,
    Topic,
    story,
)
from quicmig.demo.diagram import diagram
from quicmig.demo.observe import observe
from quicmig.model.loader import builtin_names, load_scenario
from quicmig.model.scenario import Scenario
from quicmig.model.verdicts import CheckState
from quicmig.report.sequence import TIMES
from quicmig.report.table import verdict_text

WIDTH = 100  # columns at most: prose and diagrams are laid out for this
DEMO_RACE = ("network-switch", 2_000_000)  # the race the Unlike-TCP topic runs, bytes


def make_console() -> Console:
    """The terminal's width up to WIDTH; piped, COLUMNS up to WIDTH, as plain text without
    trailing spaces (quicmig.report.table)."""
    import sys

    from quicmig.report.table import TrimmedLines, console_width

    probe = Console()
    width = min(console_width(probe), WIDTH)
    if probe.is_terminal:
        return Console(width=width)
    return Console(file=cast(IO[str], TrimmedLines(sys.stdout)), width=width)


def reflow(text: str) -> str:
    """Join the hard-wrapped lines of each paragraph, keeping blank lines and bullets."""
    paragraphs = []
    for block in text.strip().split("\n\n"):
        lines: list[str] = []
        for line in block.splitlines():
            if lines and not line.startswith("•"):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.strip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def scenario_order() -> list[str]:
    names = builtin_names()
    first = [n for n in TUTORIAL_ORDER if n in names]
    known = [n for n in STORIES if n in names and n not in first]
    return first + known + [n for n in names if n not in first and n not in known]


def lab_unavailable() -> str | None:
    """Why the namespace lab cannot race here (one line), or None."""
    from quicmig.lab import system
    from quicmig.lab.owners import new_prefix

    if not system.privileged():  # before the probe: it would only say the same
        return "this process is not root"
    return system.unavailable(f"{new_prefix()}-probe")


def run_demo_race(seed: int) -> list[Result]:
    """The Unlike-TCP topic's race: WiFi -> cellular, the race's defaults, a smaller body."""
    from quicmig.race import mptcp
    from quicmig.race.run import RaceSettings, race_scenario, run_race

    name, size = DEMO_RACE
    settings = RaceSettings(seed=seed, mptcp_fallback=mptcp.unavailable())
    return run_race(race_scenario(name, [], size), settings)


class Demo:
    def __init__(
        self,
        console: Console,
        interactive: bool,
        seed: int = 1,
        *,
        measure: bool | None = None,
        lab: Callable[[], str | None] = lab_unavailable,
        race: Callable[[int], list[Result]] = run_demo_race,
    ) -> None:
        """`measure`: the Unlike-TCP topic races in the lab where it can (None: when
        interactive; `quicmig demo --no-input` asks for it too); `lab` says why the lab
        cannot race here (None: it can), `race` runs the race."""
        self.console = console
        self.interactive = interactive
        self.seed = seed
        self.measure = interactive if measure is None else measure
        self.lab = lab
        self.race = race

    # --- pauses ---------------------------------------------------------------------------

    def pause(self, what: str = "continue") -> None:
        if self.interactive:
            Prompt.ask(f"[dim]Enter to {what}[/dim]", default="", show_default=False)

    # --- topics ---------------------------------------------------------------------------

    def intro(self) -> None:
        self.console.print(
            Panel(reflow(INTRO), title="[bold]QUIC connection migration, for real", expand=False)
        )

    def topic(self, topic: Topic) -> None:
        body = reflow(topic.body)
        if topic.see:
            body += "\n\n[dim]See it: " + ", ".join(topic.see) + " (in the menu)[/dim]"
        self.console.print(Panel(body, title=f"[bold]{topic.title}", title_align="left"))
        if topic.key == UNLIKE_TCP:
            self.unlike_tcp()

    def unlike_tcp(self) -> None:
        """Race QUIC, TCP and MPTCP through the WiFi -> cellular switch in the namespace lab
        and show what each lost; where the lab is not available, say how to get it."""
        from quicmig.race.report import notes, race_table

        why = self.lab()
        if why is not None:
            self.console.print(f"{RACE_HOWTO}\n[dim]Here: {why}.[/dim]")
            return
        if not self.measure:
            self.console.print(
                "The namespace lab is available here: [bold]quicmig lab race[/bold] (or this "
                "topic in `quicmig demo`) measures the comparison on this machine."
            )
            return
        name, size = DEMO_RACE
        self.pause(f"race QUIC, TCP and MPTCP through {name} in the lab (under a minute)")
        with self.console.status(f"racing {size / 1e6:g} MB over QUIC, TCP and MPTCP …"):
            results = self.race(self.seed)
        self.console.print(race_table(results))
        for line in notes(results):
            self.console.print(f"• {line}", markup=False, highlight=False)
        self.console.print(
            "[dim]Measured just now in the namespace lab (each transport in a lab of its "
            "own); `sudo quicmig lab race --plot race.png` draws the three curves.[/dim]"
        )

    # --- scenarios ------------------------------------------------------------------------

    def scenario(self, name_or_path: str) -> Result:
        scenario = load_scenario(name_or_path)
        told = story(scenario.name, scenario.summary)
        console = self.console
        console.print(Rule(f"[bold]{told.title}", align="left"))
        console.print(f"[bold]{scenario.name}[/bold]: {scenario.summary}")
        if scenario.doc:
            console.print(reflow(scenario.doc), style="dim")
        console.print(_setup(scenario))
        self.pause("run it in the simulator")
        with console.status(f"simulating {scenario.name} …", spinner="dots"):
            obs = observe(scenario, seed=self.seed)
        result = obs.result
        sim = result.stats.get("run_seconds", 0.0)
        console.print(
            f"[dim]Simulated {sim:.2f} s in {result.wall.get('seconds', 0.0):.2f} s of wall "
            f"time (seed {result.seed}); the server's aioquic logged {obs.log.total:,} "
            "packets.[/dim]"
        )
        views = obs.log.windows
        if not views:
            console.print("No network change and no migration in this run.")
        for index, window in enumerate(views):
            if index:
                self.pause("see the next one")
            console.print()
            console.print(
                diagram(
                    obs.log,
                    window,
                    result.migrations,
                    result.network_changes,
                    width=console.width,
                )
            )
            if window.migration is not None:
                console.print(_numbers(result.migrations[window.migration]))
        if len(result.migrations) > len(views):
            console.print(f"[dim]… and {len(result.migrations) - len(views)} more migrations.")
        console.print()
        console.print(_outcome(result, scenario, console.width))
        console.print(Text("What to look at: ", style="bold").append(told.look_at, style=""))
        return result

    # --- menu -----------------------------------------------------------------------------

    def everything(self) -> None:
        """Everything once, in order (the --no-input tour)."""
        self.intro()
        for topic in TOPICS:
            self.topic(topic)
        for name in scenario_order():
            self.scenario(name)
            self.console.print()

    def menu(self) -> None:
        self.intro()
        names = scenario_order()
        entries: dict[str, Callable[[], object]] = {}
        for number, topic in enumerate(TOPICS, 1):
            entries[str(number)] = functools.partial(self.topic, topic)
        for number, name in enumerate(names, len(TOPICS) + 1):
            entries[str(number)] = entries[name] = functools.partial(self.scenario, name)
        while True:
            self.console.print(_menu_table(names, self.console.width))
            choice = Prompt.ask("Pick a number or a scenario name ([bold]q[/bold] to quit)")
            choice = choice.strip()
            if not choice:
                continue
            if choice.lower() in {"q", "quit", "exit"}:
                return
            action = entries.get(choice)
            if action is None:
                self.console.print(f"[red]No such choice: {choice!r}[/red]")
                continue
            action()
            self.pause("return to the menu")


def _menu_table(names: list[str], width: int = WIDTH) -> Group:
    """Topics, then scenarios, numbered, in as many columns as `width` holds: the intro and
    the whole menu fit a 24-line terminal at 80 columns."""
    columns = 3 if width >= 120 else 2

    def grid(items: list[tuple[str, str]]) -> Table:
        table = Table.grid(padding=(0, 1))
        for _ in range(columns):
            table.add_column(justify="right", style="bold cyan", no_wrap=True)
            table.add_column(ratio=1)
        rows = -(-len(items) // columns)
        for row in range(rows):
            cells: list[str] = []
            for column in range(columns):
                index = column * rows + row
                number, text = items[index] if index < len(items) else ("", "")
                cells += [number, text]
            table.add_row(*cells)
        return table

    topics = [(str(n), t.title) for n, t in enumerate(TOPICS, 1)]
    scenarios = [(str(n), name) for n, name in enumerate(names, len(TOPICS) + 1)]
    return Group(
        Text.from_markup("[bold]Topics"),
        grid(topics),
        Text.from_markup("[bold]Scenarios[/bold] [dim](run in the simulator, real aioquic)"),
        grid(scenarios),
    )


def _setup(scenario: Scenario) -> Text:
    topo = scenario.topology
    parts = []
    for host in topo.clients:
        ifaces = ", ".join(f"{i.name} {'/'.join(i.addresses)}" for i in host.interfaces)
        parts.append(f"client ({ifaces})")
    for nat in topo.nats:
        parts.append(f"NAT {nat.name} (public {', '.join(nat.external)})")
    server = topo.host(topo.server)
    parts.append(f"server {server.interfaces[0].addresses[0]}")
    events = "; ".join(f"{e.at:g} s {_event_name(e)}" for e in scenario.timeline) or "none"
    text = Text("Network: ", style="bold")
    text.append(" · ".join(parts))
    text.append("\nTimeline: ", style="bold")
    text.append(events)
    return text


def _event_name(event: object) -> str:
    """`NatRebind` -> `nat rebind`."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", type(event).__name__).lower()


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _bytes(count: int) -> str:
    if count >= 1_000_000:
        return f"{count / 1e6:.1f} MB"
    return f"{count / 1e3:.1f} kB" if count >= 1000 else f"{count} B"


def _numbers(mig: MigrationResult) -> Table:
    """The measured numbers of one migration, from the Result."""
    table = Table(show_header=False, box=None, padding=(0, 1), title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    change = (
        f"{mig.network_change.value if mig.network_change else '?'} at "
        f"{mig.network_change_at:.4f} s"
        if mig.network_change_at is not None
        else "none recorded"
    )
    table.add_row("network change", change)
    table.add_row(
        "server saw",
        f"{mig.observed.label}: {format_address(mig.old_peer)} → {format_address(mig.new_peer)} "
        f"at {mig.detected_at:.4f} s",
    )
    table.add_row("detection delay", f"{_ms(mig.detection_delay)} (change → first packet seen)")
    first = {True: "yes", False: "[red]no[/red]", None: "—"}[mig.first_packet_had_challenge]
    table.add_row(
        "challenge", f"{mig.challenges} sent; in the first packet to the new path: {first}"
    )
    rtt = _ms(mig.validation_rtt) if mig.validated_at is not None else "[red]never answered[/red]"
    table.add_row("validation RTT", f"{rtt} (PATH_CHALLENGE → PATH_RESPONSE)")
    table.add_row(
        "interruption", f"{_ms(mig.interruption)} (longest gap in data delivered to the app)"
    )
    table.add_row(
        "losses",
        f"{mig.lost_packets} packets declared lost, {_bytes(mig.retransmitted_bytes)} "
        "of stream data sent again",
    )
    server_cid = {True: "yes", False: "no", None: "—"}[mig.server_cid_changed]
    table.add_row(
        "new connection ID",
        f"client's DCID: {'yes' if mig.cid_changed else 'no'}; server's DCID: {server_cid}",
    )
    sent, received = mig.sent_before_validation, mig.received_before_validation
    if received:
        table.add_row(
            "anti-amplification",
            f"sent {_bytes(sent)}, received {_bytes(received)} before validation: "
            f"{sent / received:.2f}{TIMES} (limit 3{TIMES})",
        )
    return table


def _outcome(result: Result, scenario: Scenario, width: int) -> Text:
    text = Text.from_markup(f"Verdict: {verdict_text(result)}")
    transfer = result.transfer
    text.append(
        f"  {transfer.workload}: {_bytes(transfer.bytes)}"
        + (", intact" if transfer.intact else ", not complete")
        + (f", done at {transfer.completed_at:.3f} s" if transfer.completed_at else "")
    )
    marks = {
        CheckState.PASSED: ("✓", "green"),
        CheckState.FAILED: ("✗", "red"),
        CheckState.UNSUPPORTED: ("?", "yellow"),
        CheckState.NOT_APPLICABLE: ("n/a", "dim"),
    }
    text.append("\nChecks:")
    column = len("Checks:")
    for check in result.checks:
        mark, style = marks[check.state]
        item = f"{mark} {check.name}"
        if column + 2 + len(item) > width:
            text.append("\n       ")
            column = len("Checks:")
        text.append("  ")
        text.append(mark, style=style)
        text.append(f" {check.name}")
        column += 2 + len(item)
    if result.verdict.value != "passed" and scenario.expect.why:
        text.append(f"\nWhy: {scenario.expect.why}", style="dim")
    return text
