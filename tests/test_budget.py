"""Training to a budget of seconds or joules (mfbench.bench.budget), its rows, and the verdict and plot
drawn from them (mfbench.report.budget): a tiny model and a budget of a fraction of a second."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from mfbench.bench import budget, train
from mfbench.report import budget as report
from mfbench.shells.cli import main as cli
from mfbench.store import results
from mfbench.tasks.synthetic import MQAR

CPU = torch.device("cpu")
# the micro model, with small batches and evaluation sets, so a budget of half a second holds steps
REC = train.recipe("micro", batch=8, eval_sequences=16, warmup=2)


class FakeEnergy:
    """A meter that reads a steady 100 W while a window is open (the idle draw is set by each test)."""

    available, method, reason = True, "fake-meter", None

    def begin(self):
        self._t0 = time.perf_counter()

    def end(self):
        return 100.0 * (time.perf_counter() - self._t0)


@pytest.mark.parametrize("seconds, joules, message", [
    ("0", None, "positive finite number of seconds, got 0.0"),
    ("-3", None, "positive finite number of seconds, got -3.0"),
    ("nan", None, "positive finite number of seconds, got nan"),
    ("inf", None, "positive finite number of seconds, got inf"),
    (None, "0", "positive finite number of joules, got 0.0"),
    ("ten", None, "takes a number of seconds, got 'ten'"),
    ("5", "100", "not both"),
])
def test_bad_budgets_are_refused(seconds, joules, message):
    with pytest.raises(budget.BudgetError, match=message):
        budget.parse(seconds, joules)


def test_no_budget_and_a_good_one():
    assert budget.parse(None, None) is None
    b = budget.parse("8", None)
    assert (b.kind, b.amount, b.unit) == ("seconds", 8.0, "s")
    assert b.targets() == [1.0, 2.0, 4.0, 8.0] and budget.FRACTIONS == (0.125, 0.25, 0.5, 1.0)


@pytest.mark.parametrize("argv, message", [
    (["--budget-seconds", "0"], "--budget-seconds must be a positive finite number"),
    (["--budget-seconds", "-1"], "--budget-seconds must be a positive finite number"),
    (["--budget-seconds", "nan"], "got nan"),
    (["--budget-joules", "-5"], "--budget-joules must be a positive finite number"),
    (["--budget-seconds", "5", "--budget-joules", "100"], "not both"),
    (["--budget-seconds", "5", "--seeds", "0,x"], "--seeds takes whole numbers"),
    (["--budget-seconds", "5", "--seeds", "1,1"], "--seeds takes distinct"),
    (["--budget-seconds", "5", "--steps", "10"], "not --steps, --seed or --distributed"),
    (["--seeds", "0,1"], "--seeds is for budget runs"),
])
def test_budget_mistakes_are_one_line_errors(argv, message, tmp_path, capsys):
    assert cli.main(["train", "--device", "cpu", "--results-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / results.TABLE).exists()


def test_joules_without_a_meter_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    real = budget.RaplMeter
    monkeypatch.setattr(budget, "RaplMeter", lambda: real(tmp_path / "no-powercap"))
    assert cli.main(["train", "--device", "cpu", "--budget-joules", "50", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--budget-joules needs an energy meter on cpu: no powercap tree" in err and err.count("\n") == 1


def _slow_evaluation(monkeypatch, seconds):
    """Evaluation that takes ``seconds`` and scores 3 of 4; each call notes whether a meter was open."""
    calls, meters = [], []

    class Watched(budget.Spending):
        def __init__(self, *args):
            super().__init__(*args)
            meters.append(self)

    def evaluate(model, rec, task, device):
        calls.append(any(m.is_open for m in meters))
        time.sleep(seconds)
        return 3, 4, None
    monkeypatch.setattr(budget, "_evaluate", evaluate)
    monkeypatch.setattr(budget, "Spending", Watched)
    return calls


def test_the_meter_counts_only_while_open():
    meter = budget.Spending(CPU, None, None)
    for _ in range(2):
        meter.open()
        time.sleep(0.1)
        meter.close()
        time.sleep(0.3)  # an evaluation: outside
    assert 0.2 <= meter.spent("seconds") < 0.35 and math.isnan(meter.spent("joules"))


def test_seconds_budget_evaluates_at_each_fraction_and_leaves_evaluation_out(monkeypatch):
    calls = _slow_evaluation(monkeypatch, 0.25)
    plan = budget.Budget("seconds", 0.6)
    start = time.perf_counter()
    found = budget.train_to_budget("dense", REC, MQAR(), CPU, "embedding_bag", plan, None, None)
    wall = time.perf_counter() - start
    assert [p.fraction for p in found.points] == list(budget.FRACTIONS)
    for p, target in zip(found.points, plan.targets()):
        assert p.seconds >= target and p.joules is None and p.accuracy == 0.75
    assert [p.steps for p in found.points] == sorted(p.steps for p in found.points) and found.points[0].steps >= 1
    # no evaluation ran with the meter open, so the 0.25 s each slept is in the wall time only
    assert calls and not any(calls)
    assert wall >= found.points[-1].seconds + 0.25 * len(calls)
    assert found.provider == "dense" and found.seed == REC.seed and found.clock == "wall"


def test_joules_budget_spends_net_of_idle(monkeypatch):
    _slow_evaluation(monkeypatch, 0.0)
    plan = budget.Budget("joules", 30.0)  # 100 W gross, 40 W idle: 60 W net, so about half a second
    found = budget.train_to_budget("memoryformer", REC, MQAR(), CPU, "embedding_bag", plan, FakeEnergy(), 40.0)
    assert [p.fraction for p in found.points] == list(budget.FRACTIONS)
    for p, target in zip(found.points, plan.targets()):
        assert p.joules >= target
        assert p.joules == pytest.approx(60.0 * p.seconds, rel=0.05)
    assert found.provider == "embedding_bag" and found.architecture == "memoryformer"


def test_rows_hold_accuracy_against_seconds_and_joules(monkeypatch, tmp_path):
    _slow_evaluation(monkeypatch, 0.0)
    plan = budget.Budget("seconds", 0.3)
    found = budget.train_to_budget("dense", REC, MQAR(), CPU, "embedding_bag", plan, None, None)
    energy = budget.EnergySource(CPU)
    energy.reason, energy.method = "no meter in this test", "unavailable"
    rows = budget.rows(results.Run.start("cpu"), REC, MQAR(), plan, found, energy, None, ["note: a test"])
    results.append(rows, tmp_path)  # the store takes them
    back = results.load(tmp_path)
    assert set(back["benchmark"]) == {"budget:mqar"} and set(back["provider"]) == {"dense"}
    assert set(back["metric"]) == {"accuracy", "seconds_spent", "joules_spent", "cpu_seconds_spent", "steps", "loss"}
    params = [json.loads(p) for p in back["params"]]
    assert sorted({p["fraction"] for p in params}) == list(budget.FRACTIONS)
    assert {(p["budget_kind"], p["budget"], p["budget_unit"], p["seed"], p["architecture"]) for p in params} == \
        {("seconds", 0.3, "s", REC.seed, "dense")}
    joules = back[back["metric"] == "joules_spent"]
    assert joules["value"].isna().all() and joules["flags"].str.contains("unavailable: no meter in this test").all()
    assert back["flags"].str.contains("eval-outside-budget").all() and back["flags"].str.contains("note: a test").all()
    acc = back[back["metric"] == "accuracy"]
    assert (acc["value"] == 0.75).all() and (acc["samples"] == 4).all()


def test_budget_command_writes_rows_per_seed_and_architecture(tmp_path, capsys):
    code = cli.main(["train", "--device", "cpu", "--budget-seconds", "0.3", "--seeds", "0,1", "--arch", "dense",
                     "--task", "induction", "--results-dir", str(tmp_path), "--note", "shared machine"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = results.load(tmp_path)
    assert rows["run_id"].nunique() == 1 and set(rows["benchmark"]) == {"budget:induction"}
    seeds = {json.loads(p)["seed"] for p in rows["params"]}
    assert seeds == {0, 1} and "acc at 1" in out and "evaluation outside the budget" in out
    assert cli.main(["show", "latest", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| induction (micro) | time, 0.0375 s (0.125 of the budget) | 0 / 2 |" in out and "no verdict" in out
    assert cli.main(["show", "--repro", "latest", "--results-dir", str(tmp_path)]) == 0
    assert "mfbench train --preset micro --task induction --arch dense --budget-seconds 0.3 --seeds 1" in \
        capsys.readouterr().out


def _point_rows(device, task, kind, amount, arch, provider, seed, accuracy, steps, run="r1", t="2026-12-01T00:00:00"):
    out = []
    for fraction in budget.FRACTIONS:
        params = {"preset": "micro", "architecture": arch, "seed": seed, "budget_kind": kind, "budget": amount,
                  "budget_unit": budget.UNITS[kind], "fraction": fraction, "chance": 0.125}
        for metric, value in (("accuracy", accuracy * fraction), ("steps", steps * fraction),
                              ("seconds_spent", amount * fraction if kind == "seconds" else 2 * fraction),
                              ("joules_spent", amount * fraction if kind == "joules" else math.nan),
                              ("cpu_seconds_spent", fraction)):
            out.append(dict(benchmark=f"budget:{task}", device=device, params=json.dumps(params), provider=provider,
                            metric=metric, value=value, unit="", flags="load-1min=1.50..2.50", time_utc=t, run_id=run,
                            commit="abcdef0123"))
    return out


def _frame(mf, dense, **kw):
    rows = []
    for seed, (a, b) in enumerate(zip(mf, dense)):
        rows += _point_rows("GPU-X", "mqar", "seconds", 8.0, "memoryformer", "triton", seed, a, 100, **kw)
        rows += _point_rows("GPU-X", "mqar", "seconds", 8.0, "dense", "dense", seed, b, 300, **kw)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("mf, dense, word", [
    ([0.9, 0.95, 1.0], [0.3, 0.5, 0.6], "MemoryFormer higher (seed ranges apart)"),
    ([0.3, 0.5, 0.6], [0.9, 0.95, 1.0], "dense higher (seed ranges apart)"),
    ([0.3, 0.7, 0.9], [0.5, 0.6, 0.95], "seed ranges overlap: neither is higher"),
    ([0.9], [0.1], "fewer than 2 seeds a side: no verdict"),
])
def test_the_verdict_matches_the_seed_spread(mf, dense, word):
    assert budget_verdict_line(_frame(mf, dense)).endswith(f"| {word} |")
    assert report.verdict(mf, dense) == word


def budget_verdict_line(frame):
    lines = [line for line in report.table(frame).splitlines() if line.startswith("| GPU-X")]
    assert len(lines) == 1
    return lines[0]


def test_table_states_median_and_range_and_uses_the_newest_budget():
    frame = _frame([0.2, 0.4, 0.8], [0.5, 0.6, 0.7])
    line = budget_verdict_line(frame)
    assert "triton: 0.400 [0.200, 0.800]" in line and "| 0.600 [0.500, 0.700] |" in line
    assert "time, 8 s" in line and "| 3 / 3 |" in line and "| 100 / 300 |" in line
    # a later run at another budget replaces the older budget's points, not adds to them
    later = _frame([0.9, 0.9, 0.9], [0.1, 0.1, 0.1], run="r2", t="2026-12-02T00:00:00")
    later["params"] = later["params"].str.replace('"budget": 8.0', '"budget": 4.0')
    line = budget_verdict_line(pd.concat([frame, later]))
    assert "time, 4 s" in line and "MemoryFormer higher" in line
    table = report.table(pd.concat([frame, later]))
    assert "`r2` (abcdef0)" in table and "`r1`" not in table and "1.5-2.5" in table
    # a later one-seed run (asv's budget suite tracks one) does not displace a study over seeds
    tracking = _frame([0.9], [0.1], run="r3", t="2026-12-03T00:00:00")
    tracking["params"] = tracking["params"].str.replace('"budget": 8.0', '"budget": 2.0')
    line = budget_verdict_line(pd.concat([frame, later, tracking]))
    assert "time, 4 s" in line and "| 3 / 3 |" in line
    assert report.table(frame.iloc[0:0]).startswith("no budget rows")


def test_fastest_memoryformer_provider_is_the_one_that_took_most_steps():
    frame = _frame([0.9, 0.9], [0.5, 0.5])
    slow = pd.DataFrame(_point_rows("GPU-X", "mqar", "seconds", 8.0, "memoryformer", "reference", 0, 0.1, 10))
    pts = report.points(pd.concat([frame, slow]))
    assert report.fastest_memoryformer(pts) == "triton"
    assert "triton: 0.900" in budget_verdict_line(pd.concat([frame, slow]))


def test_plot_per_device_and_task(tmp_path):
    frame = _frame([0.2, 0.4, 0.8], [0.5, 0.6, 0.7])
    joules = []
    for seed in range(3):
        joules += _point_rows("GPU-X", "mqar", "joules", 500.0, "memoryformer", "triton", seed, 0.5, 100)
        joules += _point_rows("GPU-X", "mqar", "joules", 500.0, "dense", "dense", seed, 0.7, 300)
    cpu = pd.DataFrame(_point_rows("cpu-2cores", "induction", "seconds", 60.0, "dense", "dense", 0, 0.5, 50))
    paths = report.plot(pd.concat([frame, pd.DataFrame(joules), cpu]), tmp_path)
    names = sorted({p.stem for p in paths})
    assert names == ["budget_GPU-X_mqar", "budget_cpu-2cores_induction"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert [p.stem for p in report.plot(frame.iloc[0:0], tmp_path)] == ["budget", "budget"]


def test_asv_budget_suite_tracks_error_rate_and_seconds_per_step_at_equal_time(monkeypatch, tmp_path):
    import dataclasses

    import suites.budget
    from mfbench.shells import suite

    monkeypatch.setattr(suite, "SETTINGS", dataclasses.replace(suite.SETTINGS, asv_budget_seconds=0.3))
    monkeypatch.setenv("MFBENCH_ASV_CACHE", str(tmp_path))
    measured = suite.train_budgets((["cpu"], ["dense"], ["induction"]))
    assert len(measured) == 1
    bench = suites.budget.BudgetAccuracy()
    bench.setup(measured, "cpu", "dense", "induction")
    rows = next(iter(measured.values()))
    final = {r["metric"]: r["value"] for r in rows if json.loads(r["params"])["fraction"] == 1.0}
    assert bench.track_error_rate_at_equal_time() == pytest.approx(1 - final["accuracy"])
    assert bench.track_seconds_per_step() == pytest.approx(final["seconds_spent"] / final["steps"])
    # a second process of the same asv run reads the cache instead of training again
    again = suite.BudgetCase("cpu", "dense", "induction")
    assert json.dumps(again.rows()) == json.dumps(rows)  # joules_spent is NaN here: compare as text


def _block(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:begin -->\n")[1].split(f"<!-- {name}:end -->")[0]


def test_readme_and_the_snapshot_docs_carry_the_tables_of_the_rows(committed):
    """As committed: rows a user has added to results/ since are theirs, not the documents'."""
    rows = results.load(committed / "results")
    root = committed
    assert _block((root / "README.md").read_text(), "budget") == report.table(rows)
    assert _block((root / "docs" / "snapshots.md").read_text(), "seeds") == report.seed_table(rows)


