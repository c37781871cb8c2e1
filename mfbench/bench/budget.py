"""Training to a budget: what a user pays is seconds and joules, not steps.

Each architecture trains until a budget is spent: the device's wall time (a GPU synchronised at every
reading; on the CPU plain wall time), or its energy net of idle (NVML on an NVIDIA GPU, RAPL package and
DRAM zones on a CPU where ``instruments.rapl`` reads them; nowhere else). The model is evaluated when the
spending passes each of ``FRACTIONS`` of the budget. The meter is closed while the model is evaluated, so
evaluation never counts against the training budget; nor does the warm-up before it (a
throwaway model of the same architecture, two steps: the Triton kernels' compilation and autotuning, one-off costs a
long training would not see).

The meter is read (a device sync) about ``READINGS`` times over the budget, at least ``MIN_READING_S``
apart, and at every step near a fraction, so a point overshoots its fraction by about one step; each
point records what was spent.
The learning rate warms up over the recipe's warm-up steps and then follows the recipe's cosine over the
share of the budget spent.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from mfbench.bench import train
from mfbench.core.lookup import input_checks
from mfbench.instruments.energy import EnergyMeter, idle_power
from mfbench.instruments.rapl import RaplMeter
from mfbench.store import snapshots
from mfbench.tasks.synthetic import SyntheticTask

FRACTIONS = (0.125, 0.25, 0.5, 1.0)
UNITS = {"seconds": "s", "joules": "J"}
READINGS = 128  # meter readings over a budget, besides those near each fraction
MIN_READING_S = 0.25  # and at least this long apart
# Batches of a budgeted training come from seeds of their own, far from EVAL_SEED and from one another's.
SEED_STRIDE = 10_000_000
IDLE_SECONDS = 1.0


class BudgetError(ValueError):
    """A budget that cannot be spent: not a positive finite number, both kinds at once, no meter."""


@dataclass(frozen=True)
class Budget:
    kind: str  # seconds or joules
    amount: float

    def __post_init__(self) -> None:
        if self.kind not in UNITS:
            raise BudgetError(f"a budget is in seconds or joules, not {self.kind!r}")
        if not (isinstance(self.amount, (int, float)) and math.isfinite(self.amount) and self.amount > 0):
            raise BudgetError(f"--budget-{self.kind} must be a positive finite number of {self.kind}, got {self.amount}")

    @property
    def unit(self) -> str:
        return UNITS[self.kind]

    def targets(self) -> list[float]:
        return [f * self.amount for f in FRACTIONS]


def parse(seconds: str | None, joules: str | None) -> Budget | None:
    """The budget of ``--budget-seconds`` or ``--budget-joules`` (their text), None where neither is given."""
    if seconds is not None and joules is not None:
        raise BudgetError("give --budget-seconds or --budget-joules, not both: each is a run of its own")
    if seconds is None and joules is None:
        return None
    kind, text = ("seconds", seconds) if seconds is not None else ("joules", joules)
    try:
        amount = float(text)
    except ValueError:
        raise BudgetError(f"--budget-{kind} takes a number of {kind}, got {text!r}") from None
    return Budget(kind, amount)


class EnergySource:
    """Gross joules of a window on the device: NVML on a CUDA device, RAPL (package + DRAM) on the CPU;
    ``reason`` says why neither reads, and every figure is then None."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gpu = EnergyMeter(device) if device.type == "cuda" else None
        self.rapl = RaplMeter() if device.type == "cpu" else None
        if self.gpu is not None:
            self.method, self.reason = self.gpu.method, self.gpu.reason
        elif self.rapl is not None and self.rapl.available:
            self.method, self.reason = "rapl", None
        else:
            self.method = "unavailable"
            self.reason = (self.rapl.reason if self.rapl is not None else f"no energy meter for {device.type}") + \
                "; NVML reads NVIDIA GPUs only"
        self._start = None

    @property
    def available(self) -> bool:
        return self.reason is None

    def begin(self) -> None:
        if not self.available:
            return
        if self.gpu is not None:
            self.gpu.begin_window("budget")
        else:
            self._start = self.rapl.begin()

    def end(self) -> float | None:
        if not self.available:
            return None
        if self.gpu is not None:
            return self.gpu.end_window("budget").joules
        return sum((self.rapl.end(self._start).joules or {}).values())

    def idle_watts(self) -> float | None:
        """The device's draw with nothing running, over ``IDLE_SECONDS``."""
        if not self.available:
            return None
        if self.gpu is not None:
            return idle_power(self.device, IDLE_SECONDS, self.gpu).watts
        window = idle_power(self.device, IDLE_SECONDS, EnergyMeter(self.device), self.rapl).cpu
        return sum(window.joules.values()) / window.seconds if window and window.joules else None


