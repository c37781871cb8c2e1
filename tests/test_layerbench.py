"""`mfbench layers`' driver (mfbench/layerbench.py)."""

import torch

from mfbench import layerbench
from mfbench.instruments.ceilings import Ceilings
from mfbench.instruments.timing import Timing


def test_on_a_gpu_every_case_is_timed_before_any_is_profiled(monkeypatch):
    order = []

    def time_callable(fn, device):
        order.append(("time", fn()))
        return Timing(1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 10, "triton.testing.do_bench", host_s=2e-4)

    def kernel_seconds(fn, device):
        name = fn()
        order.append(("kernels", name))
        if name == "reference":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return 1e-4

    monkeypatch.setattr(layerbench, "time_callable", time_callable)
    monkeypatch.setattr(layerbench, "kernel_seconds", kernel_seconds)
    monkeypatch.setattr(layerbench, "make_layer", lambda case, name, device, dtype: name)
    monkeypatch.setattr(layerbench, "random_input", lambda case, device, dtype, seed: (None, None))
    monkeypatch.setattr(layerbench, "timed_call", lambda layer, x, gy, direction: lambda: layer)
    monkeypatch.setattr(layerbench.providers, "readiness", lambda name, device, dtype: layerbench.providers.Readiness())
    cases = [layerbench.Case("forward", 64, 32, 32), layerbench.Case("backward", 64, 32, 32)]
    progress = []
    records = list(layerbench.run_cases(cases, ["reference", "dense"], "cuda", torch.float16,
                                        Ceilings("cuda", 1e12, 1e14, "float16", None, "-", "-", "-"),
                                        check=False, progress=progress.append))

    assert [what for what, _ in order] == ["time"] * 4 + ["kernels"] * 4
    assert [(r["direction"], r["provider"], r["kernel_s"]) for r in records] == [
        ("forward", "reference", None), ("forward", "dense", 1e-4),
        ("backward", "reference", None), ("backward", "dense", 1e-4)]
    assert sum("no kernel time: out of memory: OutOfMemoryError" in line for line in progress) == 2
