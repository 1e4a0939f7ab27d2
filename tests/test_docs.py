"""The reference pages in docs/ name everything they are the reference for."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import BuiltinRuns

from quicmig.cli import COMMANDS, build_parser
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import QuicExtensions
from quicmig.report.recording import record, recorded_result
from quicmig.runner import RunOptions

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _options(parser: argparse.ArgumentParser) -> list[str]:
    found = []
    for action in parser._actions:  # argparse has no public list of a parser's options
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _options(sub)
        elif not isinstance(action, argparse._HelpAction):
            found += [o for o in action.option_strings if o.startswith("--")]
    return found


@pytest.mark.parametrize("name", list(COMMANDS))
def test_cli_page_lists_every_flag(name: str) -> None:
    text = (DOCS / "cli.md").read_text()
    parser = build_parser(name)
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert f"## quicmig {name}" in text
    missing = [o for o in _options(commands.choices[name]) if f"`{o}" not in text]
    assert not missing, f"docs/cli.md lacks {name} {missing}"


def _keys(value: Any, prefix: str = "") -> set[str]:
    """Every field name in a result, nested ones by their own name."""
    names: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if not re.fullmatch(r"[a-z_]+", key):
                continue  # data keys: DCIDs, addresses, link names
            names.add(key)
            if key not in ("links", "nat_inbound_drops", "cid_labels", "data"):
                names |= _keys(inner)
    elif isinstance(value, list):
        for item in value[:3]:
            names |= _keys(item)
    return names


def test_results_page_names_every_field(builtin_run: BuiltinRuns) -> None:
    text = (DOCS / "results.md").read_text()
    recorded = recorded_result(record(load_scenario("network-switch"), RunOptions(seed=1)))
    fields = _keys({**recorded.to_dict(series=True), "command": "quicmig run"})
    fields |= _keys(builtin_run("spoofed-address").result.to_dict())
    fields |= _keys(builtin_run("cid-rotation").result.to_dict())
    missing = sorted(f for f in fields if f"`{f}`" not in text)
    assert not missing, f"docs/results.md lacks {missing}"


def test_glossary_and_extensions_pages() -> None:
    glossary = (DOCS / "glossary.md").read_text()
    for word in ("DCID", "PTO", "cwnd", "BDP", "Reno", "CBR", "sans-IO", "NAT rebinding"):
        assert f"**{word}" in glossary, word
    extensions = (DOCS / "extensions.md").read_text()
    for switch in QuicExtensions.NAMES:
        assert f"`{switch}`" in extensions, switch


ROOT = DOCS.parent
QUICKSTART = (
    "pip install . && quicmig run all",  # the main job
    "pip install '.[test]' && python -m pytest",  # the tests (.ci/run runs the same)
)


def test_readme_keeps_the_quickstart_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in QUICKSTART:
        assert command in readme, command


def _prose(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _anchors(text: str) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, each space a hyphen."""
    slugs = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", _prose(text), flags=re.MULTILINE):
        slugs.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return slugs


def _links(text: str) -> list[str]:
    links = re.findall(r"\]\(([^)\s]+)\)", _prose(text))
    return [t for t in links if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))]
)
def test_relative_links_reach_a_file_and_its_heading(page: str) -> None:
    source = ROOT / page
    broken = []
    for target in _links(source.read_text()):
        path, _, fragment = target.partition("#")
        dest = source.parent / path if path else source
        found = dest.exists() and (
            not fragment or dest.suffix != ".md" or fragment in _anchors(dest.read_text())
        )
        if not found:
            broken.append(target)
    assert not broken, f"{page}: {broken}"


def test_the_link_check_can_fail() -> None:
    assert _links("[a](x.md#y)\n```\n[d](e.md)\n```\n[f](https://g)") == ["x.md#y"]
    assert _anchors("## A b → `c`\n```\n# not a heading\n```\n") == {"a-b--c"}