class Spending:
    """Seconds and net joules spent while open: ``open`` ... ``close`` segments, the device synchronised at
    each end, the idle draw times the segment's length taken off its joules."""

    def __init__(self, device: torch.device, energy: EnergySource | None, idle_watts: float | None) -> None:
        self.device, self.energy, self.idle_watts = device, energy, idle_watts
        self.seconds, self.joules = 0.0, (0.0 if energy is not None and energy.available else None)
        self.cpu_seconds = 0.0  # the process's CPU time: what a shared machine gave the training
        self._t0: float | None = None
        self._cpu0 = 0.0
        self.is_open = False

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def open(self) -> None:
        self._sync()
        if self.energy is not None:
            self.energy.begin()
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()
        self.is_open = True

    def close(self) -> None:
        self._sync()
        self.is_open = False
        seconds = time.perf_counter() - self._t0
        self.cpu_seconds += time.process_time() - self._cpu0
        gross = self.energy.end() if self.energy is not None else None
        self.seconds += seconds
        if self.joules is not None and gross is not None:
            self.joules += gross - (self.idle_watts or 0.0) * seconds

    def spent(self, kind: str) -> float:
        value = self.seconds if kind == "seconds" else self.joules
        return math.nan if value is None else value


@dataclass(frozen=True)
class Point:
    fraction: float
    seconds: float
    joules: float | None
    cpu_seconds: float
    steps: int
    loss: float  # mean training loss of the steps since the previous point
    correct: int
    scored: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.scored


@dataclass
class BudgetResult:
    architecture: str
    provider: str  # how MemoryFormer's layers computed; the baseline's name for dense
    seed: int
    lr: float
    tokens_per_step: int
    points: list[Point] = field(default_factory=list)
    load: tuple[float, float] = (math.nan, math.nan)  # the host's 1-minute load average at start and end
    clock: str = "wall"  # how seconds were read: "wall", or "wall-cuda-synchronised"


def meter_for(budget: Budget, device: torch.device) -> tuple[EnergySource, float | None]:
    """The energy source and idle draw for ``budget`` on ``device``; a joules budget without a meter is a
    BudgetError naming what was looked for."""
    energy = EnergySource(device)
    if budget.kind == "joules" and not energy.available:
        raise BudgetError(f"--budget-joules needs an energy meter on {device}: {energy.reason}")
    return energy, energy.idle_watts()


def warm_up(architecture: str, rec: train.Recipe, task: SyntheticTask, device: torch.device, provider: str) -> None:
    """Two steps of a throwaway model, outside any budget: compilation, autotuning, first allocations."""
    model, _, _, optimizer = train.setup(architecture, replace(rec, seed=rec.seed + 1), task, device, provider)
    with input_checks(False):
        for step in range(2):
            inputs, targets = (t.to(device) for t in task.batch(rec.batch, train.TRAIN_SEED_BASE - 1 - step))
            train.train_step(model, optimizer, inputs, targets)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def train_to_budget(architecture: str, rec: train.Recipe, task: SyntheticTask, device: torch.device,
                    provider: str, budget: Budget, energy: EnergySource | None, idle_watts: float | None,
                    progress: Callable[[str], None] | None = None) -> BudgetResult:
    """Train one architecture from ``rec.seed`` until ``budget`` is spent, evaluated at each fraction."""
    warm_up(architecture, rec, task, device, provider)
    model, _, lr, optimizer = train.setup(architecture, rec, task, device, provider)
    label = provider if architecture == "memoryformer" else "dense"
    result = BudgetResult(architecture, label, rec.seed, lr, rec.batch * task.seq_len, load=(_load(), math.nan),
                          clock="wall-cuda-synchronised" if device.type == "cuda" else "wall")
    meter = Spending(device, energy, idle_watts)
    targets, step, losses, every = budget.targets(), 0, [], 1
    model.train()
    meter.open()
    with input_checks(False):
        while targets:
            for _ in range(every):
                for group in optimizer.param_groups:
                    group["lr"] = lr * train.lr_factor(step, rec.warmup, meter.spent(budget.kind) / budget.amount)
                inputs, targets_ = (t.to(device) for t in task.batch(rec.batch, train.TRAIN_SEED_BASE
                                                                     + rec.seed * SEED_STRIDE + step))
                losses.append(train.train_step(model, optimizer, inputs, targets_))
                step += 1
            meter.close()
            spent = meter.spent(budget.kind)
            if spent >= targets[0]:
                loss = float(torch.stack(losses).mean())
                losses = []
                correct, scored, _ = _evaluate(model, rec, task, device)
                while targets and spent >= targets[0]:
                    fraction = FRACTIONS[len(FRACTIONS) - len(targets)]
                    result.points.append(Point(fraction, meter.seconds, meter.joules, meter.cpu_seconds, step, loss,
                                               correct, scored))
                    targets.pop(0)
                    if progress:
                        progress(_line(result, budget))
            every = _steps_to_next_reading(budget, targets, spent, meter.seconds, step)
            if targets:
                meter.open()
    result.load = (result.load[0], _load())
    model.eval()
    return result


