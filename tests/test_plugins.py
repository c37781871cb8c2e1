"""Providers from outside mfbench (issue 22): the example package installed from examples/ and found through
its entry point, the broken example loaded with --provider-module, in `mfbench run`, `snapshot eval` and
`show --repro`; plugins that cannot be loaded; the registration API."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mfbench.core import providers, registry
from mfbench.core.lookup import reference_lookup
from mfbench.store import results

ROOT = Path(__file__).resolve().parent.parent
BROKEN = ROOT / "examples" / "broken_provider.py"
BROKEN_NAMES = ("broken_raises", "broken_wrong", "broken_dtype", "broken_slow")


def mfbench(site: Path | None, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m mfbench ARGS` in a fresh process that sees ``site`` and loads its plugins (the registry is
    per process)."""
    paths = [str(site)] if site else []
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [str(ROOT)]), "TRITON_INTERPRET": "1",
            "MFBENCH_PLUGINS": "1", **env}
    return subprocess.run([sys.executable, "-m", "mfbench", *args], capture_output=True, text=True, env=full,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="session")
def plugin_run(installed, tmp_path_factory):
    directory = tmp_path_factory.mktemp("results")
    done = mfbench(installed, "run", "--preset", "smoke", "--device", "cpu", "--results-dir", str(directory),
                   "--providers", ",".join(("dense", "example_gather", "example_compiled") + BROKEN_NAMES),
                   "--provider-module", str(BROKEN.relative_to(ROOT)))
    return directory, done


def test_the_installed_example_is_measured_and_each_broken_provider_fails_with_its_reason(plugin_run):
    directory, done = plugin_run
    assert done.returncode == 1, done.stdout + done.stderr  # broken providers fail the run; it still finishes
    frame = results.load(directory)
    bench = frame[frame["benchmark"].isin(["layer", "block", "model"])]
    items = bench.groupby(["benchmark", "params"]).ngroups
    times = bench[(bench["metric"] == "time") & (bench["provider"] == "example_gather")]
    assert len(times) == items and (times["value"] > 0).all()  # every item of the matrix, measured
    for provider, metric, reason in (
        ("example_compiled", "skipped", "runs on cuda only (declared devices)"),
        ("broken_raises", "failed", "RuntimeError: this kernel is broken on purpose"),
        ("broken_wrong", "failed", "float64 check: relative error of y"),
        ("broken_dtype", "failed", "returned float64 for float32 input"),
        ("broken_slow", "failed", "OverBudget: one call took"),
    ):
        rows = bench[bench["provider"] == provider]
        assert len(rows) == items and (rows["metric"] == metric).all(), (provider, rows["metric"].tolist())
        assert rows["flags"].str.contains(reason, regex=False).all(), (provider, rows["flags"].iloc[0])
    assert "mfbench: failed: " + ", ".join(BROKEN_NAMES) in done.stderr
    assert "FAILED: RuntimeError: this kernel is broken on purpose" in done.stdout


def test_repro_gives_commands_that_measure_the_rows_again(plugin_run, installed, tmp_path):
    directory, _ = plugin_run
    alone = mfbench(None, "show", "--repro", "latest", "--results-dir", str(directory))
    assert "provider 'broken_raises' is not registered here" in alone.stdout, alone.stdout + alone.stderr
    done = mfbench(installed, "show", "--repro", "latest", "--results-dir", str(directory), "--format", "json",
                   "--provider-module", str(BROKEN.relative_to(ROOT)))
    assert done.returncode == 0, done.stderr
    repro = {(r["benchmark"], r["provider"], r["params"]["direction"]): r for r in json.loads(done.stdout)["rows"]
             if r["benchmark"] == "layer"}
    broken = repro[("layer", "broken_raises", "forward")]["command"]
    assert f"--provider-module {BROKEN.relative_to(ROOT)}" in broken
    assert "entry point example" in repro[("layer", "example_gather", "forward")]["note"]
    # the example's command, run: it measures the same (benchmark, parameters, provider) again
    command = repro[("layer", "example_gather", "forward")]["command"].split()
    assert command[0] == "mfbench"
    again = mfbench(installed, *command[1:], "--results-dir", str(tmp_path))
    assert again.returncode == 0, again.stderr
    fresh = results.load(tmp_path)
    old = results.load(directory)
    key = lambda f: set(zip(f.loc[f["metric"] == "time", "benchmark"], f.loc[f["metric"] == "time", "params"],  # noqa: E731
                            f.loc[f["metric"] == "time", "provider"]))
    assert key(fresh) and key(fresh) <= key(old)
    assert {p for _, _, p in key(fresh)} == {"example_gather"}


