"""The published dashboard renders offline and opens on data: asv publish + asv-tachyon, served on
127.0.0.1, read in headless Chromium as a user first sees it. CI installs Chromium (.ci/run) and sets CI,
so there the tests fail without it; elsewhere they are skipped."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from mfbench.shells import asvrun
from mfbench.report import dashboard

needs_chromium = pytest.mark.skipif(dashboard.chromium() is None and not os.environ.get("CI"),
                                    reason="Chromium is not installed (CI installs the Debian package)")
H100 = "H100-80GB-HBM3"


def _publish(asv_dir, html):
    conf = asvrun._conf_for(asvrun.ROOT, asv_dir, html)
    subprocess.run([sys.executable, "-m", "asv", "--config", str(conf), "publish"], check=True, cwd=asvrun.ROOT,
                   capture_output=True)
    dashboard.install(html, asv_dir)  # opens on the newest machine there


def _has_data(html, name):
    """Whether the graph the UI opens on (the first of asv's graph_param_list) holds a value of ``name``."""
    env = json.loads((html / "index.json").read_text())["graph_param_list"][0]
    parts = sorted(re.sub(r'[<>:"/\\|?*\x00-\x1f]', "_", f"{k}-{v}") for k, v in env.items())
    path = html.joinpath("graphs", *parts, f"{name}.json")
    points = json.loads(path.read_text()) if path.exists() else []
    return any(v is not None for _, value in points for v in (value if isinstance(value, list) else [value]))


def _h100_results(committed, target, null_first=0):
    """The committed H100 results, with asv's list of benchmarks cut to those they measured (their versions
    as measured, so every one is published): a dashboard whose every card has a value. ``null_first``:
    that many of them, first by name, recorded as failed (no value)."""
    shutil.copytree(committed / "results" / "asv" / H100, target / H100)
    listed = json.loads((committed / "results" / "asv" / "benchmarks.json").read_text())
    measured = {}
    files = sorted((target / H100).glob("*-*.json"), key=lambda p: json.loads(p.read_text())["date"])
    for path in files:
        for name, result in json.loads(path.read_text())["results"].items():
            if name in listed and any(v is not None for v in result[0] or []):
                measured[name] = result[2]  # result_columns: result, params, version, ...
    failed = sorted(measured)[:null_first]
    for path in files:
        data = json.loads(path.read_text())
        for name in failed:
            if name in data["results"]:
                data["results"][name][0] = None
        path.write_text(json.dumps(data))
    benchmarks = {name: {**listed[name], "version": version} for name, version in measured.items()}
    (target / "benchmarks.json").write_text(json.dumps({**benchmarks, "version": listed.get("version", 2)}))
    return sorted(measured)


@needs_chromium
def test_published_dashboard_renders_offline_and_its_cards_are_the_data(tmp_path, committed):
    """The committed results as published: every card of the first screen shows a value exactly where the
    opened machine's graph has one, the page fetches nothing off the machine, and the UI's hints name this
    project's commands. (Whether that first screen shows enough data is the check's verdict below.)"""
    html = tmp_path / "html"
    _publish(committed / "results" / "asv", html)
    view = dashboard.first_view(html)
    assert view.page.off_machine == []
    assert any(r.url.startswith("http://127.0.0.1") and r.by_page for r in view.page.requests)
    assert view.machine == dashboard.newest_machine(committed / "results" / "asv")
    assert len(view.cards) >= 8
    assert [(name, value not in dashboard.NO_VALUE) for name, value in view.cards] == [
        (name, _has_data(html, name)) for name, _ in view.cards]
    scripts = "".join(p.read_text() for p in (html / "assets").glob("*.js"))
    assert ".asv/" not in scripts and "python -m mfbench.report.dashboard serve results/html" in scripts


@needs_chromium
def test_the_check_passes_when_the_first_screen_shows_data(tmp_path, committed, capsys):
    measured = _h100_results(committed, tmp_path / "asv")
    assert len(measured) >= 12  # more than a first screen of cards
    _publish(tmp_path / "asv", tmp_path / "html")
    assert dashboard.main(["check", str(tmp_path / "html")]) == 0
    out = capsys.readouterr().out
    assert f"first screen: machine {H100}, 12 of 12 cards with a value; Explore of {measured[0]}: a graph" in out


@needs_chromium
def test_the_check_fails_when_most_first_screen_cards_are_empty(tmp_path, committed, capsys):
    """7 of the first 12 benchmarks failed on the machine: their cards show "—"."""
    measured = _h100_results(committed, tmp_path / "asv", null_first=7)
    _publish(tmp_path / "asv", tmp_path / "html")
    assert dashboard.main(["check", str(tmp_path / "html")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mfbench: dashboard check failed: the first view shows no data: 5 of 12 cards on the first "
                   f"screen (machine {H100}) have a value; none: {', '.join(measured[:4])}, ..."]


@needs_chromium
def test_the_check_fails_when_the_first_machine_has_no_results(tmp_path, committed, capsys):
    """A newer bench on another machine whose every benchmark failed: the dashboard does not open on it,
    and a page that does is caught, with Explore's hint naming this project's folder."""
    _h100_results(committed, tmp_path / "asv")
    newest = max((tmp_path / "asv" / H100).glob("*-*.json"), key=lambda p: json.loads(p.read_text())["date"])
    data = json.loads(newest.read_text())
    data["params"]["machine"] = "cpu-failed"
    column = data["result_columns"].index("started_at")
    for result in data["results"].values():
        result[0], result[column] = None, result[column] + 10**9
    (tmp_path / "asv" / "cpu-failed").mkdir()
    (tmp_path / "asv" / "cpu-failed" / "machine.json").write_text(json.dumps({"machine": "cpu-failed", "version": 1}))
    (tmp_path / "asv" / "cpu-failed" / newest.name).write_text(json.dumps(data))
    assert dashboard.newest_machine(tmp_path / "asv") == H100
    html = tmp_path / "html"
    _publish(tmp_path / "asv", html)
    dashboard.open_on(html, "cpu-failed")  # as install did before it skipped machines without a value
    assert dashboard.main(["check", str(html)]) == 1
    out, err = capsys.readouterr()
    assert "the first view shows no data: 0 of 12 cards on the first screen (machine cpu-failed)" in err
    assert "No graph data" in out and "nox -s bench" in out and ".asv/html" not in out


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
    """asv sorts machines by name and the UI opens on the first of its graph_param_list: a new machine's
    results sat behind an older machine's empty cards. A machine whose every benchmark failed has none."""
    columns = ["result", "params", "version", "started_at", "duration"]
    for machine, started, value in (("A-old-gpu", 1000, 1.0), ("Z-new-cpu", 2000, 1.0), ("Z-new-cpu", 500, 1.0),
                                    ("ZZ-failed", 3000, None), ("ZZZ-failed-each", 3000, [None, None])):
        folder = tmp_path / "asv" / machine
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "machine.json").write_text(json.dumps({"machine": machine, "version": 1}))
        (folder / f"{started}-existing.json").write_text(json.dumps(
            {"result_columns": columns, "results": {"layer.T.time_call": [value, [], "v", started, 1.0]}}))
    assert dashboard.newest_machine(tmp_path / "asv") == "Z-new-cpu"
    assert dashboard.newest_machine(tmp_path / "none") is None
    html = tmp_path / "html"
    html.mkdir()
    envs = [{"machine": m, "python": "p"} for m in ("A-old-gpu", "B", "Z-new-cpu")]
    (html / "index.json").write_text(json.dumps({"params": {"machine": ["A-old-gpu", "B", "Z-new-cpu"]},
                                                 "graph_param_list": envs}))
    dashboard.open_on(html, "Z-new-cpu")
    index = json.loads((html / "index.json").read_text())
    assert index["params"]["machine"] == ["Z-new-cpu", "A-old-gpu", "B"]
    assert [env["machine"] for env in index["graph_param_list"]] == ["Z-new-cpu", "A-old-gpu", "B"]