def _steps_to_next_reading(budget: Budget, targets: list[float], spent: float, seconds: float, step: int) -> int:
    """About 1/READINGS of the budget but at least MIN_READING_S (each reading syncs the device, which
    costs the overlap of host and device), never past the next fraction, and at most twice the steps so far
    (an energy counter that has not ticked yet reads as nothing spent)."""
    if not targets or spent <= 0 or seconds <= 0:
        return 1
    per_step, seconds_per_step = spent / step, seconds / step
    cadence = max(budget.amount / READINGS / per_step, MIN_READING_S / seconds_per_step)
    return max(1, min(step, int(cadence), int((targets[0] - spent) / per_step)))


def _evaluate(model: torch.nn.Module, rec: train.Recipe, task: SyntheticTask, device: torch.device):
    model.eval()
    try:
        return snapshots.task_accuracy(model, task, rec.eval_sequences, snapshots.EVAL_SEED, device)
    finally:
        model.train()


def _line(result: BudgetResult, budget: Budget) -> str:
    p = result.points[-1]
    joules = "" if p.joules is None else f", {p.joules:.4g} J net"
    return (f"  {result.architecture:<12} seed {result.seed}  {p.fraction:>5g} of {budget.amount:g} {budget.unit}: "
            f"{p.seconds:.3g} s{joules}, {p.steps} steps, loss {p.loss:.3f}, accuracy {p.accuracy:.3f}")


def rows(run, rec: train.Recipe, task: SyntheticTask, budget: Budget, result: BudgetResult,
         energy: EnergySource | None, idle_watts: float | None, notes: list[str] = ()) -> list[dict]:
    """Rows (benchmark 'budget:TASK') of one budgeted training: per fraction its accuracy, the seconds and
    net joules spent to reach it, the process's CPU seconds in them (on a shared machine, how much of the
    wall time the training got), the steps taken and the training loss."""
    method = energy.method if energy is not None else "unavailable"
    flags = ["eval-outside-budget", f"load-1min={result.load[0]:.2f}..{result.load[1]:.2f}",
             f"torch-threads={torch.get_num_threads()}", *notes]
    if idle_watts is not None:
        flags.append(f"idle={idle_watts:.4g}W")
    out = []
    for p in result.points:
        params = {"preset": rec.name, "architecture": result.architecture, "seed": result.seed, "lr": result.lr,
                  "batch": rec.batch, "warmup": rec.warmup, "tokens_per_step": result.tokens_per_step,
                  "budget_kind": budget.kind, "budget": budget.amount, "budget_unit": budget.unit,
                  "fraction": p.fraction, "eval_sequences": rec.eval_sequences,
                  **{f"task_{k}": v for k, v in task.spec().items()}, "chance": task.chance}

        def row(metric, value, unit, more=(), **kw):
            return run.row(f"budget:{task.name}", params, result.provider, metric, value, unit,
                           flags=[*flags, *more], **kw)

        out += [row("accuracy", p.accuracy, "fraction", samples=p.scored),
                row("seconds_spent", p.seconds, "s", [result.clock]),
                row("cpu_seconds_spent", p.cpu_seconds, "s", ["process-time"]),
                row("steps", p.steps, "steps"), row("loss", p.loss, "nats")]
        if p.joules is not None:
            out.append(row("joules_spent", p.joules, "J", [method, "net-of-idle"]))
        else:
            out.append(row("joules_spent", math.nan, "J", [f"unavailable: {energy.reason if energy else method}"]))
    return out
