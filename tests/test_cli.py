"""The command line as a user meets it: exit codes, messages, no tracebacks for mistakes."""

import subprocess
import sys

import pytest

from mfbench.shells.cli.main import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "mfbench", *args], capture_output=True, text=True, timeout=600)


def test_info_exits_zero_without_gpu():
    out = run("info")
    assert out.returncode == 0, out.stderr
    for field in ("cpu", "ram_gib", "torch", "triton", "python", "gpu", "providers"):
        assert field in out.stdout


def test_flops_prints_table1_beside_paper():
    out = run("flops")
    assert out.returncode == 0, out.stderr
    assert "MemoryFormer-small" in out.stdout and "NO" in out.stdout
    assert "10.74" in out.stdout and "10.7" in out.stdout


@pytest.mark.parametrize("args,message", [
    (["layers", "--providers", "nope"], "unknown provider 'nope'"),
    (["layers", "--device", "cuda:7"], "cuda"),
    (["layers", "--device", "tpu"], "device"),
    (["layers", "--cases", "huge"], "unknown case set"),
    (["layers", "--dtype", "int8"], "unknown dtype"),
    (["flops", "--seq", "0"], "--seq"),
    (["profile", "--replay", "application"], "unknown replay mode 'application'; choose one of range, kernel"),
])
def test_user_mistakes_get_one_line_and_exit_2(args, message, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_layers_smoke_runs_and_writes_records(tmp_path, capsys):
    csv = tmp_path / "layers.csv"
    code = main(["layers", "--cases", "smoke", "--providers", "reference,embedding_bag,triton,dense",
                 "--csv", str(csv), "--results-dir", str(tmp_path / "results")])
    out = capsys.readouterr().out
    assert code == 0
    import pandas as pd

    frame = pd.read_csv(csv)
    assert set(frame["provider"]) == {"reference", "embedding_bag", "triton", "dense"}
    ran = frame[frame["median_ms"].notna()]
    assert (ran["median_ms"] > 0).all() and (ran["samples"] >= 1).all()
    assert ran[ran["provider"] != "dense"]["within_tolerance"].all()
    assert "x dense" in out and "floor ms" in out
    from mfbench.store import results

    rows = results.load(tmp_path / "results")
    times = rows[rows["metric"] == "time"]
    assert set(times["provider"]) == {"reference", "embedding_bag", "triton", "dense"}
    assert sorted(times["value"] * 1e3) == pytest.approx(sorted(ran["median_ms"]))


def _kernel_measurement(provider, timing, **kw):
    import torch

    from mfbench.bench.cases import Case, Item
    from mfbench.bench.measurement import Measurement

    return Measurement(Item.kernel(Case("forward", 2048, 512, 512), provider, torch.float16), timing=timing, **kw)


def test_layer_rows_carry_the_host_issue_time_and_the_host_bound_flag():
    from mfbench.bench.measurement import HOST_BOUND, merge, to_rows
    from mfbench.instruments.timing import HOST_METHOD, HOST_UNAVAILABLE, KERNEL_METHOD, Timing
    from mfbench.store import results

    def timing(host_s):
        return Timing(1e-4, 0.9e-4, 1.1e-4, 0.8e-4, 1.2e-4, 50, "triton.testing.do_bench", host_s=host_s)

    kernel = _kernel_measurement("triton", None)
    kernel.add("kernel_time", 0.4e-4, "s", [KERNEL_METHOD])  # the kernel pass's, made last
    measured = [_kernel_measurement("triton", timing(0.9e-4), time_flags=(HOST_BOUND,)),
                _kernel_measurement("dense", timing(1e-5)), _kernel_measurement("compiled", timing(None)), kernel]
    run = results.Run.start("cpu")
    rows = [row for m in measured for row in to_rows(m, run)]
    by = {(r["provider"], r["metric"]): r for r in rows}
    assert by["triton", "host_issue_time"]["value"] == 0.9e-4 and by["triton", "host_issue_time"]["flags"] == HOST_METHOD
    assert "host-bound" in by["triton", "time"]["flags"].split(",")
    assert by["triton", "kernel_time"]["value"] == 0.4e-4 and by["triton", "kernel_time"]["flags"] == KERNEL_METHOD
    assert ("dense", "kernel_time") not in by  # no figure, no row
    assert "host-bound" not in by["dense", "time"]["flags"].split(",") and by["dense", "host_issue_time"]["value"] == 1e-5
    unavailable = by["compiled", "host_issue_time"]
    assert unavailable["value"] != unavailable["value"] and unavailable["flags"] == HOST_UNAVAILABLE
    assert [m.value("kernel_time") for m in merge(measured)][0] == 0.4e-4  # the record sees the kernel pass's figure


def test_a_time_below_its_floor_is_flagged_in_rows_and_printout():
    import pandas as pd

    from mfbench.bench.measurement import BELOW_FLOOR, record, to_rows
    from mfbench.instruments.timing import Timing
    from mfbench.report.summaries import layers_summary
    from mfbench.store import results

    def timing(median):
        return Timing(median, 0.9 * median, 1.1 * median, 0.8 * median, 1.2 * median, 5, "x")

    measured = [_kernel_measurement("dense", timing(1e-4), floor=(1.9e-4, "compute")),
                _kernel_measurement("reference", timing(1e-3), floor=(1.9e-4, "compute"))]
    run = results.Run.start("cpu")
    rows = {r["provider"]: r for m in measured for r in to_rows(m, run) if r["metric"] == "time"}
    assert BELOW_FLOOR in rows["dense"]["flags"].split(",") and BELOW_FLOOR not in rows["reference"]["flags"]
    text = layers_summary(pd.DataFrame([record(m) for m in measured]))
    assert "190% IMPOSSIBLE" in text and "19%" in text and "--refresh-ceilings" in text
    head, *lines = text.splitlines()
    column = head.split().index("floor/dense") - len(head.split())  # counted from the right: cases have spaces
    got = {name: line.split()[column] for line in lines for name in ("dense", "reference") if f" {name} " in line}
    assert got == {"dense": "-", "reference": "1.9"}  # the lookup's floor, 0.19 ms, over dense's 0.1 ms


def test_layers_dtype_follows_the_device_as_its_help_says(monkeypatch, capsys):
    from mfbench.shells.cli import common, measuring
    from mfbench.shells.cli import main as cli

    with pytest.raises(SystemExit):
        cli.main(["layers", "--help"])
    assert "default float16 on a GPU, float32 on the CPU" in " ".join(capsys.readouterr().out.split())
    seen = {}
    monkeypatch.setattr(measuring, "cmd_layers", lambda args: seen.setdefault("dtype", args.dtype) and 0)
    assert cli.build_parser().parse_args(["layers"]).dtype is None
    monkeypatch.setattr(common, "default_device", lambda: "cuda")
    cli.main(["layers"])
    assert seen.pop("dtype") == "float16"
    cli.main(["layers", "--device", "cpu"])
    assert seen.pop("dtype") == "float32"


@pytest.mark.parametrize("module", ["mfbench.shells.cli.main", "mfbench.shells.asvrun", "mfbench.shells.alert",
                                    "mfbench.report.plots", "mfbench.report.bench_summary", "mfbench.report.findings",
                                    "mfbench.report.dashboard", "mfbench.kernels.sweep", "mfbench.shells.kernelprobe"])
def test_help_is_plain_text(module, capsys):
    """--help is read in a terminal: no RST markup from the docstrings it is made of."""
    import importlib

    main = importlib.import_module(module).main
    for argv in (["--help"], *([[c, "--help"] for c in ("run", "show", "train", "compare")] if module.endswith("main") else [])):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert out.startswith("usage:") and "``" not in out and ":func:" not in out, (argv, out)
