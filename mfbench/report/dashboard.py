"""The offline dashboard: asv's published data under the asv-tachyon UI, which needs no CDN.

    python -m mfbench.report.dashboard install results/html     # after `asv publish`
    python -m mfbench.report.dashboard serve results/html [--port 8765]
    python -m mfbench.report.dashboard check results/html [--screenshot FILE]

``check`` serves the site on 127.0.0.1, renders it in headless Chromium with a network log, and fails
unless every request stayed on this machine and the first view shows data: the page lists every published
benchmark, at least half of the cards on its first screen show a value, and the graph of the first of those
cards draws.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from mfbench.report.browser import SCREEN, PageCheck, Request, chromium, render, serve

__all__ = ["install", "newest_machine", "open_on", "first_view", "FirstView", "shown_benchmarks", "main",
           "PageCheck", "Request", "chromium", "render", "serve"]


def install(html_dir: Path, asv_results: Path | None = None) -> None:
    """The asv-tachyon UI over a published ``html_dir``, opening on the machine with the newest results in
    ``asv_results`` (default: the ``asv`` folder beside ``html_dir``, as asv.conf.json has them)."""
    from asv_tachyon.cli import cmd_install

    cmd_install(Path(html_dir), backup=True)
    _project_hints(Path(html_dir))
    newest = newest_machine(Path(asv_results) if asv_results else Path(html_dir).parent / "asv")
    if newest:
        open_on(Path(html_dir), newest)


# The UI's empty states tell how to make the data with asv-tachyon's own paths (.asv/html); this project's
# commands write results/asv and results/html.
HINTS = {"no-index": ["nox -s publish", "python -m mfbench.report.dashboard serve results/html"],
         "empty-graphs": ["nox -s bench", "nox -s publish", "python -m mfbench.report.dashboard serve results/html"],
         "no-regressions": ["nox -s publish"]}


def _project_hints(html_dir: Path) -> None:
    """Point the UI's hints at this project's commands and folders, in the installed copy of its script."""
    for script in (html_dir / "assets").glob("*.js"):
        text = script.read_text(encoding="utf-8")
        for kind, cmds in HINTS.items():
            text = re.sub(rf'("{kind}":\{{title:"[^"]*",body:"[^"]*",cmds:)\[[^\]]*\]',
                          lambda m: m.group(1) + json.dumps(cmds, separators=(",", ":")), text)
        text = text.replace(".asv/results/<machine>/", "results/asv/<machine>/")
        script.write_text(text, encoding="utf-8")
        if ".asv/" in text:
            print(f"mfbench: warning: {script.name} still names asv-tachyon's .asv/ folders (a new asv-tachyon?); "
                  "its hints do not fit this project", file=sys.stderr)


def newest_machine(asv_results: Path) -> str | None:
    """The machine whose asv results were measured last (asv's started_at of each benchmark that gave a
    value; a machine whose every benchmark failed has nothing to show), or None."""
    latest: dict[str, int] = {}
    for path in asv_results.glob("*/*.json"):
        if path.name == "machine.json":
            continue
        try:
            data = json.loads(path.read_text())
            value, column = (data["result_columns"].index(c) for c in ("result", "started_at"))
            started = [r[column] for r in data["results"].values()
                       if len(r) > max(value, column) and r[column] and _has_value(r[value])]
        except (ValueError, KeyError, TypeError, AttributeError):  # not a result file of this asv
            continue
        if started:
            latest[path.parent.name] = max(latest.get(path.parent.name, 0), max(started))
    return max(latest, key=latest.get) if latest else None


def _has_value(result: object) -> bool:
    return any(v is not None for v in result) if isinstance(result, list) else result is not None


def open_on(html_dir: Path, machine: str) -> None:
    """List ``machine`` first in the published index. The UI opens on the first of asv's graph_param_list
    (one entry per machine and environment) and lists the machines in the selector in params' order; asv
    sorts both alphabetically, so a new machine's results sat behind an older one's empty cards."""
    index = html_dir / "index.json"
    data = json.loads(index.read_text())
    machines = data.get("params", {}).get("machine")
    if isinstance(machines, list) and machine in machines:
        data["params"]["machine"] = [machine] + [m for m in machines if m != machine]
    if isinstance(data.get("graph_param_list"), list):
        data["graph_param_list"].sort(key=lambda env: not (isinstance(env, dict) and env.get("machine") == machine))
    index.write_text(json.dumps(data))


def shown_benchmarks(dom: str, html_dir: Path) -> tuple[int, int]:
    """(benchmarks the page says it shows, benchmarks asv published): the page renders the data only
    if the first is the second."""
    published = json.loads((Path(html_dir) / "index.json").read_text()).get("benchmarks", {})
    match = re.search(r"(\d+)\s*benchmarks", re.sub(r"<[^>]+>", " ", dom))
    return (int(match.group(1)) if match else 0), len(published)


MIN_WITH_VALUE = 0.5  # at least half the first screen's cards show a value, or the view shows no data
PROBE = "/__mfbench_first_view__.html"
# The dashboard in a same-origin frame of the first screen's size; once its cards stop changing (each has
# fetched its graph) the script records them, opens the first card with a value (or the first card) in
# Explore as a user would, waits for its graph the same way, and writes all of it into the page, which
# --dump-dom returns.
# Chromium's virtual time stands still while a fetch is pending, so the waits are of page time, bounded.
PROBE_PAGE = r"""<!doctype html><meta charset="utf-8"><body style="margin:0">
<iframe id="page" src="index.html" style="border:0;display:block;width:%dpx;height:%dpx"></iframe>
<pre id="first-view"></pre><script>
const frame = document.getElementById("page"), sleep = ms => new Promise(done => setTimeout(done, ms));
async function settled(read, ready, limit) {
  let last = null, same = 0, value = null;
  for (let t = 0; t < limit && same < 1000; t += 200) {
    await sleep(200);
    value = read(); const now = JSON.stringify(value);
    same = now === last && ready(value) ? same + 200 : 0; last = now;
  }
  return {...value, settled: same >= 1000};
}
function cards() {
  const doc = frame.contentDocument, height = frame.contentWindow.innerHeight;
  return [...doc.querySelectorAll(".card.tile")].map(tile => {
    const foot = tile.querySelector(".foot");
    return {tile, name: tile.dataset.bench, value: foot && foot.firstChild ? foot.firstChild.textContent.trim() : "",
            first_screen: !!foot && foot.getBoundingClientRect().bottom <= height};
  });
}
function overview() {
  const doc = frame.contentDocument;
  const label = [...doc.querySelectorAll("label.filter")].find(l => l.textContent.trim().startsWith("machine"));
  const select = label && label.querySelector("select");
  return {machine: select ? select.value : null,
          cards: cards().filter(c => c.first_screen).map(c => [c.name, c.value]),
          text: doc.body ? doc.body.innerText : ""};
}
function explore() {
  const chart = frame.contentDocument.querySelector(".chart-card"), text = chart ? chart.innerText.trim() : "";
  return {graph: !!chart && !!chart.querySelector("canvas"), text: text.slice(0, 200)};
}
frame.addEventListener("load", async () => {
  const view = {overview: await settled(overview, v => v.cards.length > 0, 8000), explore: null};
  const screen = cards().filter(c => c.first_screen);
  const open = screen.find(c => c.value && c.value !== "\u2014") || screen[0];
  if (open) {
    open.tile.click();
    view.explore = {bench: open.name, ...await settled(explore, v => v.text && !v.text.startsWith("Loading"), 5000)};
  }
  document.getElementById("first-view").textContent = JSON.stringify(view);
});
</script>""" % SCREEN


NO_VALUE = ("", "—")  # a card's foot without a value: the UI writes "—"


@dataclass(frozen=True)
class FirstView:
    """What the dashboard shows on its first screen, read from the rendered page."""
    page: PageCheck
    view: dict | None  # None: the page did not finish within the render's budget

    @property
    def cards(self) -> list[tuple[str, str]]:
        """(benchmark, the value its card shows) of each card on the first screen."""
        return [(name, value) for name, value in (self.view or {}).get("overview", {}).get("cards", [])]

    @property
    def with_value(self) -> list[str]:
        return [name for name, value in self.cards if value not in NO_VALUE]

    @property
    def machine(self) -> str | None:
        return (self.view or {}).get("overview", {}).get("machine")

    @property
    def explore(self) -> dict:
        """The Explore view of the first card with a value (or of the first card): bench, graph, text."""
        return (self.view or {}).get("explore") or {}

    def problems(self, html_dir: Path) -> list[str]:
        """One line for each reason the first view of ``html_dir`` shows no data (none: it shows data)."""
        if self.view is None:
            return ["the page did not finish loading within the render's budget"]
        overview, problems = self.view["overview"], []
        shown, published = shown_benchmarks(overview.get("text", ""), html_dir)
        if shown != published or published == 0:
            problems.append(f"the page lists {shown} of {published} published benchmarks")
        if not self.cards:
            problems.append("the first view shows no data: no benchmark card on the first screen")
        elif not overview.get("settled"):
            problems.append("the first screen's cards were still changing when the wait ran out")
        if self.cards and len(self.with_value) < MIN_WITH_VALUE * len(self.cards):
            empty = [name for name, _ in self.cards if name not in self.with_value]
            problems.append(f"the first view shows no data: {len(self.with_value)} of {len(self.cards)} cards on "
                            f"the first screen (machine {self.machine}) have a value; none: {', '.join(empty[:4])}"
                            + (", ..." if len(empty) > 4 else ""))
        explore = self.explore
        if explore.get("bench") in self.with_value and not (explore.get("graph") and explore.get("settled")):
            problems.append(f"Explore of {explore['bench']} draws no graph: {explore.get('text', '')[:80]!r}")
        return problems


def first_view(html_dir: Path, screenshot: Path | None = None) -> FirstView:
    """Render the dashboard in ``html_dir`` as a user first sees it, in headless Chromium."""
    with serve(html_dir, extra={PROBE: PROBE_PAGE}) as url:
        page = render(url + PROBE.lstrip("/"), wait_ms=20000)
        if screenshot is not None:
            page = PageCheck(page.dom, page.requests + render(url, screenshot).requests, Path(screenshot).resolve())
    match = re.search(r'<pre id="first-view">(.*?)</pre>', page.dom, re.S)
    view = json.loads(html.unescape(match.group(1))) if match and match.group(1).strip() else None
    return FirstView(page, view)


COMMANDS = {"install": "put the asv-tachyon UI over asv's published data, opening on the newest machine",
            "serve": "serve the dashboard on 127.0.0.1",
            "check": "render the dashboard in headless Chromium; fail (exit 1) if it reaches off this machine or "
                     "its first screen shows no data"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfbench.report.dashboard", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, about in COMMANDS.items():
        p = sub.add_parser(name, help=about, description=about)
        p.add_argument("html_dir", type=Path)
        if name == "serve":
            p.add_argument("--port", type=int, default=8765)
        if name == "check":
            p.add_argument("--screenshot", type=Path)
    args = parser.parse_args(argv)
    if not (args.html_dir / "index.json").exists():
        print(f"mfbench: error: no index.json in {args.html_dir}: run `asv publish` (or `nox -s publish`) first",
              file=sys.stderr)
        return 2
    if args.command == "check" and chromium() is None:
        print("mfbench: error: the check renders the page in headless Chromium, which is not installed here "
              "(Debian package 'chromium')", file=sys.stderr)
        return 2
    if args.command == "install":
        install(args.html_dir)
        return 0
    if args.command == "serve":
        with serve(args.html_dir, args.port) as url:
            print(f"serving {args.html_dir} at {url} (Ctrl-C to stop)")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
        return 0
    return _check(args.html_dir, args.screenshot)


def _check(html_dir: Path, screenshot: Path | None) -> int:
    view = first_view(html_dir, screenshot)
    page = view.page
    print(f"{len(page.requests)} requests; the page asked for {len(page.off_machine)} off this machine")
    for u in page.off_machine:
        print(f"  off-machine request by the page: {u}")
    if page.browser_background:
        print(f"  Chromium's own background requests, refused by name resolution: {len(page.browser_background)}")
    if view.cards:
        explore = view.explore
        print(f"first screen: machine {view.machine}, {len(view.with_value)} of {len(view.cards)} cards with a "
              f"value; Explore of {explore.get('bench')}: "
              + ("a graph" if explore.get("graph") else f"no graph ({explore.get('text', '')[:100]!r})"))
    if screenshot:
        print(f"screenshot: {screenshot}")
    problems = view.problems(html_dir)
    for problem in problems:
        print(f"mfbench: dashboard check failed: {problem}", file=sys.stderr)
    return 1 if page.off_machine or problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
