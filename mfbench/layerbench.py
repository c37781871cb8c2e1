"""The Memory Layer benchmark: every provider at fixed shapes, against its floor and the dense layer.

For each case (direction, tokens, in/out features, tau) and provider this checks the output against a
float64 reference on fresh random input, then times the call (median, spread) and sets the time beside
the floor implied by the machine's measured ceilings (``mfbench.measure.traffic``). The suites, the CLI
(``mfbench layers``) and the GPU scripts all run through ``run_cases``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator

import torch

from mfbench import providers
from mfbench.results import short_direction
from mfbench.lookup import reference_lookup
from mfbench.measure.ceilings import Ceilings
from mfbench.measure.timing import kernel_seconds, time_callable
from mfbench.measure.traffic import floor_seconds, layer_traffic
from mfbench.model import MemoryLayer
from mfbench.runner import failure

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# ||out - ref|| / ||ref|| allowed against float64, by the dtype of inputs and outputs.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-5}


@dataclass(frozen=True)
class Case:
    direction: str
    tokens: int
    in_features: int
    out_features: int
    tau: int = 8
    weighting: str = "paper"
    target_ms: float | None = None

    @property
    def name(self) -> str:
        return f"{short_direction(self.direction)} s={self.tokens} d={self.in_features} h={self.out_features} tau={self.tau}"


CASES: dict[str, list[Case]] = {
    # The shapes of the kernels-v2 issue (fp16, tau = 8). A target is the issue's own where it set one,
    # else the authors' released CUDA kernels' time on the H200 (../shared/MEMORYFORMER.md; their hash
    # not included, ours is).
    "gpu": [
        Case("forward", 2048, 2048, 2048, target_ms=0.20),
        Case("forward", 8192, 2048, 2048, target_ms=1.47),
        Case("forward", 32768, 512, 512, target_ms=0.299),
        Case("forward", 32768, 2048, 2048, target_ms=6.66),
        Case("forward", 2048, 512, 512, target_ms=0.029),
        Case("backward", 2048, 2048, 2048, target_ms=0.5),
        Case("backward", 32768, 512, 512, target_ms=1.0),
        Case("backward", 2048, 512, 512, target_ms=0.150),
    ],
    # MemoryFormer-base's own layers at s = 2048: Q/K/V (d -> 3d, hashed once), Memory Block 1 and 2.
    "paper": [
        Case("forward", 2048, 1024, 3072), Case("forward", 2048, 1024, 1280),
        Case("forward", 2048, 1280, 1024, tau=10),
        Case("backward", 2048, 1024, 3072), Case("backward", 2048, 1280, 1024, tau=10),
    ],
    # The last: issue 18's CPU shape, where the answer (lookup against dense) depends on the CPU model.
    "cpu": [
        Case("forward", 2048, 512, 512), Case("backward", 2048, 512, 512), Case("forward", 8192, 512, 512),
    ],
    "smoke": [Case("forward", 256, 64, 64), Case("backward", 256, 64, 64)],
}


def make_layer(case: Case, provider: str, device: torch.device, dtype: torch.dtype) -> MemoryLayer:
    layer = MemoryLayer(case.in_features, case.out_features, case.tau, weighting=case.weighting, bias=False,
                        provider=provider)
    return layer.to(device=device, dtype=dtype)


def random_input(case: Case, device: torch.device, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh normal x (tokens, in) and dL/dy (tokens, out): never zeros, which hide unwritten output."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(case.tokens, case.in_features, device=device, dtype=dtype, generator=g)
    gy = torch.randn(case.tokens, case.out_features, device=device, dtype=dtype, generator=g)
    return x, gy


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf where out has a NaN or Inf."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def relative_errors(layer: MemoryLayer, x: torch.Tensor, gy: torch.Tensor, direction: str) -> dict[str, float]:
    """||out - ref|| / ||ref|| against a float64 reference, for y or for both gradients."""
    spec = layer.spec
    x64 = x.detach().double().requires_grad_(direction == "backward")
    t64 = layer.tables.detach().double().requires_grad_(direction == "backward")
    xr = x.detach().clone().requires_grad_(direction == "backward")
    if direction == "forward":
        with torch.no_grad():
            return {"y": relative_error(providers.get(layer.provider).fn(layer, xr), reference_lookup(x64, t64, spec))}
    y = providers.get(layer.provider).fn(layer, xr)
    gx, gt = torch.autograd.grad(y, (xr, layer.tables), gy)
    rgx, rgt = torch.autograd.grad(reference_lookup(x64, t64, spec), (x64, t64), gy.double())
    return {"grad_x": relative_error(gx, rgx), "grad_tables": relative_error(gt, rgt)}


def timed_call(layer: MemoryLayer, x: torch.Tensor, gy: torch.Tensor, direction: str) -> Callable[[], object]:
    """The provider's own call on ``layer`` (no module wrapper): a no-grad forward, or a backward of one
    forward kept for repeated calls."""
    fn = providers.get(layer.provider).fn
    if direction == "forward":
        def forward() -> object:
            with torch.no_grad():
                return fn(layer, x)
        return forward
    xr = x.detach().requires_grad_(True)
    params = (xr, layer.dense_weight() if layer.provider == "dense" else layer.tables)
    y = fn(layer, xr)

    def backward() -> object:
        return torch.autograd.grad(y, params, gy, retain_graph=True)
    return backward


def run_cases(cases: Iterable[Case], names: Iterable[str], device: torch.device | str, dtype: torch.dtype,
              ceilings: Ceilings, check: bool = True, seed: int = 0,
              progress: Callable[[str], None] = lambda msg: None) -> Iterator[dict]:
    """Yield one record per (case, provider): errors, timing, floor, and why a provider was skipped. On a
    GPU the records come after a last pass that adds each one's kernel time (``kernel_s``): the profiler
    it runs would slow every launch timed after it (see ``measure.timing``)."""
    device = torch.device(device)
    names = list(names)
    records: list[dict] = []
    timed: list[tuple[dict, Case, str, int]] = []  # what the kernel pass rebuilds: record, case, provider, seed
    for i, case in enumerate(cases):
        for record, name in _time_case(case, names, device, dtype, ceilings, check, seed + i, progress):
            records.append(record)
            if "median_ms" in record:
                timed.append((record, case, name, seed + i))
    if device.type == "cuda" and timed:
        progress(f"kernel times of the {len(timed)} timed calls, after every other measurement")
        for record, case, name, case_seed in timed:
            try:
                x, gy = random_input(case, device, dtype, case_seed)
                record["kernel_s"] = kernel_seconds(timed_call(make_layer(case, name, device, dtype), x, gy,
                                                                case.direction), device)
            except Exception as exc:  # the record keeps its other figures
                progress(f"  {case.name:<40} {name:<14} no kernel time: {failure(exc)}")
                torch.cuda.empty_cache()
    yield from records


def _time_case(case: Case, names: list[str], device: torch.device, dtype: torch.dtype, ceilings: Ceilings,
               check: bool, seed: int, progress: Callable[[str], None]) -> Iterator[tuple[dict, str]]:
    """(record, provider) of one case through every provider: errors, timing, floor, or why it was skipped."""
    elem = torch.finfo(dtype).bits // 8
    x, gy = random_input(case, device, dtype, seed)
    for name in names:
        record = {"case": case.name, "direction": case.direction, "tokens": case.tokens,
                  "in_features": case.in_features, "out_features": case.out_features, "tau": case.tau,
                  "weighting": case.weighting, "provider": name, "dtype": str(dtype).removeprefix("torch."),
                  "target_ms": case.target_ms}
        # skipped: this machine cannot run it; failed: it should and does not (providers.readiness)
        reason, fault = providers.readiness(name, str(device), dtype)
        if reason or fault:
            progress(f"  {case.name:<40} {name:<14} {'skipped' if reason else 'FAILED'}: {reason or fault}")
            yield ({**record, "skipped": reason} if reason else {**record, "failed": fault}), name
            continue
        progress(f"  {case.name:<40} {name:<14} ...")
        try:
            layer = make_layer(case, name, device, dtype)
            if check and providers.get(name).exact:
                record.update({f"rel_err_{k}": v for k, v in relative_errors(layer, x, gy, case.direction).items()})
            call = timed_call(layer, x, gy, case.direction)
            providers.within_budget(name, call)
            timing = time_callable(call, device)
        except Exception as exc:  # one provider failing must not lose the other records
            reason = failure(exc)
            progress(f"  {case.name:<40} {name:<14} {reason}")
            yield {**record, ("skipped" if providers.skips(exc) else "failed"): reason}, name
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        traffic = layer_traffic(case.tokens, case.in_features, case.out_features, case.tau, elem,
                                case.direction, dense=(name == "dense"))
        floor_s, bound = floor_seconds(traffic, ceilings)
        record.update(timing.as_dict(), host_bound=timing.host_bound, caveats=",".join(providers.caveats(name)))
        record.update(
            median_ms=timing.median_s * 1e3, floor_ms=floor_s * 1e3, floor_bound=bound,
            fraction_of_floor=floor_s / timing.median_s, hbm_bytes=traffic.hbm_bytes,
            onchip_bytes=traffic.onchip_bytes, flops=traffic.flops,
            hbm_gbps=traffic.hbm_bytes / timing.median_s / 1e9,
            within_tolerance=all(v <= TOLERANCE[dtype] for k, v in record.items() if k.startswith("rel_err_")),
            # The targets are the Triton kernels' (kernels issue); other providers are shown for scale.
            met_target=None if case.target_ms is None or name != "triton" else timing.median_s * 1e3 <= case.target_ms,
        )
        if not record["within_tolerance"]:  # timed, and never a pass
            worst = max((k for k in record if k.startswith("rel_err_")), key=lambda k: record[k])
            record["failed"] = (f"float64 check: relative error of {worst.removeprefix('rel_err_')} "
                                f"{record[worst]:.2g} is above the {record['dtype']} tolerance {TOLERANCE[dtype]:g}")
        if name == "triton":
            from mfbench.kernels.lookup import last_config

            record["kernel_config"] = last_config(case.direction)
        del layer
        yield record, name


def with_weighting(cases: Iterable[Case], weighting: str) -> list[Case]:
    return [replace(c, weighting=weighting) for c in cases]