def test_snapshot_eval_checks_the_example_and_fails_the_broken_ones(installed, committed):
    # the committed snapshot: one a user trained since (README: `mfbench train`) would change the verdicts
    base = ("snapshot", "eval", "--no-save", "--device", "cpu", "--sequences", "16",
            "--snapshots-dir", str(committed / "results" / "snapshots"))
    good = mfbench(installed, *base, "--providers", "example_gather,example_compiled")
    assert good.returncode == 0, good.stdout + good.stderr
    verdicts = {line.split()[0]: line for line in good.stdout.splitlines()[1:]}
    assert verdicts["example_gather"].endswith("agrees")
    assert "skipped: runs on cuda only" in verdicts["example_compiled"]
    bad = mfbench(installed, *base, "--providers", ",".join(BROKEN_NAMES), "--provider-module", str(BROKEN))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    verdicts = {line.split()[0]: line for line in bad.stdout.splitlines()[2:]}
    assert "FAILED: failed: RuntimeError: this kernel is broken on purpose" in verdicts["broken_raises"]
    assert "DISAGREES" in verdicts["broken_wrong"]  # the neighbouring row changes the answers
    assert "FAILED: " in verdicts["broken_dtype"]  # float64 answers break the next op of the model, or the trial
    assert "FAILED: OverBudget" in verdicts["broken_slow"]  # right answers, but too slow
    assert all(name in bad.stderr for name in BROKEN_NAMES)


