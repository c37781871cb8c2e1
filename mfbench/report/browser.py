"""Headless Chromium on a page served from this machine: the rendered DOM and every request, from the
net log, with whether the page or the browser itself made it."""

from __future__ import annotations

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

SCREEN = (1400, 1000)  # the window: a laptop's browser, whose first screen the dashboard check reads
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--no-pings", "--disable-domain-reliability", "--disable-extensions", "--disable-default-apps",
                  "--disable-features=NetworkTimeServiceQuerying,AutofillServerCommunication,OptimizationHints"]
# Chromium still makes a few requests of its own (component updates, account list) that no flag stops.
# Name resolution fails for every host but this one, so none of them leaves the machine; the net log
# keeps each attempt, with who started it.
NO_EGRESS = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"



@contextlib.contextmanager
def serve(html_dir: Path, port: int = 0, extra: dict[str, str] | None = None) -> Iterator[str]:
    """Serve ``html_dir`` on 127.0.0.1 in a thread, plus ``extra`` pages by path; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(html_dir), extra=extra or {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, extra: dict[str, str], **kwargs) -> None:
        self.extra = extra
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        page = self.extra.get(urlparse(self.path).path)
        if page is None:
            return super().do_GET()
        body = page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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
                f"--virtual-time-budget={wait_ms}", f"--window-size={SCREEN[0]},{SCREEN[1]}"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        requests = _netlog_requests(netlog)
        if screenshot is not None:
            screenshot = Path(screenshot).resolve()
            subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
            requests += _netlog_requests(netlog)
    return PageCheck(dom, requests, screenshot)


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
