"""Wall time of a callable: Triton's do_bench (CUDA events, L2 flushed) on a GPU, torch's calibrated
``blocked_autorange`` on the CPU. Warm-up and compilation are kept out of the figure on both.

On a GPU the figure can be the host's rather than the device's: when issuing a call's kernels takes the
CPU as long as the GPU takes to run them, the GPU waits between kernels and the events time the CPU.
Such figures move with the host (core, clock, load) from one process to the next; on an H200 the same
launch-bound items differed up to 2x between processes at full, unthrottled SM clock. ``host_s`` is the
CPU time to issue one call, and ``host_bound`` says when it is at least ``HOST_BOUND`` of the figure.
``kernel_s`` is the other side: the time the GPU spends running the call's kernels (CUPTI, through
torch.profiler), the gaps between them left out, i.e. what the call would take if issuing cost nothing.

``time_callable`` never runs the profiler: callers take kernel times in a pass of their own after every
other measurement of the process (``kernel_seconds``). Kineto leaves CUPTI attached to a process after a
profile unless ``TEARDOWN_CUPTI=1`` (pytorch/pytorch#144455, a 10-20% slowdown of later training).
Seen here, though not yet on one machine in one A/B: asv's metric suites measured in one process with a
profile per parameter set gave launch-bound medians up to 1.8x those of a process per set (two lent
H100s), while the kernel times agreed within 5%.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable, Iterator

import torch

HOST_BOUND = 0.8
HOST_CALLS = 5
HOST_METHOD = f"median-of-{HOST_CALLS}-synchronised-calls"  # the flag on host_issue_time rows
HOST_UNAVAILABLE = "unavailable: the call synchronises with the device inside"  # why a GPU row has no host figure
KERNEL_METHOD = f"cupti-device-activity-mean-of-{HOST_CALLS}-calls"  # the flag on kernel_time rows
DO_BENCH = "triton.testing.do_bench"  # the method of a GPU figure


@dataclass(frozen=True)
class Timing:
    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    max_s: float
    samples: int
    method: str
    host_s: float | None = None  # GPU only: median CPU time to issue one call (None: it synchronises)
    kernel_s: float | None = None  # GPU only: device time of the call's kernels, copies and sets, per call

    @property
    def iqr_s(self) -> float:
        return self.q3_s - self.q1_s

    @property
    def host_bound(self) -> bool:
        return self.host_s is not None and self.host_s >= HOST_BOUND * self.median_s

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "Timing":
        """The Timing back from a record that holds ``as_dict()``'s fields (and maybe more)."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


def summarise(times_s: list[float], method: str) -> Timing:
    if len(times_s) >= 4:
        q1, _, q3 = statistics.quantiles(times_s, n=4)
    else:
        q1 = q3 = statistics.median(times_s)
    return Timing(statistics.median(times_s), q1, q3, min(times_s), max(times_s), len(times_s), method)


def time_callable(fn: Callable[[], object], device: torch.device | str, *, warmup_ms: float = 25.0,
                  rep_ms: float = 100.0, min_run_time_s: float = 0.2) -> Timing:
    """Median time of ``fn()`` on ``device`` with its spread and sample count."""
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing

        times_ms = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        timing = summarise([t / 1e3 for t in times_ms], DO_BENCH)
        return replace(timing, host_s=host_issue_seconds(fn, device))  # kernel_s: the caller's kernel pass
    from torch.utils.benchmark import Timer

    fn()  # warm-up: first-call allocation, lazy initialisation and compilation stay out of the figure
    measurement = Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time_s)
    # blocked_autorange reports per-call times, one per block of calls.
    return summarise(list(measurement.times), "torch.utils.benchmark.blocked_autorange")


def beside(timing: Timing) -> list[tuple[str, float, str, list[str]]]:
    """(metric, value, unit, flags) of the figures that go beside a GPU time: the host's issue time (NaN
    with the reason where the call synchronises inside) and the kernels' own time; none on the CPU."""
    if timing.method != DO_BENCH:
        return []
    out = [("host_issue_time", timing.host_s, "s", [HOST_METHOD]) if timing.host_s is not None
           else ("host_issue_time", float("nan"), "s", [HOST_UNAVAILABLE])]
    if timing.kernel_s is not None:
        out.append(kernel_figure(timing.kernel_s))
    return out


def kernel_figure(seconds: float) -> tuple[str, float, str, list[str]]:
    """(metric, value, unit, flags) of a kernel time from ``kernel_seconds``."""
    return "kernel_time", seconds, "s", [KERNEL_METHOD]


def host_issue_seconds(fn: Callable[[], object], device: torch.device | str, calls: int = HOST_CALLS) -> float | None:
    """Median CPU time from calling ``fn`` to its return, the device synchronised before each call so
    that a full launch queue never makes the host wait. None when the call synchronises with the device
    inside (torch's sync debug mode catches it): its host time would hold device time."""
    device = torch.device(device)
    gpu = device.type == "cuda"
    times = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(calls):
            if gpu:
                torch.cuda.synchronize(device)
            with sync_debug("warn") if gpu else contextlib.nullcontext():
                start = time.perf_counter()
                try:
                    fn()
                finally:
                    times.append(time.perf_counter() - start)
    if gpu:
        torch.cuda.synchronize(device)
    if any(SYNCHRONISING in str(w.message) for w in caught):
        return None
    return statistics.median(times)


SYNCHRONISING = "called a synchronizing CUDA operation"  # torch's sync debug message, warning or error alike


