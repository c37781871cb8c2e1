"""The one measure function (``measure``: every figure of one item) and the one kernel pass (``kernel_pass``:
the kernels' own device time, after every other measurement of the process)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from mfbench.bench.cases import DECODE_BENCHMARKS, DECODE_MODEL, LAYER_BENCHMARKS, Item
from mfbench.bench.measurement import HOST_BOUND, Measurement
from mfbench.bench.subject import build, callable_for, prepare, prepare_on_stream
from mfbench.core import providers, signals
from mfbench.core.lookup import input_checks
from mfbench.core.model import MemoryLayer
from mfbench.cost import flops
from mfbench.cost.traffic import Traffic, decode_step_traffic, floor_seconds, layer_traffic
from mfbench.instruments.ceilings import Ceilings
from mfbench.instruments.energy import EnergyMeter, EnergyResult, idle_power, measure_energy
from mfbench.instruments.gpustate import GpuState, state_rows, throttle_flags
from mfbench.instruments.memory import peak_memory
from mfbench.instruments.rapl import RaplMeter
from mfbench.instruments.timing import (GRAPH_METHOD, NotCapturable, graph_samples, kernel_figure, kernel_seconds, summarise,
                                        time_callable)
from mfbench.store.results import Run

GRAPH_CALLS, GRAPH_REPLAYS = 10, 10


@dataclass
class Bench:
    """What a run measures with: the device, its ceilings, the energy meters and the idle draw they are
    set against, how long each energy window lasts (0: no energy figures) and whether exact providers'
    layer-kernel items are checked against float64 first."""

    device: torch.device
    ceilings: Ceilings
    energy_seconds: float = 1.0
    check: bool = False
    meter: EnergyMeter | None = None
    rapl: RaplMeter | None = None
    idle: EnergyResult | None = None

    @classmethod
    def start(cls, device: torch.device, ceilings: Ceilings, energy_seconds: float = 1.0, check: bool = False,
              idle: bool = True) -> "Bench":
        """Open the meters and, where one can be read and energy is measured, the idle draw over a second."""
        bench = cls(device, ceilings, energy_seconds, check)
        if energy_seconds > 0:
            bench.meter, bench.rapl = EnergyMeter(device), RaplMeter()
            if idle and (bench.meter.available or bench.rapl.available):
                bench.idle = idle_power(device, 1.0, bench.meter, bench.rapl)
        return bench

    def machine_rows(self, run: Run) -> list[dict]:
        """The machine's measured ceilings and idle draw as rows, so rooflines and net energy can be drawn
        from the tables alone."""
        c = self.ceilings
        params = {"measured_utc": c.measured_utc, "matmul_dtype": c.matmul_dtype}
        rows = [run.row("ceiling", params, "-", "copy_bandwidth", c.copy_bytes_per_s, "B/s"),
                run.row("ceiling", params, "-", "matmul_rate", c.matmul_flops_per_s, "FLOP/s"),
                run.row("ceiling", params, "-", "onchip_bandwidth", c.onchip_bytes_per_s or float("nan"), "B/s",
                        flags=[c.onchip_how])]
        idle = self.idle
        if idle is not None and self.meter is not None and self.meter.available:
            rows.append(run.row("idle", {"seconds": round(idle.seconds, 3)}, "-", "power", idle.watts, "W",
                                flags=[idle.method]))
        for domain, joules in (idle.cpu.joules or {}).items() if idle is not None and idle.cpu else ():
            rows.append(run.row("idle", {"seconds": round(idle.cpu.seconds, 3)}, "-", f"{domain}_power",
                                joules / idle.cpu.seconds, "W", flags=["rapl"]))
        return rows


def analytic_flops(item: Item) -> int:
    """2-per-multiply-add FLOPs from mfbench.cost.flops; a backward pass counts twice its forward."""
    s, dense = item.seq, providers.get(item.provider).baseline
    if item.benchmark in LAYER_BENCHMARKS:
        d_in, d_out, tau, weighting = item.shape
        count = flops.linear(s, d_in, d_out) if dense else flops.memory_layer(s, d_in, d_out, tau, weighting)
    elif item.benchmark == "block":
        count = flops.dense_block(s, item.cfg.d_model) if dense else flops.memoryformer_block(s, item.cfg)
    elif item.benchmark == DECODE_MODEL:  # s sequences of one token each
        count = flops.model("dense" if dense else "memoryformer", 1, item.cfg, past=item.cache) * s
    else:
        count = flops.model("dense" if dense else "memoryformer", s, item.cfg)
    return count.flops("2mac") * (1 if item.direction == "forward" else 2)


def graph_seconds(item: Item, device: torch.device) -> tuple[list[float] | None, str]:
    """Per-call seconds of ``item`` replayed as a CUDA graph (what a deployment that captures its calls
    pays, host left out), or None and why it could not be captured."""
    try:
        fn, stream = prepare_on_stream(item, device)
        return graph_samples(fn, device, GRAPH_CALLS, GRAPH_REPLAYS, stream), ""
    except NotCapturable as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a call that allocates on the host, or fails under capture
        return None, providers.failure(exc)
    finally:
        fn = stream = None
        torch.cuda.empty_cache()


def first_call(item: Item, subject) -> Callable[[], object]:
    """The item's call, called once first as every measured shape is (a backward's forward too): within the
    provider's time budget (per call of the provider: a layer's call is one), its output finite, and its
    input and (but for a training step) the parameters left as they were. Later calls are timed unchecked."""
    budgeted = item.benchmark in LAYER_BENCHMARKS
    watched = {"its input x": subject.x}
    if item.direction != "train":
        watched.update((f"layer.{name}" if isinstance(subject.module, MemoryLayer) else f"parameter {name}", p)
                       for name, p in subject.module.named_parameters())
    where = f" at {item.seq} tokens"
    if item.direction == "backward":  # the output it differentiates, checked too (an Inf has finite gradients)
        providers.checked_call(item.provider, callable_for("forward", subject), watched, budgeted, where)
    with providers.deadline(providers.budget(item.provider) if budgeted else None, "the forward of a backward"):
        fn = callable_for(item.direction, subject)  # a backward's forward runs here
    providers.checked_call(item.provider, fn, watched, budgeted, where)
    return fn


def measure(item: Item, bench: Bench) -> Measurement:
    """Every figure of one item: time (and on a GPU its graph replay and the GPU's state around it),
    throughput, FLOPs, bytes and floors of a layer, float64 errors where checked, energy, peak memory."""
    device, m = bench.device, Measurement(item)
    provider = providers.get(item.provider)
    subject = build(item, device)
    fn = first_call(item, subject)
    if bench.check and item.benchmark in LAYER_BENCHMARKS and provider.exact:
        gy = subject.gy if subject.gy is not None else torch.randn(item.seq, subject.module.out_features,
                                                                   device=device, dtype=item.dtype)
        m.errors = providers.relative_errors(subject.module, subject.x, gy, item.direction)
    gpu = device.type == "cuda"
    before = GpuState.read(device) if gpu else None
    m.timing = time_callable(fn, device)
    graph, why_not = graph_seconds(item, device) if gpu else (None, "")
    after = GpuState.read(device) if gpu else None
    state = throttle_flags(before, after) if gpu else []
    m.config = provider.last_config(item.direction) if provider.last_config is not None else None
    m.time_flags = tuple((["nonpositive-time"] if m.timing.median_s <= 0 else [])
                         + ([HOST_BOUND] if m.timing.host_bound else []) + providers.caveats(item.provider) + state)
    if gpu:
        _gpu_figures(m, graph, why_not, state, before, after)
    _work_figures(m, fn, bench)
    _check_figures(m)
    if bench.energy_seconds > 0:
        _energy_figures(m, fn, bench)
    mem = peak_memory(fn, device)
    m.add("peak_memory", mem.bytes, "B", [mem.method])
    if item.benchmark in DECODE_BENCHMARKS:  # what a user choosing MemoryFormer to decode pays in memory
        m.add("parameter_bytes", parameter_bytes(subject.module, provider.baseline and item.case is not None), "B")
    return m


def parameter_bytes(module: torch.nn.Module, dense_layer: bool = False) -> int:
    """The bytes of what the call reads as parameters: a layer's tables, or its dense weight where the
    baseline runs it (``dense_layer``: the Memory Layer module then holds both); a model's every parameter."""
    if dense_layer:
        return module.dense_weight().numel() * module.dense_weight().element_size()
    return sum(p.numel() * p.element_size() for name, p in module.named_parameters()
               if not (isinstance(module, MemoryLayer) and name.startswith("dense.")))


def _gpu_figures(m: Measurement, graph: list[float] | None, why_not: str, state: list[str], before, after) -> None:
    if graph:
        g = summarise(graph, GRAPH_METHOD)
        m.add("graph_time", g.median_s, "s", [GRAPH_METHOD] + state, (g.q1_s, g.q3_s), g.samples)
    else:
        m.add("graph_time", float("nan"), "s", [f"unavailable: not capturable: {why_not}"])
    for metric, value, unit, why in state_rows(before, after):
        m.add(metric, value, unit, why)


def _work_figures(m: Measurement, fn: Callable[[], object], bench: Bench) -> None:
    """Throughput and FLOPs; for a layer its modelled bytes, bandwidth, roofline and floor."""
    item, t, ceil = m.item, m.timing.median_s, bench.ceilings
    provider = providers.get(item.provider)
    m.add("tokens_per_s", item.seq / t, "token/s")
    work = analytic_flops(item)
    m.add("flops_analytic", work, "FLOP", ["2-per-mac"])
    m.add("flops_per_s", work / t, "FLOP/s")
    if (provider.reference or provider.baseline) and item.direction == "forward":  # plain torch ops: countable
        m.add("flops_counted", flops.count_flops(fn), "FLOP", ["FlopCounterMode"])
    traffic = item_traffic(item, provider.baseline)
    if traffic is None:
        return
    bandwidth = traffic.hbm_bytes / t
    m.add("hbm_bytes_min", traffic.hbm_bytes, "B")
    m.add("achieved_bandwidth", bandwidth, "B/s", ["above-copy-ceiling"] if bandwidth > ceil.copy_bytes_per_s else [])
    m.add("pct_of_copy_ceiling", 100 * bandwidth / ceil.copy_bytes_per_s, "%")
    m.add("arithmetic_intensity", traffic.intensity, "FLOP/B")
    roof = min(ceil.matmul_flops_per_s, traffic.intensity * ceil.copy_bytes_per_s)
    pct = 100 * (traffic.flops / t) / roof
    # above the roofline is as impossible as above the copy ceiling: the ceilings are too low
    m.add("pct_of_roofline", pct, "%", ["above-roofline"] if pct > 100 else [])
    m.floor = floor_seconds(traffic, ceil)
    m.add("floor_time", m.floor[0], "s", [f"floor:{m.floor[1]}"])
    m.add("fraction_of_floor", m.floor[0] / t, "")


def item_traffic(item: Item, dense: bool) -> Traffic | None:
    """The modelled bytes and FLOPs of a layer's call or a decode step (``cost.traffic``); None for others."""
    elem = torch.finfo(item.dtype).bits // 8
    if item.benchmark == DECODE_MODEL:
        return decode_step_traffic("dense" if dense else "memoryformer", item.cfg, item.seq, item.cache, elem)
    if item.benchmark not in LAYER_BENCHMARKS:
        return None
    d_in, d_out, tau, _ = item.shape
    return layer_traffic(item.seq, d_in, d_out, tau, elem, item.direction, dense=dense)


def _check_figures(m: Measurement) -> None:
    """The float64 check's errors as figures; one above the dtype's tolerance fails the item (timed, and
    never a pass)."""
    for name, err in m.errors.items():
        m.add(f"rel_error_{name}", err, "")
    # NaN is the worst error: max() by value would pass over it wherever it does not come first
    worst = max(m.errors, key=lambda k: math.inf if m.errors[k] != m.errors[k] else m.errors[k]) if m.errors else None
    if worst is not None:
        m.failed = providers.tolerance_breach(worst, m.errors[worst], m.item.dtype) or m.failed


def _energy_figures(m: Measurement, fn: Callable[[], object], bench: Bench) -> None:
    seq, idle = m.item.seq, bench.idle
    rapl = bench.rapl if bench.rapl is not None else RaplMeter()
    energy = measure_energy(fn, bench.device, bench.energy_seconds, bench.meter, rapl)
    if energy.available:
        below = idle is not None and idle.watts is not None and energy.joules < 0.9 * idle.watts * energy.seconds
        flags = [energy.method] + (["energy-below-idle"] if below else [])
        m.add("energy_per_call", energy.joules_per_call, "J", flags, samples=energy.calls)
        m.add("energy_per_token", energy.joules_per_call / seq, "J/token", flags, samples=energy.calls)
        m.add("power", energy.watts, "W", flags)
        if idle is not None and idle.watts is not None:
            net = (energy.joules - idle.watts * energy.seconds) / energy.calls / seq
            m.add("energy_per_token_net", net, "J/token", flags + ["net-of-idle"], samples=energy.calls)
    else:
        m.add("energy_per_token", float("nan"), "J/token", ["unavailable: " + str(energy.reason)])
    for metric, value, why in cpu_energy(energy, idle, seq, rapl):
        m.add(metric, value, "J/token", why, samples=energy.calls if value == value else None)


def cpu_energy(energy: EnergyResult, idle: EnergyResult | None, seq: int, rapl: RaplMeter) -> list[tuple[str, float, list[str]]]:
    """(metric, J/token, flags) of the CPU package's and DRAM's energy in the measurement's window, gross and
    net of their idle draw; one NaN row with the reason where RAPL cannot be read."""
    window = energy.cpu
    if window is None or not window.joules:
        reason = window.reason if window is not None else rapl.reason or "no energy window ran"
        return [("cpu_package_energy_per_token", float("nan"), [f"unavailable: {reason}"])]
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


def kernel_time(item: Item, device: torch.device) -> Measurement:
    """The item's kernel time from a fresh build (no figure off a GPU, or where no kernel ran). It runs the
    profiler, so it belongs after every other measurement of the process (``instruments.timing``)."""
    m = Measurement(item)
    seconds = kernel_seconds(prepare(item, device), device)
    if seconds is not None:
        m.add(*kernel_figure(seconds))
    return m


def kernel_pass(items: Iterable[Item], device: torch.device,
                progress: Callable[[str], None] = print) -> Iterator[Measurement]:
    """Each item's ``kernel_time``, last: one item failing here loses its kernel time only."""
    items = list(items)
    if device.type != "cuda" or not items:
        return
    progress(f"kernel times of the {len(items)} items, after every other measurement (the profiler stays "
             "attached to the process and would slow later launches)")
    with input_checks(False):
        for i, item in enumerate(items, 1):
            try:
                m = kernel_time(item, device)
            except BaseException as exc:  # noqa: BLE001 - the item keeps its other figures
                if not signals.plugin_fault(exc):
                    raise
                progress(f"[{i}/{len(items)}] {item.label}  no kernel time ({providers.failure(exc)})")
                torch.cuda.empty_cache()
                continue
            seconds = m.value("kernel_time")
            progress(f"[{i}/{len(items)}] {item.label}  " + (f"{seconds * 1e3:.4g} ms of kernels" if seconds == seconds
                                                            else "no device work recorded"))
            yield m
