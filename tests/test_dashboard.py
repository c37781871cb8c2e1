"""The published dashboard renders offline: asv publish + asv-tachyon, served on 127.0.0.1, checked in
headless Chromium. CI installs Chromium (.ci/run); elsewhere the test is skipped without it."""

import json
import os
import subprocess
import sys

import pytest

from mfbench.shells import asvrun
from mfbench.report import dashboard

needs_chromium = pytest.mark.skipif(dashboard.chromium() is None and not os.environ.get("CI"),
                                    reason="Chromium is not installed (CI installs the Debian package)")


@needs_chromium
def test_published_dashboard_renders_offline(tmp_path, committed):
    html = tmp_path / "html"
    conf = asvrun._conf_for(asvrun.ROOT, committed / "results" / "asv", html)
    subprocess.run([sys.executable, "-m", "asv", "--config", str(conf), "publish"], check=True, cwd=asvrun.ROOT,
                   capture_output=True)
    dashboard.install(html, committed / "results" / "asv")  # opens on the newest machine there
    assert (html / "regressions.json").exists() and (html / "regressions.xml").exists()
    with dashboard.serve(html) as url:
        page = dashboard.render(url)
    shown, published = dashboard.shown_benchmarks(page.dom, html)
    assert published >= 20 and shown == published
    assert "layer.LayerForward.time_call" in page.dom
    assert any(r.url.startswith(url) and r.by_page for r in page.requests)  # the net log saw the page's own fetches
    assert page.off_machine == []


@needs_chromium
def test_a_page_that_reaches_for_a_cdn_is_caught(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"benchmarks": {"a": {}, "b": {}}}))
    (tmp_path / "index.html").write_text(
        '<html><head><script src="https://cdn.jsdelivr.net/npm/jquery@3.7.1/dist/jquery.min.js"></script></head>'
        "<body>2 benchmarks</body></html>")
    with dashboard.serve(tmp_path) as url:
        page = dashboard.render(url, wait_ms=2000)
    assert page.off_machine == ["https://cdn.jsdelivr.net/npm/jquery@3.7.1/dist/jquery.min.js"]
    assert dashboard.shown_benchmarks(page.dom, tmp_path) == (2, 2)
    assert dashboard.main(["check", str(tmp_path)]) == 1


def test_the_dashboard_opens_on_the_machine_with_the_newest_results(tmp_path):
    """asv lists machines alphabetically and the UI opens on the first: a new machine's results sat behind
    an older machine's empty cards."""
    columns = ["result", "params", "version", "started_at", "duration"]
    for machine, started in (("A-old-gpu", 1000), ("Z-new-cpu", 2000), ("Z-new-cpu", 500)):
        folder = tmp_path / "asv" / machine
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "machine.json").write_text(json.dumps({"machine": machine, "version": 1}))
        (folder / f"{started}-existing.json").write_text(json.dumps(
            {"result_columns": columns, "results": {"layer.T.time_call": [[1.0], [], "v", started, 1.0]}}))
    assert dashboard.newest_machine(tmp_path / "asv") == "Z-new-cpu"
    assert dashboard.newest_machine(tmp_path / "none") is None
    html = tmp_path / "html"
    html.mkdir()
    (html / "index.json").write_text(json.dumps({"params": {"machine": ["A-old-gpu", "B", "Z-new-cpu"]}}))
    dashboard.open_on(html, "Z-new-cpu")
    assert json.loads((html / "index.json").read_text())["params"]["machine"] == ["Z-new-cpu", "A-old-gpu", "B"]
