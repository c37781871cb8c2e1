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
    dashboard.install(html)
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