def test_a_plugin_that_cannot_be_loaded_is_a_failed_row_not_a_crash(tmp_path):
    """An installed package whose entry point names a module that is missing: mfbench still imports and
    lists it, and a run reports it failed, with the reason, beside the providers that work."""
    dist = tmp_path / "site" / "gone_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gone-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mfbench.providers]\ngone = gone_plugin_module:register\n")
    listed = mfbench(tmp_path / "site", "info")
    assert listed.returncode == 0 and "gone" in listed.stdout.splitlines()[-1], listed.stderr
    done = mfbench(tmp_path / "site", "run", "--preset", "smoke", "--device", "cpu", "--benchmarks", "layer",
                   "--providers", "dense,gone", "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    frame = results.load(tmp_path / "r")
    gone = frame[frame["provider"] == "gone"]
    assert (gone["metric"] == "failed").all() and len(gone) == 2
    assert gone["flags"].str.contains("plugin gone_plugin_module:register could not be loaded: "
                                      "ModuleNotFoundError").all()
    assert (frame.loc[(frame["provider"] == "dense") & (frame["metric"] == "time"), "value"] > 0).all()


@pytest.mark.parametrize("module, message", [
    ("no/such/file.py", "provider module no/such/file.py could not be loaded: FileNotFoundError: no such file"),
    ("no_such_module_xyz", "could not be loaded: ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ("json", "provider module json registered no provider (call mfbench.register_provider in it)"),
])
def test_a_bad_provider_module_is_a_one_line_usage_error(module, message, capsys):
    from mfbench.shells.cli.main import main

    assert main(["run", "--preset", "smoke", "--provider-module", module, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_register_provider_refuses_bad_declarations():
    with pytest.raises(ValueError, match="non-empty string without commas"):
        providers.register_provider("a,b", lambda layer, x: x)
    with pytest.raises(TypeError, match="fn must be callable"):
        providers.register_provider("not_callable", 3)
    with pytest.raises(ValueError, match="budget_s must be positive"):
        providers.register_provider("no_budget", lambda layer, x: x, budget_s=0)
    with pytest.raises(ValueError, match="registered twice"):
        providers.register_provider("reference", lambda layer, x: x)
    assert "a,b" not in providers.names() and "no_budget" not in providers.names()


def test_declared_devices_dtypes_and_probe_are_skips_a_raising_probe_too(monkeypatch):
    import torch

    for name, kw, why in (("only_cuda", {"devices": ("cuda",)}, "runs on cuda only"),
                          ("only_f64", {"dtypes": (torch.float64,)}, "takes float64 only"),
                          ("probe_says", {"probe": lambda: "needs libfoo"}, "needs libfoo"),
                          ("probe_raises", {"probe": lambda: 1 / 0}, "its probe raised ZeroDivisionError")):
        monkeypatch.setitem(registry._REGISTRY, name, providers.Provider(name, "test", lambda layer, x: x, **kw))
        assert providers.readiness(name, "cpu", torch.float32) == providers.Readiness(skip=providers.requirement_unmet(
            name, "cpu", torch.float32))
        assert why in providers.readiness(name, "cpu", torch.float32).skip
    assert providers.readiness("only_f64", "cpu", torch.float64).skip is None
    providers.trial.cache_clear()


def test_an_approximate_provider_is_checked_for_shape_and_dtype_but_not_values(monkeypatch):
    def scaled(layer, x):
        return reference_lookup(x, layer.tables, layer.spec) * 0.5

    monkeypatch.setitem(registry._REGISTRY, "approx", providers.Provider("approx", "test", scaled, exact=False))
    monkeypatch.setitem(registry._REGISTRY, "exact_off", providers.Provider("exact_off", "test", scaled))
    try:
        assert providers.readiness("approx") == providers.Readiness()
        assert providers.readiness("exact_off").fault.startswith("float64 check: relative error of y 0.5")
        assert providers.unavailable("exact_off") is not None  # train refuses it too
    finally:
        providers.trial.cache_clear()
        providers.unavailable.cache_clear()


def test_importing_mfbench_loads_neither_torch_nor_plugins():
    code = ("import sys, mfbench; assert 'torch' not in sys.modules and 'mfbench.core.providers' not in sys.modules; "
            "assert mfbench.register_provider is __import__('mfbench.core.providers').core.providers.register_provider")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- torch.compile'd providers: the backward call keeps its graph for repeated calls (issue 30) ----------

COMPILED_PLUGIN = '''
import functools
import torch
import mfbench
from mfbench.core.lookup import reference_lookup


@functools.lru_cache(maxsize=None)
def _compiled():
    return torch.compile(reference_lookup)


def lookup(layer, x):
    return _compiled()(x, layer.tables, layer.spec).to(x.dtype)


mfbench.register_provider("plugin_compiled", lookup, exact=True, devices=("cpu", "cuda"))
'''


class _RefusesKeptGraphs(torch.autograd.Function):
    """AOTAutograd's own check, as a compiled backward with donated buffers runs it (torch 2.11 on an
    H200): a backward that keeps the graph is refused while torch._functorch.config.donated_buffer is on."""

    @staticmethod
    def forward(ctx, y):
        return y.clone()

    @staticmethod
    def backward(ctx, gy):
        import torch._functorch.config as functorch_config

        if functorch_config.donated_buffer and torch._C._autograd._get_current_graph_task_keep_graph():
            raise RuntimeError("This backward function was compiled with non-empty donated buffers which requires "
                               "create_graph=False and retain_graph=False")
        return gy


def test_the_backward_call_keeps_graphs_a_compiled_backward_would_donate():
    import torch._functorch.config as functorch_config

    from mfbench.bench import subject
    from mfbench.bench.cases import Case

    # the config module's own patch: pytest's monkeypatch undoes a setattr there by deleting the key, which
    # breaks every later torch.compile of the process ("donated_buffer does not exist")
    with functorch_config.patch(donated_buffer=True):  # a fresh process's default
        case = Case("backward", 16, 16, 8)
        layer = subject.make_layer(case, "reference", torch.device("cpu"), torch.float32)
        x, gy = subject.random_input(case, torch.device("cpu"), torch.float32, 0)
        forward = lambda inp: _RefusesKeptGraphs.apply(reference_lookup(inp, layer.tables, layer.spec))  # noqa: E731
        call = subject.callable_for("backward", subject.Subject(layer, x, forward, gy))
        first, second = call(), call()  # the repeated calls a timing makes
        assert all(torch.equal(a, b) for a, b in zip(first, second) if a is not None)
        assert functorch_config.donated_buffer is False


def test_a_torch_compiled_plugin_runs_forward_and_backward(tmp_path):
    module = tmp_path / "compiled_plugin.py"
    module.write_text(COMPILED_PLUGIN)
    done = mfbench(None, "run", "--preset", "smoke", "--device", "cpu", "--benchmarks", "layer", "--providers",
                   "dense,plugin_compiled", "--provider-module", str(module), "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    frame = results.load(tmp_path / "r")
    rows = frame[frame["provider"] == "plugin_compiled"]
    directions = {json.loads(p)["direction"] for p in rows.loc[rows["metric"] == "time", "params"]}
    assert directions == {"forward", "backward"} and (rows.loc[rows["metric"] == "time", "value"] > 0).all()
    assert not rows["metric"].isin(["failed", "skipped"]).any(), rows[["metric", "flags"]]


@pytest.mark.gpu
def test_every_example_provider_runs_the_smoke_preset_forward_and_backward_on_cuda(installed, tmp_path):
    """On a GPU with its torch: example_compiled (torch.compile max-autotune) included, whose backward a
    kept graph refused while donated buffers were on (torch 2.11, H200)."""
    names = ("example_gather", "example_compiled")
    done = mfbench(installed, "run", "--preset", "smoke", "--device", "cuda", "--providers", ",".join(("dense",) + names),
                   "--results-dir", str(tmp_path), TRITON_INTERPRET="0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    frame = results.load(tmp_path)
    for name in names:
        rows = frame[frame["provider"] == name]
        assert not rows["metric"].isin(["failed", "skipped"]).any(), (name, rows.loc[rows["metric"].isin(["failed", "skipped"]), "flags"].tolist())
        times = rows[rows["metric"] == "time"]
        assert {json.loads(p)["direction"] for p in times["params"]} == {"forward", "backward"} and (times["value"] > 0).all()
