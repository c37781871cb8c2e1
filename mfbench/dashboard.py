"""The offline dashboard: asv's published data under the asv-tachyon UI, which needs no CDN.

    python -m mfbench.dashboard install results/html     # after `asv publish`
    python -m mfbench.dashboard serve results/html [--port 8765]
    python -m mfbench.dashboard check results/html [--screenshot FILE]

``check`` serves the site on 127.0.0.1, renders it in headless Chromium with a network log, and fails
unless the page shows the benchmarks and every request stayed on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def install(html_dir: Path) -> None:
    from asv_tachyon.cli import cmd_install

    cmd_install(Path(html_dir), backup=True)


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
class PageCheck:
    dom: str
    requested: list[str]
    off_machine: list[str]
    screenshot: Path | None


def render(url: str, screenshot: Path | None = None, wait_ms: int = 8000) -> PageCheck:
    """Render ``url`` in headless Chromium; return its DOM and every URL it asked for (from the net log)."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("Chromium is not installed (Debian package 'chromium')")
    with tempfile.TemporaryDirectory() as tmp:
        netlog = Path(tmp) / "netlog.json"
        base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile", f"--log-net-log={netlog}",
                f"--virtual-time-budget={wait_ms}", "--window-size=1400,1000"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        requested = _netlog_urls(netlog)
        if screenshot is not None:
            screenshot = Path(screenshot).resolve()
            subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
            requested += _netlog_urls(netlog)
    off = sorted({u for u in requested if urlparse(u).scheme in ("http", "https", "ws", "wss")
                  and urlparse(u).hostname not in ("127.0.0.1", "localhost")})
    return PageCheck(dom, sorted(set(requested)), off, screenshot)


def _netlog_urls(path: Path) -> list[str]:
    """URLs of every request in a Chromium net log (a truncated log is read as far as it goes)."""
    if not path.exists():
        return []
    text = path.read_text(errors="replace").rstrip().rstrip(",")
    if not text.endswith("}"):
        text = text.rsplit("}", 1)[0] + "}"
    if not text.rstrip().endswith("]}"):
        text += "]}"
    try:
        events = json.loads(text).get("events", [])
    except ValueError:
        return []
    return [e["params"]["url"] for e in events if isinstance(e.get("params"), dict) and "url" in e["params"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfbench.dashboard", description=__doc__.splitlines()[0])
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
        print(f"mfbench: error: no index.json in {args.html_dir}: run `asv publish` (or `nox -s publish`) first")
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
    print(f"{len(page.requested)} requests, {len(page.off_machine)} off this machine")
    for u in page.off_machine:
        print(f"  off-machine request: {u}")
    return 1 if page.off_machine else 0


if __name__ == "__main__":
    raise SystemExit(main())