@contextlib.contextmanager
def sync_debug(mode: str) -> Iterator[None]:
    """torch's sync debug mode set to ``mode`` ("warn" or "error") for the block, then put back."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@dataclass(frozen=True)
class DeviceActivity:
    """What CUPTI saw a call do on the device, per call."""
    busy_s: float  # kernels, memory copies and memory sets, the idle gaps between them left out
    kernels: float  # kernel launches (copies and sets not counted)


def device_activity(fn: Callable[[], object], device: torch.device | str,
                    calls: int = HOST_CALLS) -> DeviceActivity | None:
    """``fn``'s device activity per call as CUPTI records it (torch.profiler), over ``calls`` calls after one
    warm-up call (a fresh build's first call compiles, tunes and allocates). Work on concurrent streams would
    count twice; none of mfbench's calls uses a second stream. None off a GPU or where nothing ran on the
    device.

    Call it after every other measurement of the process: see the module's docstring."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize(device)
    with warnings.catch_warnings():
        # torch 2.11 warns, for a plain one-cycle profile, that events do not carry over between cycles;
        # there is only one cycle here, and asv printed the warning once per benchmark process.
        warnings.filterwarnings("ignore", message=".*Profiler clears events at the end of each cycle")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize(device)
    # The raw Kineto events: building torch's FunctionEvent tree took seconds for calls of thousands of
    # kernels (the reference model), for a sum that needs none of it.
    events = [e for e in prof.profiler.kineto_results.events() if e.device_type() == DeviceType.CUDA]
    busy_ns = sum(e.duration_ns() for e in events)
    if busy_ns <= 0:
        return None
    launches = sum(1 for e in events if not e.name().startswith(("Memcpy", "Memset")))
    return DeviceActivity(busy_ns / calls / 1e9, launches / calls)


def kernel_seconds(fn: Callable[[], object], device: torch.device | str, calls: int = HOST_CALLS) -> float | None:
    """Mean device time per call of ``fn``'s kernels, copies and sets (``device_activity``); None where
    there is none."""
    activity = device_activity(fn, device, calls)
    return activity.busy_s if activity else None


# --- samples of the kernels' own time, for the kernel alert ----------------------------------------
GRAPH_METHOD = "cuda-graph-replay"  # CUDA events around replays of a graph of many calls
CUPTI_METHOD = "cupti-busy-time"  # kernel_seconds over a window of calls, a window a sample
CPU_METHOD = "process-cpu-time"  # the process's CPU time per call: the whole call is the kernel on a CPU


def graph_samples(fn: Callable[[], object], device: torch.device | str, calls: int = 20, replays: int = 25,
                  stream: "torch.cuda.Stream | None" = None, budget_s: float = 1.5) -> list[float]:
    """Per-call seconds of ``fn`` captured ``calls`` times in one CUDA graph, one sample per replay: the
    device's time for the call's kernels with launch and sync costs spread over ``calls`` calls, so the
    host's speed (which moved host-bound figures up to 2x between processes) does not enter. ``stream``:
    the stream ``fn``'s autograd graph was built on, where it has one (a backward replays on the stream
    of its forward). Raises where ``fn`` cannot be captured (it synchronises, or allocates on the host).
    A slow call gets fewer replays (at least 5), so that the replays take about ``budget_s``: the alert
    measures every set of a provider in one process, and the eager reference's backward takes 20 ms."""
    device = torch.device(device)
    stream = stream or torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):  # autotuning, lazy initialisation and allocator growth, before capture
            fn()
        _refuse_synchronising(fn)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(calls):
                fn()
    except Exception:
        _end_failed_capture(device)
        raise
    start = time.perf_counter()
    graph.replay()
    torch.cuda.synchronize(device)
    replays = max(5, min(replays, int(budget_s / max(time.perf_counter() - start, 1e-9))))
    samples = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / calls)
    del graph
    return samples


class NotCapturable(RuntimeError):
    """The call cannot be held in a CUDA graph."""


def _refuse_synchronising(fn: Callable[[], object]) -> None:
    """One more warm-up call with torch's sync debug mode raising: a call that waits for the device inside
    (an ``.item()``, a ``nonzero``) is refused here, before a capture that would fail on it."""
    try:
        with sync_debug("error"):
            fn()
    except RuntimeError as exc:
        if SYNCHRONISING in str(exc):
            raise NotCapturable("the call synchronises with the device inside") from None
        raise


def _end_failed_capture(device: torch.device) -> None:
    """A capture that fails inside leaves torch's CUDA random generators in capture mode (capture_end
    raises before their epilogue), and every later random draw in the process fails with "Offset increment
    outside graph capture encountered unexpectedly": on the H200 one uncapturable item failed every item
    after it. A capture that completes runs their epilogue and ends it."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=torch.cuda.Stream(device)):
        torch.empty(1, device=device).zero_()
    torch.cuda.synchronize(device)
    del graph


def cupti_samples(fn: Callable[[], object], device: torch.device | str, windows: int = 10,
                  calls: int = HOST_CALLS) -> list[float]:
    """Per-call kernel busy time, one sample per profiled window of ``calls`` calls, for a call that cannot
    be captured in a graph. Run it after every graph measurement of the process (see the module's
    docstring on the profiler's after-effect)."""
    samples = [kernel_seconds(fn, device, calls) for _ in range(windows)]
    return [s for s in samples if s is not None]


def cpu_samples(fn: Callable[[], object], count: int = 20, budget_s: float = 30.0) -> list[float]:
    """Process CPU seconds of ``count`` single calls (fewer once ``budget_s`` of CPU time is spent; at
    least 3), after a warm-up call. CPU time rather than wall time: another program on a small shared
    machine cannot inflate it."""
    fn()
    samples: list[float] = []
    while len(samples) < count and (len(samples) < 3 or sum(samples) < budget_s):
        start = time.process_time()
        fn()
        samples.append(time.process_time() - start)
    return samples
