"""The kernel alert (mfbench.shells.alert): its decision rule, fail-closed outcomes and reports without a
benchmark run, then whole alerts on the CPU: the Triton kernels under the interpreter, micro preset, 64
tokens, forward only, CPU time per call (the GPU figures are in README "Alerts", from an H200).

Heads are commits on a clone of this checkout: a planted slowdown (tests/plant.py: the forward kernel
gathers a share of its tables twice), a comment-only kernel change, a Triton forward that raises, and an
embedding_bag provider that reads the wrong row.
"""

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from mfbench.shells import alert, alert_rule
from mfbench.core import providers

from .plant import plant_slowdown

RUNS = 10
slow = pytest.mark.skipif(os.environ.get("MFBENCH_SLOW_TESTS") != "1",
                          reason="twenty whole alerts (about 20 min on 2 cores): set MFBENCH_SLOW_TESTS=1")
ENV = {"TRITON_INTERPRET": "1",
       # one thread: idle OpenMP workers spin, and their spinning is CPU time of the process too
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       # the accuracy check of the committed snapshot: a few sequences, and no torch.compile
       "MFBENCH_ALERT_ACCURACY_SEQUENCES": "4", "MFBENCH_SKIP_COMPILE": "1"}
# The CPU stand-in for the default GPU matrix, as environment variables so CI job scripts run unchanged:
# what the planted slowdown touches (the Triton backward takes seconds a call under the interpreter): the
# gather kernel's forward, which takes calls above the decode kernel's DECODE_MAX_TOKENS (64).
ALERT_ENV = {"MFBENCH_ALERT_PROVIDERS": "triton", "MFBENCH_ALERT_SEQS": "72", "MFBENCH_ALERT_DIRECTIONS": "forward",
             "MFBENCH_ALERT_PRESET": "micro"}
SCHEMA = json.loads(alert.SCHEMA_FILE.read_text())


def validate(report: dict) -> None:
    # imported here: `pytest -m gpu` collects this file on GPU images that lack jsonschema
    pytest.importorskip("jsonschema").validate(report, SCHEMA)


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-c", "user.email=test@mfbench", "-c", "user.name=test", *args], cwd=repo,
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


# --- the rule ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratios, verdict, settled", [
    ([1.2, 1.21], "regressed", True),     # clearly above x1.1
    ([1.0, 0.99], "same", True),          # clearly below
    ([0.7, 0.72], "improved", True),      # clearly below 1/1.1
    ([1.2], "unsettled", False),          # one round has no spread: unsettled; `overall` fails it above x1.1
    ([1.12, 1.09], "regressed", False),   # straddles the threshold: open, a mean above it fails at the last round
    ([1.25, 0.95], "unsettled", False),   # rounds disagree: spans 1.0 and x1.1
    ([1.08, 1.08, 1.08], "slower", False),  # certainly slower; the floor of the standard error reaches x1.1
    ([1.05, 1.05], "slower", True),       # certain and wholly below x1.1
    ([0.95, 0.95], "faster", True),
    ([0.93, 0.93], "faster", False),      # certainly faster; the interval reaches below 1/1.1
    ([0.85, 0.86], "improved", True),
])
def test_judge(ratios, verdict, settled):
    j = alert_rule.judge([math.log(r) for r in ratios], alert_rule.Rule())
    assert (j.verdict, j.settled) == (verdict, settled)
    assert j.low <= j.ratio <= j.high and j.ratio == pytest.approx(math.exp(sum(map(math.log, ratios)) / len(ratios)))


def test_a_round_pairs_the_medians():
    assert alert_rule.paired_log_ratio([1.0, 1.0, 5.0], [1.2, 1.2, 0.1]) == pytest.approx(math.log(1.2))


COUNTS = {"kernels": 2.0, "syncs": 0.0, "bytes": 1024.0, "ops": 9.0}


def _rec(base: list[tuple[str, str]], head: list[tuple[str, str]], ratios=(), counts=COUNTS) -> alert_rule.SetRecord:
    side = lambda runs: [{"status": s, "reason": f"{s} here", "method": m, "samples_s": [1.0] if s == "ok" else [],
                          "counts": counts if s == "ok" else None} for s, m in runs]
    return alert_rule.SetRecord("triton", "forward", 64, None, "float32", side(base), side(head), list(ratios))


