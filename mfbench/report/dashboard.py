"""The offline dashboard: asv's published data under the asv-tachyon UI, which needs no CDN.

    python -m mfbench.report.dashboard install results/html     # after `asv publish`
    python -m mfbench.report.dashboard serve results/html [--port 8765]
    python -m mfbench.report.dashboard check results/html [--screenshot FILE]

``check`` serves the site on 127.0.0.1, renders it in headless Chromium with a network log, and fails
unless the page shows the benchmarks and every request stayed on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--no-pings", "--disable-domain-reliability", "--disable-extensions", "--disable-default-apps",
                  "--disable-features=NetworkTimeServiceQuerying,AutofillServerCommunication,OptimizationHints"]
# Chromium still makes a few requests of its own (component updates, account list) that no flag stops.
# Name resolution fails for every host but this one, so none of them leaves the machine; the net log
# keeps each attempt, with who started it.
NO_EGRESS = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


def install(html_dir: Path, asv_results: Path | None = None) -> None:
    """The asv-tachyon UI over a published ``html_dir``, opening on the machine with the newest results in
    ``asv_results`` (default: the ``asv`` folder beside ``html_dir``, as asv.conf.json has them)."""
    from asv_tachyon.cli import cmd_install

    cmd_install(Path(html_dir), backup=True)
    newest = newest_machine(Path(asv_results) if asv_results else Path(html_dir).parent / "asv")
    if newest:
        open_on(Path(html_dir), newest)


def newest_machine(asv_results: Path) -> str | None:
    """The machine whose asv results were measured last (asv's started_at of each benchmark), or None."""
    latest: dict[str, int] = {}
    for path in asv_results.glob("*/*.json"):
        if path.name == "machine.json":
            continue
        try:
            data = json.loads(path.read_text())
            column = data["result_columns"].index("started_at")
            started = [r[column] for r in data["results"].values() if len(r) > column and r[column]]
        except (ValueError, KeyError, TypeError, AttributeError):  # not a result file of this asv
            continue
        if started:
            latest[path.parent.name] = max(latest.get(path.parent.name, 0), max(started))
    return max(latest, key=latest.get) if latest else None


def open_on(html_dir: Path, machine: str) -> None:
    """List ``machine`` first in the published index: the UI opens on the first machine it lists (asv
    lists them alphabetically, so a new machine's results sat behind an older one's empty cards)."""
    index = html_dir / "index.json"
    data = json.loads(index.read_text())
    machines = data.get("params", {}).get("machine")
    if isinstance(machines, list) and machine in machines:
        data["params"]["machine"] = [machine] + [m for m in machines if m != machine]
        index.write_text(json.dumps(data))


@contextlib.contextmanager
def serve(html_dir: Path, port: int = 0) -> Iterator[str]:
    """Serve ``html_dir`` on 127.0.0.1 in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt: str, *args) -> None:
        pass


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@dataclass(frozen=True)
class Request:
    url: str
    by_page: bool  # started by a page (it has an origin), not by the browser itself

    @property
    def off_machine(self) -> bool:
        u = urlparse(self.url)
        return u.scheme in ("http", "https", "ws", "wss") and u.hostname not in ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class PageCheck:
    dom: str
    requests: list[Request]
    screenshot: Path | None

    @property
    def off_machine(self) -> list[str]:
        """Off-machine URLs the page asked for: what the check fails on."""
        return sorted({r.url for r in self.requests if r.off_machine and r.by_page})

    @property
    def browser_background(self) -> list[str]:
        """Off-machine URLs Chromium itself tried (updates, accounts); name resolution refused them."""
        return sorted({r.url for r in self.requests if r.off_machine and not r.by_page})


def render(url: str, screenshot: Path | None = None, wait_ms: int = 8000) -> PageCheck:
    """Render ``url`` in headless Chromium; return its DOM and every request made (from the net log)."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("Chromium is not installed (Debian package 'chromium')")
    with tempfile.TemporaryDirectory() as tmp:
        netlog = Path(tmp) / "netlog.json"
        base = [browser, *CHROMIUM_FLAGS, NO_EGRESS, f"--user-data-dir={tmp}/profile", f"--log-net-log={netlog}",
                f"--virtual-time-budget={wait_ms}", "--window-size=1400,1000"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        requests = _netlog_requests(netlog)
        if screenshot is not None:
            screenshot = Path(screenshot).resolve()
            subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
            requests += _netlog_requests(netlog)
    return PageCheck(dom, requests, screenshot)


def shown_benchmarks(dom: str, html_dir: Path) -> tuple[int, int]:
    """(benchmarks the page says it shows, benchmarks asv published): the page renders the data only
    if the first is the second."""
    published = json.loads((Path(html_dir) / "index.json").read_text()).get("benchmarks", {})
    match = re.search(r"(\d+)\s*benchmarks", re.sub(r"<[^>]+>", " ", dom))
    return (int(match.group(1)) if match else 0), len(published)


def _netlog_requests(path: Path) -> list[Request]:
    """Every URL request in a Chromium net log, with whether a page started it (a truncated log is read
    as far as it goes)."""
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    try:
        events = json.loads(text).get("events", [])
    except ValueError:  # Chromium killed mid-write: close the events list after the last whole event
        text = text.rstrip().rstrip(",")
        if not text.endswith("}"):
            text = text.rsplit("}", 1)[0] + "}"
        try:
            events = json.loads(text + "]}").get("events", [])
        except ValueError:
            return []
    urls: dict[object, str] = {}
    initiators: dict[object, str] = {}
    for e in events:
        params = e.get("params") if isinstance(e.get("params"), dict) else {}
        source = (e.get("source") or {}).get("id")
        if "url" in params:
            urls.setdefault(source, params["url"])
        if "initiator" in params:
            initiators.setdefault(source, params["initiator"])
    return [Request(url, initiators.get(source, "not an origin") != "not an origin") for source, url in urls.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfbench.report.dashboard", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("install", "serve", "check"):
        p = sub.add_parser(name)
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
    with serve(args.html_dir) as url:
        page = render(url, args.screenshot)
    shown, published = shown_benchmarks(page.dom, args.html_dir)
    print(f"{len(page.requests)} requests; the page asked for {len(page.off_machine)} off this machine; "
          f"it shows {shown} of {published} published benchmarks")
    for u in page.off_machine:
        print(f"  off-machine request by the page: {u}")
    if page.browser_background:
        print(f"  Chromium's own background requests, refused by name resolution: {len(page.browser_background)}")
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")
    return 1 if page.off_machine or shown != published or published == 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