def test_seed_table_states_the_spread_or_that_there_is_none():
    def row(seed, value, provider="triton", t="2026-12-01T00:00:00"):
        params = {"preset": "tiny", "steps": 1000, "seed": seed, "architecture": "memoryformer"}
        return dict(benchmark="train:mqar", device="GPU-X", params=json.dumps(params), provider=provider,
                    metric="accuracy", value=value, unit="fraction", time_utc=t, commit="abcdef0123")
    frame = pd.DataFrame([row(0, 0.4), row(0, 0.5, t="2026-12-02T00:00:00"), row(1, 0.9), row(2, 0.7),
                          row(0, 0.3, provider="dense")])
    lines = report.seed_table(frame).splitlines()
    assert "| GPU-X | mqar | tiny, 1000 | dense | 0 | 0.300 (one seed: no spread measured) | abcdef0 |" in lines
    assert "| GPU-X | mqar | tiny, 1000 | triton | 0, 1, 2 | 0.700 [0.500, 0.900] | abcdef0 |" in lines


def test_readings_come_often_enough_and_never_past_a_fraction():
    plan = budget.Budget("seconds", 64.0)  # 1/128 of it is 0.5 s
    # 10 steps took 1 s: 0.5 s more is 5 steps, but the 1/8 mark (8 s) is further
    assert budget._steps_to_next_reading(plan, [8.0, 16.0], 1.0, 1.0, 10) == 5
    # near the mark: only the steps that fit before it, and at least one
    assert budget._steps_to_next_reading(plan, [8.0, 16.0], 7.8, 7.8, 78) == 2
    assert budget._steps_to_next_reading(plan, [8.0, 16.0], 7.99, 7.99, 79) == 1
    # at most twice the steps so far; one step while nothing reads as spent yet
    assert budget._steps_to_next_reading(budget.Budget("seconds", 6400.0), [800.0], 1.0, 1.0, 10) == 10
    assert budget._steps_to_next_reading(budget.Budget("joules", 100.0), [12.5], 0.0, 0.2, 3) == 1
    # a short budget still reads no more often than every MIN_READING_S
    assert budget._steps_to_next_reading(budget.Budget("seconds", 6.0), [0.75], 0.3, 0.3, 30) == 25  # not 4


def test_seed_runs_together_keep_only_what_a_shared_device_still_measures(tmp_path):
    """docs/ci/gpu_budget.py --together (how the H200's seed rows were made): every seed at once, and of
    their rows only accuracy and final loss, since the trainings' times and energies share one device."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(root / "docs/ci/gpu_budget.py"), "--seed-runs", "mqar", "--seeds", "0,1",
                           "--preset", "micro", "--device", "cpu", "--steps", "2", "--together"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = results.load(tmp_path / "out" / "results")
    assert set(rows["metric"]) == {"accuracy", "final_loss"}
    seeds = {json.loads(p)["seed"] for p in rows["params"]}
    assert seeds == {0, 1} and len(rows) == 2 * 2 * 2  # seeds x architectures x metrics
    assert "| mqar | micro, 2 |" in (tmp_path / "out" / "seeds.md").read_text()