G = "cuda-graph-replay"


@pytest.mark.parametrize("rec, verdict", [
    (_rec([("ok", G)], [("failed", "")]), "broken"),             # raises at head
    (_rec([("ok", G)], [("unavailable", "")]), "broken"),        # skipped at head
    (_rec([("ok", G), ("ok", G)], [("ok", G), ("failed", "")]), "broken"),  # a failed round is enough
    (_rec([("ok", G)], [("ok", "cupti-busy-time")], [0.0]), "broken"),  # no longer captures in a graph
    (_rec([("unavailable", "")], [("unavailable", "")]), "unavailable"),  # this machine cannot run it at all
    (_rec([("failed", "")], [("ok", G)]), "new-at-head"),
    (_rec([("failed", "")], [("failed", "")]), "failed-at-both"),
    (_rec([("ok", G)] * 2, [("ok", G)] * 2, [math.log(1.3)] * 2), "regressed"),
])
def test_outcome_fails_closed(rec, verdict):
    assert alert_rule.outcome(rec, alert_rule.Rule())[0] == verdict


def test_overall_verdict_and_exit():
    assert alert_rule.overall([{"verdict": "same"}, {"verdict": "broken"}, {"verdict": "regressed"}], 0) == "broken"
    assert alert_rule.overall([{"verdict": "same"}, {"verdict": "regressed"}], 0) == "regression"
    assert alert_rule.overall([{"verdict": "same"}], 1) == "accuracy"
    # nothing compared at both commits: nothing passes
    assert alert_rule.overall([{"verdict": "unavailable"}, {"verdict": "new-at-head"}], 0) == "unmeasured"
    assert alert_rule.overall([], 0) == "unmeasured"
    assert alert_rule.overall([{"verdict": "improved"}, {"verdict": "unavailable"}], 0) == "pass"


def test_rounds_stop_once_the_answer_is_known():
    rule = alert_rule.Rule()
    settled = ("same", "", alert_rule.judge([0.0, 0.0], rule))
    open_ = ("same", "", alert_rule.judge([0.09, 0.1], rule))
    regressed = ("regressed", "", alert_rule.judge([0.3, 0.3], rule))
    assert alert_rule.still_open({"a": settled, "b": open_}, 1, rule) == ["a", "b"]  # before min_rounds: all
    assert alert_rule.still_open({"a": settled, "b": open_}, 2, rule) == ["b"]
    assert alert_rule.still_open({"a": regressed, "b": open_}, 2, rule) == []  # a settled regression: fail now
    assert alert_rule.still_open({"a": ("broken", "x", None), "b": open_}, 2, rule) == []
    assert alert_rule.still_open({"b": open_}, rule.max_rounds, rule) == []


def test_the_alert_measures_the_providers_a_change_touches():
    assert providers.touched_by(["mfbench/kernels/lookup.py"]) == ["triton"]
    assert set(providers.touched_by(["mfbench/core/lookup.py"])) == set(providers.names()) - {"dense"}
    assert providers.touched_by(["mfbench/core/registry.py"]) == providers.names()
    assert providers.touched_by(["mfbench/core/builtins.py"]) == providers.names()
    assert providers.touched_by(["README.md"]) == []
    assert set(alert.KERNEL_GLOBS) == {"mfbench/kernels/*", "mfbench/core/lookup.py", "mfbench/core/registry.py",
                                       "mfbench/core/builtins.py"}


def _report(rows: list[dict], verdict: str, rule: alert_rule.Rule = alert_rule.Rule()) -> dict:
    return {"schema": alert.REPORT_SCHEMA, "base": "a" * 40, "head": "b" * 40, "head_ref": "HEAD", "head_uncommitted": [],
            "files": ["mfbench/kernels/lookup.py"], "rule": asdict(rule), "device": "H200",
            "providers": ["triton"], "rounds": 2, "seconds": 50.0, "sets": rows,
            "accuracy": {"checked": True, "exit_code": 0, "output": "agrees"}, "verdict": verdict,
            "exit_code": 0 if verdict in ("pass", "no-kernel-change") else 1}


