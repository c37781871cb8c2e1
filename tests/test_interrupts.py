"""`mfbench layers` (the run pipeline's layer-kernel preset) stopped by a signal keeps what it measured, flagged partial, and exits 128 + the signal."""

import json
import os
import signal

import pytest

from mfbench.shells.cli import main as cli
from mfbench.store import results


def _cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_layers_run_keeps_its_records_partial_and_exits_non_zero(signum, tmp_path, monkeypatch, capsys):
    from mfbench.bench import runner

    real = runner.run_matrix

    def stopping(*args, **kwargs):
        for i, measured in enumerate(real(*args, **kwargs)):
            if i == 1:
                os.kill(os.getpid(), signum)
            yield measured

    monkeypatch.setattr(runner, "run_matrix", stopping)
    code, out, err = _cli(capsys, "layers", "--cases", "smoke", "--device", "cpu", "--providers", "dense",
                          "--results-dir", tmp_path)
    assert code == 128 + signum, (out, err)
    assert f"interrupted by {signal.Signals(signum).name}: keeping the " in err
    new = results.load(tmp_path)
    kept = new[new["benchmark"] == "layer-kernel"]
    assert {json.loads(p)["direction"] for p in kept["params"]} == {"forward"}  # the second item never came
    assert len(new) > 0 and new["flags"].str.contains(results.PARTIAL).all()
    assert new["flags"].str.contains(f"interrupted:{signal.Signals(signum).name}").all()
