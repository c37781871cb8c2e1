"""``mfbench run``: a matrix of (benchmark x direction x sequence length x provider) measured into result rows.

Benchmarks: ``layer`` (one Memory Layer d -> d, or the nn.Linear it replaces), ``block`` (MemoryFormerBlock
or the dense block) and ``model`` (the whole LM). For blocks and models the ``dense`` provider means the
dense architecture; every other provider runs the MemoryFormer with its Memory Layers on that provider.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from mfbench.cost import flops
from mfbench.core import providers
from mfbench.core.lookup import input_checks
from mfbench.instruments.ceilings import Ceilings
from mfbench.instruments.energy import EnergyMeter, EnergyResult, idle_power, measure_energy
from mfbench.instruments.gpustate import GpuState, state_rows, throttle_flags
from mfbench.instruments.rapl import RaplMeter
from mfbench.instruments.memory import peak_memory
from mfbench.instruments.timing import (GRAPH_METHOD, beside, graph_samples, kernel_figure, kernel_seconds,
                                    summarise, time_callable)
from mfbench.cost.traffic import layer_traffic
from mfbench.core.model import DenseBlock, MemoryFormerBlock, MemoryLayer, ModelConfig
from mfbench.core.model import build as build_lm
from mfbench.store.results import Run, short_direction

BENCHMARKS = ("layer", "block", "model")


@dataclass(frozen=True)
class Preset:
    model: str
    seqs: dict[str, tuple[int, ...]]  # by device type
    items: tuple[tuple[str, str], ...]  # (benchmark, direction)
    energy_seconds: float = 1.0


PRESETS: dict[str, Preset] = {
    "smoke": Preset("micro", {"cpu": (64,), "cuda": (256,)},
                    (("layer", "forward"), ("layer", "backward"), ("block", "forward"), ("model", "forward")), 0.5),
    "default": Preset("tiny", {"cpu": (256, 1024), "cuda": (2048, 8192)},
                      (("layer", "forward"), ("layer", "backward"), ("block", "forward"), ("block", "backward"),
                       ("model", "forward"))),
    "paper": Preset("base", {"cpu": (2048,), "cuda": (2048,)},
                    (("layer", "forward"), ("layer", "backward"), ("block", "forward"), ("block", "backward"),
                     ("model", "forward"))),
}


@dataclass(frozen=True)
class Item:
    benchmark: str
    direction: str
    seq: int
    provider: str
    dtype: torch.dtype

    @property
    def label(self) -> str:
        return f"{self.benchmark:<5} {short_direction(self.direction)} s={self.seq:<6} {self.provider}"

    def params(self, cfg: ModelConfig) -> dict:
        return {"preset": cfg.name, "d": cfg.d_model, "tau": cfg.tau, "weighting": cfg.weighting, "seq": self.seq,
                "batch": 1, "direction": self.direction, "dtype": str(self.dtype).removeprefix("torch.")}


def plan(preset: Preset, device: torch.device, names: Iterable[str], seqs: Iterable[int] | None,
         dtype: torch.dtype, benchmarks: Iterable[str] | None = None) -> list[Item]:
    seqs = tuple(seqs) if seqs else preset.seqs["cuda" if device.type == "cuda" else "cpu"]
    wanted = set(benchmarks or BENCHMARKS)
    return [Item(b, d, s, p, dtype) for b, d in preset.items if b in wanted for s in seqs for p in names]


def build(item: Item, cfg: ModelConfig, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor]:
    """The module and input an item measures, on ``device`` in the item's dtype.

    For blocks and models the ``dense`` provider means the dense architecture; every other provider
    runs the MemoryFormer with all its Memory Layers on that provider.
    """
    dense = item.provider == "dense"
    # Parameters are initialised where they will live: a tiny MemoryFormer has 467M of them, 8 s of
    # CPU random-number work on two cores, paid again by every benchmark process.
    with torch.device(device):
        if item.benchmark == "layer":
            module = MemoryLayer(cfg.d_model, cfg.d_model, cfg.tau, cfg.temperature, cfg.weighting,
                                 provider=item.provider)
        elif item.benchmark == "block":
            module = DenseBlock(cfg) if dense else MemoryFormerBlock(cfg)
        else:
            module = build_lm("dense" if dense else "memoryformer", cfg)
    module = module.to(dtype=item.dtype)
    if not dense or item.benchmark == "layer":
        for m in module.modules():
            if isinstance(m, MemoryLayer):
                m.provider = item.provider
    if item.benchmark == "model":
        x = torch.randint(0, cfg.vocab_size, (1, item.seq), device=device)
    else:
        shape = (item.seq, cfg.d_model) if item.benchmark == "layer" else (1, item.seq, cfg.d_model)
        x = torch.randn(*shape, device=device, dtype=item.dtype)
    return module, x


def callable_for(item: Item, module: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """The call an item times: a no-grad forward, or a backward of one forward kept for repeated calls.
    Under ``torch.cuda.stream(s)`` the forward, and so its backward, runs on ``s`` (graph capture needs it)."""
    if item.direction == "forward":
        def forward() -> object:
            with torch.no_grad():
                return module(x)
        return forward
    inputs = [x.requires_grad_()] if x.is_floating_point() else []
    params = [p for p in module.parameters() if p.requires_grad]
    y = module(x)
    gy = torch.randn_like(y)

    def backward() -> object:
        return torch.autograd.grad(y, inputs + params, gy, retain_graph=True, allow_unused=True)
    return backward


def analytic_flops(item: Item, cfg: ModelConfig) -> int:
    """2-per-multiply-add FLOPs from mfbench.cost.flops; a backward pass counts twice its forward."""
    s, d, dense = item.seq, cfg.d_model, item.provider == "dense"
    if item.benchmark == "layer":
        count = flops.linear(s, d, d) if dense else flops.memory_layer(s, d, d, cfg.tau, cfg.weighting)
    elif item.benchmark == "block":
        count = flops.dense_block(s, d) if dense else flops.memoryformer_block(s, cfg)
    else:
        count = flops.model("dense" if dense else "memoryformer", s, cfg)
    return count.flops("2mac") * (2 if item.direction == "backward" else 1)


# Relative cost of a provider per unit of work, for balancing shards of a distributed run: rough factors
# from the runs in results/ (the CPU interpreter runs Triton a program at a time; torch.compile compiles
# afresh for every shape).
PROVIDER_COST = {"cpu": {"triton": 30.0, "compiled": 10.0}, "cuda": {"compiled": 8.0}}
BENCHMARK_COST = {"layer": 1.0, "block": 4.0, "model": 24.0}


def cost_estimate(item: Item, cfg: ModelConfig, device: torch.device) -> float:
    """A rough, deterministic cost of measuring ``item`` (only ever compared with other items' costs)."""
    factor = PROVIDER_COST.get(device.type, {}).get(item.provider, 1.0)
    # Mostly a fixed part per item (build, warm-up, timing, a 1 s energy window, a memory pass), plus a
    # smaller part that grows with the work.
    work = BENCHMARK_COST[item.benchmark] * (3.0 if item.direction == "backward" else 1.0) * item.seq / 2048
    return factor * (1.0 + 0.05 * work)


def prepare_on_stream(item: Item, cfg: ModelConfig, device: torch.device) -> tuple[Callable[[], object], object]:
    """(call, stream) of a fresh build of ``item``: on a GPU built on a side stream of its own, so that a
    backward (which replays on the stream of its forward) can be captured in a CUDA graph there."""
    if device.type != "cuda":
        module, x = build(item, cfg, device)
        return callable_for(item, module, x), None
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        module, x = build(item, cfg, device)
        fn = callable_for(item, module, x)
    return fn, stream


GRAPH_CALLS, GRAPH_REPLAYS = 10, 10


def graph_seconds(item: Item, cfg: ModelConfig, device: torch.device) -> tuple[list[float] | None, str]:
    """Per-call seconds of ``item`` replayed as a CUDA graph (what a deployment that captures its calls
    pays, host left out), or None and why it could not be captured."""
    try:
        fn, stream = prepare_on_stream(item, cfg, device)
        return graph_samples(fn, device, GRAPH_CALLS, GRAPH_REPLAYS, stream), ""
    except Exception as exc:  # noqa: BLE001 - a call that synchronises or allocates on the host
        return None, failure(exc)
    finally:
        fn = stream = None
        torch.cuda.empty_cache()


def measure_item(item: Item, cfg: ModelConfig, run: Run, device: torch.device, ceilings: Ceilings,
                 meter: EnergyMeter, idle: EnergyResult | None, energy_seconds: float,
                 rapl: RaplMeter | None = None) -> list[dict]:
    """Every metric of one matrix entry as result rows (time, throughput, FLOPs, bytes, energy, memory,
    and on a GPU its state around the timing and the graph-replay time)."""
    module, x = build(item, cfg, device)
    fn = callable_for(item, module, x)
    params = item.params(cfg)
    rows: list[dict] = []
    gpu = device.type == "cuda"

    def add(metric: str, value: float, unit: str, **kw) -> None:
        rows.append(run.row(item.benchmark, params, item.provider, metric, value, unit, **kw))

    if item.benchmark == "layer":  # the budget is per call of the provider: a layer's call is one
        providers.within_budget(item.provider, fn)
    before = GpuState.read(device) if gpu else None
    timing = time_callable(fn, device)
    graph, why_not = graph_seconds(item, cfg, device) if gpu else (None, "")
    after = GpuState.read(device) if gpu else None
    state = throttle_flags(before, after) if gpu else []
    flags = (["nonpositive-time"] if timing.median_s <= 0 else []) + (["host-bound"] if timing.host_bound else [])
    add("time", timing.median_s, "s", spread_low=timing.q1_s, spread_high=timing.q3_s, spread_kind="iqr",
        samples=timing.samples, flags=flags + providers.caveats(item.provider) + state)
    for metric, value, unit, why in beside(timing):
        add(metric, value, unit, flags=why)
    if gpu:
        if graph:
            g = summarise(graph, GRAPH_METHOD)
            add("graph_time", g.median_s, "s", spread_low=g.q1_s, spread_high=g.q3_s, spread_kind="iqr",
                samples=g.samples, flags=[GRAPH_METHOD] + state)
        else:
            add("graph_time", float("nan"), "s", flags=[f"unavailable: not capturable: {why_not}".replace(",", ";")])
        for metric, value, unit, why in state_rows(before, after):
            add(metric, value, unit, flags=why)
    add("tokens_per_s", item.seq / timing.median_s, "token/s")
    work = analytic_flops(item, cfg)
    add("flops_analytic", work, "FLOP", flags=["2-per-mac"])
    add("flops_per_s", work / timing.median_s, "FLOP/s")
    if item.provider in ("reference", "dense") and item.direction == "forward":
        from mfbench.cost.flops import count_flops

        add("flops_counted", count_flops(fn), "FLOP", flags=["FlopCounterMode"])
    if item.benchmark == "layer":
        elem = torch.finfo(item.dtype).bits // 8
        traffic = layer_traffic(item.seq, cfg.d_model, cfg.d_model, cfg.tau, elem, item.direction,
                                dense=item.provider == "dense")
        gbps = traffic.hbm_bytes / timing.median_s
        add("hbm_bytes_min", traffic.hbm_bytes, "B")
        add("achieved_bandwidth", gbps, "B/s", flags=["above-copy-ceiling"] if gbps > ceilings.copy_bytes_per_s else [])
        add("pct_of_copy_ceiling", 100 * gbps / ceilings.copy_bytes_per_s, "%")
        add("arithmetic_intensity", traffic.intensity, "FLOP/B")
        roof = min(ceilings.matmul_flops_per_s, traffic.intensity * ceilings.copy_bytes_per_s)
        pct = 100 * (traffic.flops / timing.median_s) / roof
        # above the roofline is as impossible as above the copy ceiling: the ceilings are too low
        add("pct_of_roofline", pct, "%", flags=["above-roofline"] if pct > 100 else [])
    rapl = rapl if rapl is not None else RaplMeter()
    energy = measure_energy(fn, device, energy_seconds, meter, rapl)
    if energy.available:
        below = idle is not None and idle.watts is not None and energy.joules < 0.9 * idle.watts * energy.seconds
        eflags = [energy.method] + (["energy-below-idle"] if below else [])
        add("energy_per_call", energy.joules_per_call, "J", samples=energy.calls, flags=eflags)
        add("energy_per_token", energy.joules_per_call / item.seq, "J/token", samples=energy.calls, flags=eflags)
        add("power", energy.watts, "W", flags=eflags)
        if idle is not None and idle.watts is not None:
            net = (energy.joules - idle.watts * energy.seconds) / energy.calls / item.seq
            add("energy_per_token_net", net, "J/token", samples=energy.calls, flags=eflags + ["net-of-idle"])
    else:
        add("energy_per_token", float("nan"), "J/token", flags=["unavailable: " + str(energy.reason).replace(",", ";")])
    for metric, value, why in cpu_energy(energy, idle, item.seq, rapl):
        add(metric, value, "J/token", samples=energy.calls if value == value else None, flags=why)
    mem = peak_memory(fn, device)
    add("peak_memory", mem.bytes, "B", flags=[mem.method])
    return rows


def failure(exc: Exception) -> str:
    """A measurement's exception in one line, for a 'skipped' row or a progress message."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{'out of memory' if isinstance(exc, torch.OutOfMemoryError) else 'failed'}: {type(exc).__name__}: {first}"


def cpu_energy(energy: EnergyResult, idle: EnergyResult | None, seq: int, rapl: RaplMeter) -> list[tuple[str, float, list[str]]]:
    """(metric, J/token, flags) of the CPU package's and DRAM's energy in the measurement's window, gross and
    net of their idle draw; one NaN row with the reason where RAPL cannot be read."""
    window = energy.cpu
    if window is None or not window.joules:
        reason = window.reason if window is not None else rapl.reason or "no energy window ran"
        return [("cpu_package_energy_per_token", float("nan"), [f"unavailable: {reason}".replace(",", ";")])]
    out = []
    idle_cpu = idle.cpu if idle is not None and idle.cpu is not None and idle.cpu.joules else None
    for domain, joules in window.joules.items():
        name = "cpu_package" if domain == "package" else domain
        out.append((f"{name}_energy_per_token", joules / energy.calls / seq, ["rapl"]))
        if idle_cpu is not None and domain in idle_cpu.joules:
            watts = idle_cpu.joules[domain] / idle_cpu.seconds
            out.append((f"{name}_energy_per_token_net", (joules - watts * window.seconds) / energy.calls / seq,
                        ["rapl", "net-of-idle"]))
    return out


def kernel_rows(item: Item, cfg: ModelConfig, run: Run, device: torch.device) -> list[dict]:
    """The item's ``kernel_time`` row, from a fresh build (none off a GPU). It runs the profiler, so it
    belongs after every other measurement of the process (``measure.timing``)."""
    module, x = build(item, cfg, device)
    seconds = kernel_seconds(callable_for(item, module, x), device)
    if seconds is None:
        return []
    metric, value, unit, flags = kernel_figure(seconds)
    return [run.row(item.benchmark, item.params(cfg), item.provider, metric, value, unit, flags=flags)]


def kernel_pass(items: list[Item], cfg: ModelConfig, run: Run, device: torch.device,
                progress: Callable[[str], None] = print) -> Iterator[tuple[Item, list[dict]]]:
    """(item, its ``kernel_rows``) for every item, last: one item failing here loses its kernel time only."""
    if device.type != "cuda" or not items:
        return
    progress(f"kernel times of the {len(items)} items, after every other measurement (the profiler stays "
             "attached to the process and would slow later launches)")
    with input_checks(False):
        for i, item in enumerate(items, 1):
            try:
                rows = kernel_rows(item, cfg, run, device)
            except Exception as exc:
                progress(f"[{i}/{len(items)}] {item.label}  no kernel time ({failure(exc)})")
                torch.cuda.empty_cache()
                continue
            shown = f"{rows[0]['value'] * 1e3:.4g} ms of kernels" if rows else "no device work recorded"
            progress(f"[{i}/{len(items)}] {item.label}  {shown}")
            yield item, rows


def ceiling_rows(run: Run, ceilings: Ceilings) -> list[dict]:
    """The machine's measured ceilings as rows, so rooflines can be drawn from the tables alone."""
    params = {"measured_utc": ceilings.measured_utc, "matmul_dtype": ceilings.matmul_dtype}
    return [
        run.row("ceiling", params, "-", "copy_bandwidth", ceilings.copy_bytes_per_s, "B/s"),
        run.row("ceiling", params, "-", "matmul_rate", ceilings.matmul_flops_per_s, "FLOP/s"),
        run.row("ceiling", params, "-", "onchip_bandwidth", ceilings.onchip_bytes_per_s or float("nan"), "B/s",
                flags=[ceilings.onchip_how.replace(",", ";")]),
    ]


def run_matrix(items: Iterable[Item], cfg: ModelConfig, run: Run, device: torch.device, ceilings: Ceilings,
               energy_seconds: float, progress: Callable[[str], None] = print) -> Iterator[dict]:
    """Measure every item, yielding rows as they come; a provider that cannot run here becomes a ``skipped``
    row with the reason, one that should and fails (``providers.readiness``) a ``failed`` row, instead of
    stopping the run."""
    yield from ceiling_rows(run, ceilings)
    meter, rapl = EnergyMeter(device), RaplMeter()
    idle = None
    if meter.available or rapl.available:
        idle = idle_power(device, 1.0, meter, rapl)
        if meter.available:
            yield run.row("idle", {"seconds": round(idle.seconds, 3)}, "-", "power", idle.watts, "W", flags=[idle.method])
        for domain, joules in (idle.cpu.joules or {}).items() if idle.cpu else ():
            yield run.row("idle", {"seconds": round(idle.cpu.seconds, 3)}, "-", f"{domain}_power",
                          joules / idle.cpu.seconds, "W", flags=["rapl"])
    total, start = (len(items) if hasattr(items, "__len__") else "?"), time.perf_counter()
    measured: list[Item] = []
    warned: set[tuple[str, str]] = set()
    with input_checks(False):
        for i, item in enumerate(items, 1):
            head = f"[{i}/{total}] {item.label}"
            # skipped: this machine cannot run it; failed: it should and does not (raises, wrong shape,
            # dtype or values, over its time budget), which fails the run
            reason, fault = providers.readiness(item.provider, str(device), item.dtype)
            if reason is None and fault is None:
                try:
                    rows = measure_item(item, cfg, run, device, ceilings, meter, idle, energy_seconds, rapl)
                except Exception as exc:  # one failure must not lose the rest of the run
                    reason, fault = (failure(exc), None) if providers.skips(exc) else (None, failure(exc))
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            if reason is not None or fault is not None:
                metric, why = ("skipped", reason) if fault is None else ("failed", fault)
                progress(f"{head}  {metric} ({why})")
                if (item.provider, why) not in warned:  # on stderr too (once), so a skip never goes unseen
                    warned.add((item.provider, why))
                    print(f"mfbench: {item.provider} {metric}: {why}", file=sys.stderr, flush=True)
                yield run.row(item.benchmark, item.params(cfg), item.provider, metric, float("nan"), "",
                              flags=[why.replace(",", ";")])
                continue
            t = next(r["value"] for r in rows if r["metric"] == "time")
            energy = next((r["value"] for r in rows if r["metric"] == "energy_per_token"), float("nan"))
            joules = "" if energy != energy else f"  {energy * 1e6:.3g} uJ/token"
            progress(f"{head}  {t * 1e3:.4g} ms{joules}  ({time.perf_counter() - start:.0f}s elapsed)")
            measured.append(item)
            yield from rows
    for _, rows in kernel_pass(measured, cfg, run, device, progress):
        yield from rows