def test_reports_list_broken_and_regressed_sets_first_and_the_json_validates(tmp_path):
    records = {"a": _rec([("ok", G)] * 2, [("ok", G)] * 2, [0.0, 0.01]),
               "b": _rec([("ok", G)] * 2, [("ok", G)] * 2, [math.log(1.3), math.log(1.31)]),
               "c": _rec([("ok", G)], [("failed", "")])}
    rows = alert.summary(records, alert_rule.Rule())
    report = _report(rows, alert_rule.overall(rows, 0))
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    alert.write_reports(report, md, js)
    validate(json.loads(js.read_text()))
    text = md.read_text()
    assert "**Broken**" in text
    table = [line for line in text.splitlines() if line.startswith("| triton")]
    assert "**broken**: ran at base, failed at head" in table[0]
    assert "**regressed**" in table[1] and "1.305 [" in table[1] and "same" in table[2]


def test_schema_rejects_a_report_that_lies():
    jsonschema = pytest.importorskip("jsonschema")
    report = _report([], "pass")
    validate(report)
    with pytest.raises(jsonschema.ValidationError):
        validate({**report, "exit_code": 1})  # a pass exits 0
    with pytest.raises(jsonschema.ValidationError):
        validate({**report, "verdict": "regression", "exit_code": 0})
    with pytest.raises(jsonschema.ValidationError):
        validate({**report, "verdict": "fine"})
    with pytest.raises(jsonschema.ValidationError):
        validate({**report, "exit_code": 3})


