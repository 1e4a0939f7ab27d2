"""The HTML report, opened in a real browser: headless Chromium, driven over the DevTools pipe.

`quicmig run network-switch --html` writes the page and `--json` the Result it was made from.
Chromium loads the page from a file with the network watched: every request it makes is the
page itself (it loads nothing: no script, style, font or image from anywhere), nothing is
logged as an error, and the script draws every chart. From the rendered DOM, each migration's
numbers equal the Result's, its sequence diagram holds the PATH_CHALLENGE and PATH_RESPONSE
the server's tracker recorded, at their times, on the new address. A screenshot of the whole
page is left in the test's folder.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from quicmig.cli import main
from quicmig.interop.chromium_client import Browser, DevTools, browser_flags

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = os.access(CHROMIUM, os.X_OK)
TIMEOUT = 40.0  # seconds for the page, once Chromium has answered on its pipe
FIELDS = (  # of each migration: shown on the page with the Result's value
    "detected_at",
    "detection_delay",
    "validation_rtt",
    "validated_at",
    "interruption",
    "lost_packets",
    "retransmitted_bytes",
    "challenges",
)

# What the page shows, read from the DOM once the script has run.
COLLECT = """(() => {
  const out = {charts: [], migrations: [], title: document.title};
  document.querySelectorAll("div.chart").forEach((box) => out.charts.push({
    id: box.id, rendered: box.getAttribute("data-rendered"),
    paths: box.querySelectorAll("path.series").length,
    strips: box.querySelectorAll("g.strip rect").length,
    labels: Array.from(box.querySelectorAll("text.mklabel")).map((t) => t.textContent),
    view: box.getAttribute("data-view")}));
  document.querySelectorAll("section.migration[data-migration]").forEach((sec) => {
    const numbers = {};
    sec.querySelectorAll("dl.numbers [data-field]").forEach((el) => {
      numbers[el.getAttribute("data-field")] = {value: el.getAttribute("data-value"),
                                                 text: el.textContent};
    });
    const rows = Array.from(sec.querySelectorAll("table.seq > tbody > tr")).map((tr) => ({
      at: tr.getAttribute("data-at"), frames: tr.getAttribute("data-frames"),
      packets: tr.getAttribute("data-packets"), cls: tr.className,
      cells: Array.from(tr.children).map((td) => td.textContent)}));
    out.migrations.push({index: sec.getAttribute("data-migration"), numbers, rows,
                         chart: !!sec.querySelector("div.chart[data-rendered='1'] svg")});
  });
  out.verdict = document.querySelector("[data-field=verdict]").getAttribute("data-value");
  out.command = document.querySelector("[data-field=command]").textContent;
  out.checks = Array.from(document.querySelectorAll("tr[data-check]")).map(
    (tr) => [tr.getAttribute("data-check"), tr.getAttribute("data-state")]);
  return out;
})()"""
ZOOM = """(() => {
  const button = document.querySelector("button[data-zoom$='timeline-chart']");
  button.click();
  const folded = document.querySelector("table.seq details");
  folded.open = true;
  return {view: document.getElementById(button.getAttribute("data-zoom")).getAttribute("data-view"),
          from: button.getAttribute("data-from"), to: button.getAttribute("data-to"),
          expanded: folded.querySelectorAll("tr").length};
})()"""


def _flags(profile: Path) -> list[str]:
    return [*browser_flags(profile), "--window-size=1280,900", "about:blank"]


async def _open(page: Path, folder: Path) -> dict[str, Any]:
    """Load `page` in Chromium; return the DOM's findings, the requests, errors, screenshot."""
    async with Browser(CHROMIUM, _flags(folder / "profile"), folder / "chromium.log") as devtools:
        return await asyncio.wait_for(_inspect(devtools, page, folder), TIMEOUT)


async def _inspect(devtools: DevTools, page: Path, folder: Path) -> dict[str, Any]:
    requests: list[str] = []
    errors: list[str] = []
    loaded = asyncio.Event()

    def on_event(method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            errors.append(json.dumps(params["exceptionDetails"])[:300])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning"):
            errors.append(json.dumps(params.get("args"))[:300])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(params["entry"].get("text", ""))
        elif method == "Page.loadEventFired":
            loaded.set()

    devtools.on_event = on_event
    target = await devtools.send("Target.createTarget", {"url": "about:blank"})
    attached = await devtools.send(
        "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
    )
    session = attached["sessionId"]
    for domain in ("Network", "Page", "Runtime", "Log"):
        await devtools.send(f"{domain}.enable", session=session)
    await devtools.send("Page.navigate", {"url": page.as_uri()}, session)
    await loaded.wait()

    async def evaluate(expression: str) -> Any:
        answer = await devtools.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session
        )
        assert "exceptionDetails" not in answer, answer
        return answer["result"]["value"]

    dom = await evaluate(COLLECT)
    shot = await devtools.send(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session
    )
    (folder / "report.png").write_bytes(base64.b64decode(shot["data"]))
    zoomed = await evaluate(ZOOM)
    return {"dom": dom, "zoomed": zoomed, "requests": requests, "errors": errors}


