"""Which Triton the kernels run on, and what a run says when the installed Triton cannot run them."""

import re
from pathlib import Path

import pytest
import torch
import triton
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from triton.runtime.errors import InterpreterError

from mfbench.core import providers
from mfbench.store import results
from mfbench.bench import runner
from mfbench.bench.cases import Item
from mfbench.bench.measure import Bench
from mfbench.bench.measurement import Measurement, to_rows
from mfbench.instruments.ceilings import Ceilings
from mfbench.kernels import lookup as kernels
from mfbench.core.lookup import LookupSpec
from mfbench.core.model import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
# What Triton 3.9's interpreter raised for every launch before the kernels built their masks as blocks.
REFUSAL = "ValueError('mask has unsupported dtype')"


def test_pyproject_asks_for_the_tested_triton_range_and_this_triton_is_in_it():
    requirement = re.search(r'"triton([^";]*)[;"]', (ROOT / "pyproject.toml").read_text()).group(1)
    assert requirement == kernels.TESTED_TRITON
    # A Triton outside the range fails here first: run the kernel tests on it, then widen both.
    assert Version(triton.__version__) in SpecifierSet(kernels.TESTED_TRITON), triton.__version__


def test_the_provider_runs_on_this_triton_in_every_dtype_it_takes():
    for dtype in kernels.SUPPORTED_DTYPES:
        assert providers.unavailable("triton", "cpu", dtype) is None, dtype


@pytest.fixture
def refusing_triton(monkeypatch):
    """Every launch of the hash and decode kernels (the two first launches of a forward) fails the way
    Triton 3.9's interpreter failed; the provider's cached availability is recomputed before and after."""
    class Refusing:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise InterpreterError(REFUSAL)
            return launch

    monkeypatch.setattr(kernels, "_hash_kernel", Refusing())
    monkeypatch.setattr(kernels, "_decode_kernel", Refusing())
    providers.unavailable.cache_clear()
    providers.trial.cache_clear()  # the one cache of trial runs
    yield
    providers.unavailable.cache_clear()
    providers.trial.cache_clear()  # the one cache of trial runs


def _why_triton_fails() -> str:
    return f"triton {triton.__version__} could not run the lookup kernels (InterpreterError: {REFUSAL}); " \
           f"they are tested on triton{kernels.TESTED_TRITON}"


def test_a_triton_that_fails_is_named_with_the_tested_range(refusing_triton):
    with pytest.raises(kernels.TritonFailure) as caught:
        kernels.lookup_forward(torch.randn(3, 16), torch.randn(2, 256, 4), LookupSpec(8))
    assert str(caught.value) == _why_triton_fails()
    assert isinstance(caught.value.__cause__, InterpreterError)  # the original error stays attached
    assert providers.unavailable("triton") == "TritonFailure: " + _why_triton_fails()


def test_a_run_on_such_a_triton_says_why_in_the_row_and_on_stderr(refusing_triton, monkeypatch, capsys):
    def measure(item, bench):
        m = Measurement(item)
        m.add("time", 1e-3, "s")
        return m

    monkeypatch.setattr(runner, "measure", measure)
    cfg = ModelConfig.preset("micro")
    items = [Item("layer", d, 64, p, torch.float32, cfg=cfg) for d in ("forward", "backward") for p in ("triton", "dense")]
    bench = Bench(torch.device("cpu"), Ceilings("cpu", 1e10, 1e11, "float32", None, "-", "-", "-"), 0.0)
    run = results.Run.start("cpu")
    rows = [row for m in runner.run_matrix(items, bench, lambda line: None) for row in to_rows(m, run)]

    reason = "TritonFailure: " + _why_triton_fails()
    skipped = [r for r in rows if r["metric"] == "skipped"]
    assert [r["provider"] for r in skipped] == ["triton", "triton"]
    assert all(r["flags"] == reason.replace(",", ";") for r in skipped)
    assert [r["provider"] for r in rows if r["metric"] == "time"] == ["dense", "dense"]
    err = capsys.readouterr().err
    assert err.count(f"mfbench: triton skipped: {reason}\n") == 1, err  # once, not once per item