# --- usage errors: one line, exit 2 ------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--base", "no-such-ref"], "'no-such-ref' names no commit"),
    (["--base=--output=/tmp/mfbench-alert-x"], "names no commit"),  # never an option to git
    (["--base", "HEAD", "--min-rounds", "3", "--max-rounds", "2"], "--min-rounds (3) <= --max-rounds (2)"),
    (["--base", "HEAD", "--factor", "0.9"], "--factor must be above 1"),
    (["--base", "HEAD", "--providers", "nope"], "unknown provider 'nope'"),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys, tmp_path):
    assert alert.main([*args, "--report", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not Path("/tmp/mfbench-alert-x").exists()


# --- whole alerts on the CPU ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A clone of this commit with children: planted slowdown, comment-only edit, a raising Triton
    forward, an embedding_bag that reads the wrong row, and a docs-only change."""
    path = tmp_path_factory.mktemp("alert") / "repo"
    subprocess.run(["git", "clone", "-q", str(alert.ROOT), str(path)], check=True)
    kernel = path / "mfbench" / "kernels" / "lookup.py"
    source = kernel.read_text()
    _git(path, "tag", "alert-base")

    def child(branch: str, target: Path, text: str) -> None:
        _git(path, "checkout", "-q", "-b", branch, "alert-base")
        target.write_text(text)
        _git(path, "commit", "-qam", branch)

    # the interpreter's time is mostly not the gather: half the tables twice gives a clear CPU signal
    child("planted", kernel, plant_slowdown(source, 0.5))
    child("unchanged", kernel, source + "# a comment: the kernel file changed, the kernels did not\n")
    head = "def lookup_forward("
    assert source.count(head) == 1, "lookup_forward moved; update this test"
    body = source.index(":\n", source.index(head)) + 2
    child("raises", kernel, source[:body] + '    raise RuntimeError("the new kernel is broken")\n' + source[body:])
    registry = path / "mfbench" / "core" / "builtins.py"
    text = registry.read_text()
    line = "    flat = layer.tables.reshape(num_chunks * rows, out_features)\n"
    assert line in text, "the embedding_bag provider changed; update this test"
    child("wrong-answers", registry, text.replace(line, line + "    flat = flat.roll(1, dims=0)\n"))
    child("docs-only", path / "README.md", "changed\n")
    return path


def run_alert(repo: Path, head: str, tmp: Path, *args: str, **env: str) -> tuple[int, str, dict]:
    full = {**os.environ, **ENV, **ALERT_ENV, **env}
    md, js = tmp / f"{head}.md", tmp / f"{head}.json"
    result = subprocess.run([sys.executable, "-m", "mfbench.shells.alert", "--base", "alert-base", "--head", head,
                             "--report", str(md), *args], cwd=repo, env=full, capture_output=True, text=True)
    assert md.exists() and js.exists(), result.stdout + result.stderr
    report = json.loads(js.read_text())
    validate(report)
    return result.returncode, md.read_text(), report


def test_no_kernel_change_passes_without_measuring(repo, tmp_path):
    code, text, report = run_alert(repo, "docs-only", tmp_path)
    assert code == 0 and report["verdict"] == "no-kernel-change" and "No kernel file changed" in text


def test_a_head_whose_triton_forward_raises_is_broken(repo, tmp_path):
    # 8 tokens: the decode kernel's calls, which lookup_forward makes too, at a sixth of the gather's time
    code, text, report = run_alert(repo, "raises", tmp_path, "--min-rounds", "1", "--max-rounds", "1", "--no-accuracy",
                                   "--seqs", "8")
    assert code == 1, text
    assert report["verdict"] == "broken" and "**Broken**" in text
    (row,) = report["sets"]
    assert row["verdict"] == "broken" and "the new kernel is broken" in row["reason"]
    assert "**broken**" in text and "the new kernel is broken" in text


def test_alert_fails_on_a_provider_that_answers_differently(repo, tmp_path):
    code, text, report = run_alert(repo, "wrong-answers", tmp_path, "--min-rounds", "1", "--max-rounds", "1",
                                   MFBENCH_ALERT_PROVIDERS="embedding_bag")
    assert code == 1, text
    # (the copy that roll makes can also slow the call, and one round leaves a slower set unsettled above
    # the factor, which fails first: the accuracy check must fail it either way)
    assert report["verdict"] in ("accuracy", "regression", "unsettled") and report["accuracy"]["exit_code"] == 1
    assert "**Failed** (snapshot eval exit 1)" in text and "DISAGREES" in text


@slow
@pytest.mark.parametrize("head, expected_code", [("planted", 1), ("unchanged", 0)])
def test_alert_decides_10_of_10(repo, tmp_path, head, expected_code):
    outcomes = []
    for i in range(RUNS):
        (tmp_path / str(i)).mkdir()
        code, _, report = run_alert(repo, head, tmp_path / str(i), "--no-accuracy")
        outcomes.append((code, report["sets"][0]["ratio"], report["verdict"]))
    print(f"\n{head}: {outcomes}")
    assert all(code == expected_code for code, _, _ in outcomes), outcomes


def test_snapshot_eval_fails_an_exact_provider_that_should_run_and_raises(monkeypatch, capsys):
    """Fail closed in ``snapshot eval`` too: a provider this machine can run (its requirement is met) that
    raises is FAILED and exits 1, never 'skipped'."""
    import torch.nn.functional as F

    from mfbench.shells.cli.main import main

    def broken(*args, **kwargs):
        raise RuntimeError("embedding_bag is broken")

    monkeypatch.setattr(F, "embedding_bag", broken)
    code = main(["snapshot", "eval", "--no-save", "--providers", "embedding_bag", "--sequences", "4", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 1, out.out + out.err
    assert "FAILED: failed: RuntimeError: embedding_bag is broken" in out.out and "skipped" not in out.out
    assert "accuracy regression: embedding_bag failed to run" in out.err


def test_a_plugin_that_declares_its_sources_is_watched_by_the_alert():
    name = "alert_watched_plugin"
    provider = providers.register_provider(name, providers.get("reference").fn, sources=("plugins/my_kernel.py",))
    try:
        assert "plugins/my_kernel.py" in providers.source_globs()
        assert "plugins/my_kernel.py" not in providers.source_globs(plugins=False)  # the workflows' built-in paths
        assert providers.touched_by(["plugins/my_kernel.py"]) == [name] and provider.origin != "built-in"
    finally:
        providers.unregister(name)
    assert name not in providers.names()