@pytest.mark.skipif(not HAVE_CHROMIUM, reason="needs Debian's chromium package")
def test_network_switch_report_in_chromium(tmp_path: Path) -> None:
    page, saved = tmp_path / "network-switch.html", tmp_path / "network-switch.json"
    argv = ["run", "network-switch", "--html", str(page), "--json", str(saved), "-q"]
    assert main(argv) == 1  # failed, as this scenario documents for stock aioquic
    result = json.loads(saved.read_text())
    seen = asyncio.run(_open(page, tmp_path))
    dom = seen["dom"]

    assert seen["requests"] == [page.as_uri()], "the page must load nothing but itself"
    assert seen["errors"] == []
    assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG")
    assert dom["verdict"] == result["verdict"] == "failed"
    assert dom["command"] == "quicmig " + " ".join(argv) == result["command"]
    assert dom["checks"] == [[c["name"], c["state"]] for c in result["checks"]]
    # Every chart drawn: the timeline and one zoom per migration, each with its three series.
    assert len(dom["charts"]) == 1 + len(result["migrations"])
    assert all(c["rendered"] == "1" and c["paths"] == 3 and c["strips"] >= 2 for c in dom["charts"])
    assert len(dom["migrations"]) == len(result["migrations"]) == 1
    for shown, mig in zip(dom["migrations"], result["migrations"], strict=True):
        assert shown["chart"]
        numbers = shown["numbers"]
        for field in FIELDS:
            assert json.loads(numbers[field]["value"]) == mig[field], field
        assert numbers["validation_rtt"]["text"] == f"{mig['validation_rtt'] * 1e3:.1f} ms"
        assert numbers["detection_delay"]["text"] == f"{mig['detection_delay'] * 1e3:.1f} ms"
        assert numbers["interruption"]["text"] == f"{mig['interruption'] * 1e3:.1f} ms"
        assert numbers["lost_packets"]["text"] == str(mig["lost_packets"])
        # The diagram: the server's PATH_CHALLENGE to the new address when the tracker saw it
        # go out, the client's PATH_RESPONSE from there when the path was validated.
        rows = shown["rows"]
        challenge = [r for r in rows if "path_challenge" in (r["frames"] or "")]
        response = [r for r in rows if "path_response" in (r["frames"] or "")]
        assert [float(r["at"]) for r in challenge] == [mig["challenge_sent_at"]]
        assert [float(r["at"]) for r in response] == [mig["validated_at"]]
        for row in (*challenge, *response):
            assert mig["new_peer"] in row["cells"]
        (data,) = [c[-1].split("PATH_CHALLENGE(")[1][:8] for c in (r["cells"] for r in challenge)]
        assert f"PATH_RESPONSE({data})" in response[0]["cells"][-1]
        change = [r for r in rows if "change" in r["cls"].split()]
        assert [float(r["at"]) for r in change] == [mig["network_change_at"]]
        assert any(int(r["packets"] or 0) > 1 for r in rows)  # folded runs, expandable
    # Zooming the timeline onto the migration redraws it for that window.
    zoomed = seen["zoomed"]
    assert zoomed["view"] == f"{zoomed['from']} {zoomed['to']}"
    assert zoomed["expanded"] > 1


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.sources: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.sources += [v or "" for k, v in attrs if k in ("src", "href") and tag != "a"]


def test_report_of_saved_results_works_without_packets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "nr.json"
    assert main(["run", "nat-rebinding", "--json", str(saved), "--with-series", "-q"]) == 0
    page = tmp_path / "nr.html"
    assert main(["report", str(saved), str(saved), "-o", str(page)]) == 0
    assert "2 results (2 with time series, 0 with the packets" in capsys.readouterr().out
    parser = _Text()
    parser.feed(page.read_text())
    text = " ".join(parser.text)
    assert parser.sources == []  # no <script src>, <link href>, <img src>
    result = json.loads(saved.read_text())
    (mig,) = result["migrations"]
    assert f"{mig['validation_rtt'] * 1e3:.1f} ms" in text
    assert "No packet log in this result" in text
    assert main(["report", str(tmp_path / "none.json"), "-o", str(page)]) == 2
    assert main(["report", str(saved), "-o", str(tmp_path / "x.txt")]) == 2
