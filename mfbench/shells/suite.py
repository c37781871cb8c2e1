"""What the asv suites under ``suites/`` measure with: one prepared call per parameter set, built and
measured by the same pipeline (``mfbench.bench``) that ``mfbench run`` uses.

asv runs every benchmark method in a fresh process, so the expensive measurement behind the ``track_``
methods (time, FLOPs, bytes, energy) is made once per parameter set and kept in a JSON cache under
``MFBENCH_ASV_CACHE`` (the ``bench`` and ``alert`` nox sessions set it per run). The matrix adapts to
the machine and can be narrowed with environment variables:

- ``MFBENCH_ASV_DEVICES`` (default: cuda where present, else cpu),
- ``MFBENCH_PROVIDER_MODULES`` (files or modules that register providers, ``os.pathsep`` or comma
  separated; read by ``mfbench.core.providers`` in every process, so asv's benchmark processes load them too,
  beside the providers of installed packages' ``mfbench.providers`` entry points),
- ``MFBENCH_ASV_PROVIDERS`` (default: every registered provider but ``compiled``: asv runs each benchmark
  in a new process, where torch.compile would trace and compile again every time; ``mfbench run`` and
  ``mfbench layers`` measure it in one process; nor ``sharded``, which needs a torchrun process group),
- ``MFBENCH_ASV_SEQS`` (default: 2048,8192,32768 on a GPU; 128,512,2048 on the CPU; blocks take
  those from 512 to 8192, and so do whole models on a GPU; on the CPU models take the shortest),
- ``MFBENCH_ASV_PRESET`` (model config, default ``tiny``; ``micro`` for quick runs),
- ``MFBENCH_ASV_TASKS`` (tasks whose committed snapshots ``suites/accuracy.py`` evaluates, default mqar),
- ``MFBENCH_ASV_TIMER`` (``wall``, the default, or ``process``: the process's CPU time, which another
  program on a small shared CPU machine cannot inflate; CPU-only, and what the CPU alert test uses),
- ``MFBENCH_ASV_BUDGET_SECONDS`` (``suites/budget.py``: seconds each architecture trains on each of those
  tasks, default 20; the micro recipe on the CPU, tiny on a GPU, seed 0).

They are read once, through ``mfbench.config``; a value that cannot be used fails each benchmark with the
reason (asv reports it) instead of stopping the suites' import.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
import timeit
from pathlib import Path
from typing import Callable

import torch

from mfbench.bench.cases import DTYPES, suite_item
from mfbench.bench.measure import Bench, kernel_pass, measure
from mfbench.bench.measurement import to_rows
from mfbench.bench.subject import prepare
from mfbench.config import settings
from mfbench.core import providers
from mfbench.core.lookup import input_checks
from mfbench.core.model import ModelConfig
from mfbench.instruments.ceilings import ceilings
from mfbench.store.results import Run

SETTINGS = settings()
GPU = torch.cuda.is_available()
DEVICES = list(SETTINGS.asv_devices) or (["cuda"] if GPU else ["cpu"])
PROVIDERS = list(SETTINGS.asv_providers) or [p for p in providers.names() if providers.one_process(p)]
SEQS = list(SETTINGS.asv_seqs) or ([2048, 8192, 32768] if GPU else [128, 512, 2048])
DTYPES_FOR = {"cuda": "float16", "cpu": "float32"}
DTYPE_PARAMS = sorted({DTYPES_FOR[d.split(":")[0]] for d in DEVICES})
PRESET = SETTINGS.asv_preset
PARAMS = (DEVICES, PROVIDERS, SEQS, DTYPE_PARAMS)
TIMER = {"wall": timeit.default_timer, "process": time.process_time}[SETTINGS.asv_timer]
# Blocks and models at the middle lengths; on the CPU a tiny-model training step at 2048 tokens takes
# 35 s a call (reference provider), so whole models run at the shortest length there.
BLOCK_SEQS = [s for s in SEQS if 512 <= s <= 8192] or SEQS[:1]
BLOCK_PARAMS = (DEVICES, PROVIDERS, BLOCK_SEQS, DTYPE_PARAMS)
MODEL_PARAMS = BLOCK_PARAMS if GPU else (DEVICES, PROVIDERS, SEQS[:1], DTYPE_PARAMS)
PARAM_NAMES = ["device", "provider", "seq", "dtype"]
# Decoding: B tokens a step, around and above the analytic break-even B = tau = 8.
DECODE_PARAMS = (DEVICES, PROVIDERS, [1, 8, 64] if GPU else [1, 8], DTYPE_PARAMS)
DECODE_PARAM_NAMES = ["device", "provider", "batch", "dtype"]


def setting_problem() -> str | None:
    """Why the MFBENCH_ASV_* settings cannot be used, or None."""
    mine = [p for p in SETTINGS.problems if p.startswith("MFBENCH_ASV_")]  # the alert's are the alert's
    if mine:
        return mine[0]
    if TIMER is time.process_time and "cuda" in DEVICES:
        return "MFBENCH_ASV_TIMER=process measures CPU time: it cannot time GPU work"
    return None


class Prepared:
    """One benchmark call, built and warmed up; ``metric(name)`` gives the pipeline's measurement of it."""

    def __init__(self, benchmark: str, direction: str, device: str, provider: str, seq: int, dtype: str,
                 probe: bool = True, measured: dict[str, list[dict]] | None = None) -> None:
        problem = setting_problem()
        if problem:
            raise ValueError(problem)
        self._key = _case_key(benchmark, direction, device, provider, seq, dtype)
        self._measured = measured if measured is not None else {}
        dev = torch.device(device)
        if DTYPES_FOR[dev.type] != dtype:
            raise NotImplementedError(f"{dtype} is not benchmarked on {dev.type}")
        self.item = suite_item(benchmark, direction, seq, provider, DTYPES[dtype], ModelConfig.preset(PRESET))
        self.device = dev
        self._fn: Callable[[], object] | None = None
        # asv runs every parameter set of every method in a new process. With a cached measurement a
        # track_ method needs neither CUDA nor a trial run, which keeps the whole matrix in minutes.
        cached = self._cached()
        if cached is not None:
            _raise_marker(cached)
        elif probe or _cache_file(self._key) is not None:
            self._check()

    def _check(self) -> None:
        """A set this machine cannot run is skipped (asv: n/a); one whose provider should run and fails its
        trial (raises, wrong shape, dtype or values, over budget) is failed, which asv reports as failed."""
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise NotImplementedError("no CUDA device")
        reason, fault = self._probe()
        if reason or fault:
            marker = _marker("skipped", reason) if reason else _marker("failed", fault)
            self._store([marker])  # for the set's later processes, where there is a cache
            _raise_marker([marker])

    def _probe(self) -> tuple[str | None, str | None]:
        """The registry's verdict (``providers.readiness``), made once per provider, device and dtype for the
        whole run (each benchmark runs in its own process, which would otherwise repeat the trial run)."""
        root = settings().asv_cache
        key = f"probe-{self.item.provider}-{self.device}-{self.item.dtype}".replace(":", "_").replace(".", "_")
        path = Path(root) / f"{key}.json" if root else None
        if path is not None and path.exists():
            found = json.loads(path.read_text())
            return found["reason"], found.get("fault")
        reason, fault = providers.readiness(self.item.provider, str(self.device), self.item.dtype)
        if path is not None:
            _write_json(path, {"reason": reason, "fault": fault})
        return reason, fault

    def prepare_call(self) -> None:
        """Build the module and input and warm the call up (compilation and autotuning stay out)."""
        self._fn = prepare(self.item, self.device)
        self.call()

    def call(self) -> None:
        with input_checks(False):
            self._fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _cached(self) -> list[dict] | None:
        return self._measured.get(self._key) or _cached(self._key)

    def _store(self, rows: list[dict]) -> None:
        _store(self._key, rows)

    def rows(self, kernels: bool = True) -> list[dict]:
        """The pipeline's rows for this parameter set: measured once, then read from the cache. Without
        ``kernels`` the kernel time is left to the caller's kernel pass (``measure_all``)."""
        cached = self._cached()
        if cached is not None:
            return cached
        run = Run.start(str(self.device))
        with input_checks(False):
            found = [measure(self.item, Bench.start(self.device, ceilings(self.device), idle=False))]
            if kernels:
                found += list(kernel_pass([self.item], self.device, _quiet))
        rows = [row for m in found for row in to_rows(m, run)]
        self._store(rows)
        return rows

    def metric(self, name: str) -> float:
        """A metric's value, or NaN where it was not measured (never 0 for 'unknown')."""
        return _metric(self.rows(), name)


def _marker(status: str, why: str) -> dict:
    """What the cache keeps for a set that was not measured: 'skipped' or 'failed', and why."""
    return {"metric": status, "flags": why, "value": math.nan}


def _raise_marker(rows: list[dict]) -> None:
    """asv's answer for a cached skip (n/a: NotImplementedError) or failure (failed: any other error)."""
    for row in rows:
        if row["metric"] == "skipped":
            raise NotImplementedError(row["flags"])
    for row in rows:
        if row["metric"] == "failed":
            raise RuntimeError(row["flags"])


def _case_key(benchmark: str, direction: str, device: str, provider: str, seq: int, dtype: str) -> str:
    return json.dumps([benchmark, direction, device, provider, seq, dtype, PRESET])


def measure_all(benchmark: str, direction: str, params: tuple) -> dict[str, list[dict]]:
    """Every parameter set's rows, measured one after another in this one process, keyed as ``Prepared``
    keys them (a set that cannot run gets its 'skipped' marker). For asv's ``setup_cache``: a process per
    parameter set paid CUDA, profiler and Triton start-up every time, which made the metric suites the
    longest part of ``nox -s bench``; ``mfbench run`` measures its matrix in one process the same way."""
    measured: dict[str, list[dict]] = {}
    fresh: list[Prepared] = []
    for combo in itertools.product(*params):
        key = _case_key(benchmark, direction, *combo)
        try:
            case = Prepared(benchmark, direction, *combo)
            new = case._cached() is None  # cached rows already went through a kernel pass
            measured[key] = case.rows(kernels=False)
            fresh += [case] if new else []
        except NotImplementedError as exc:
            measured[key] = [_marker("skipped", str(exc))]
        except Exception as exc:  # one set failing must not lose the class's others; asv reports it failed
            measured[key] = [_marker("failed", providers.failure(exc))]
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    # Kernel times last, a device at a time: the profiler would slow every launch measured after it.
    for device in dict.fromkeys(case.device for case in fresh):
        mine = {case.item: case for case in fresh if case.device == device}
        run = Run.start(str(device))
        with input_checks(False):
            for m in kernel_pass(list(mine), device, _quiet):
                case = mine[m.item]
                measured[case._key] = measured[case._key] + to_rows(m, run)
                case._store(measured[case._key])
    return measured


def _quiet(message: str) -> None:
    """Progress that asv's setup_cache keeps to itself (its output would land in the benchmark log)."""


def _metric(rows: list[dict], name: str) -> float:
    for row in rows:
        if row["metric"] == name:
            return row["value"] if row["value"] == row["value"] else math.nan
    return math.nan


def _cache_file(key: str) -> Path | None:
    root = settings().asv_cache
    if not root:
        return None
    return Path(root) / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")


def _cached(key: str) -> list[dict] | None:
    path = _cache_file(key)
    return json.loads(path.read_text()) if path is not None and path.exists() else None


def _store(key: str, rows: list[dict]) -> None:
    path = _cache_file(key)
    if path is not None:
        _write_json(path, rows)


# Snapshot accuracy: the tasks of the committed MemoryFormer snapshots, through every provider ('dense' is
# the dense baseline's own snapshot on the same task).
ACCURACY_TASKS = list(SETTINGS.asv_tasks)
ACCURACY_PARAMS = (DEVICES, PROVIDERS, ACCURACY_TASKS)


class SnapshotCase:
    """The newest committed snapshot of a task, evaluated through one provider once per run (cached)."""

    def __init__(self, device: str, provider: str, task: str, measured: dict[str, list[dict]] | None = None) -> None:
        from mfbench.store import snapshots

        architecture = "dense" if providers.is_baseline(provider) else "memoryformer"
        try:
            self.snapshot = snapshots.find("latest", architecture=architecture, task=task)
        except snapshots.SnapshotError as exc:
            raise NotImplementedError(str(exc)) from None
        self.device, self.provider = torch.device(device), provider
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise NotImplementedError("no CUDA device")
        self._key = json.dumps(["accuracy", device, provider, task, self.snapshot.id])
        self._measured = measured if measured is not None else {}
        _raise_marker(self.rows())

    def rows(self) -> list[dict]:
        return _once(self._key, self._measured, self._evaluate)

    def _evaluate(self) -> list[dict]:
        from mfbench.store import snapshots

        names = [] if providers.is_baseline(self.provider) else [self.provider]
        measured = [m for m in snapshots.evaluate(self.snapshot, names, self.device) if m.provider == self.provider]
        return snapshots.rows(self.snapshot, measured, Run.start(str(self.device)))

    def metric(self, name: str) -> float:
        return _metric(self.rows(), name)


def evaluate_all(params: tuple) -> dict[str, list[dict]]:
    """Every (device, provider, task) set's rows, evaluated one after another in this one process, for
    asv's ``setup_cache`` (a process per set paid start-up and snapshot loading each time). A set that
    cannot run is left out: ``SnapshotCase`` in asv's setup meets the same answer for it at once."""
    return _each(SnapshotCase, params)


def _once(key: str, measured: dict[str, list[dict]], compute: Callable[[], list[dict]]) -> list[dict]:
    """The rows of ``key``: from this process or the run's cache, else ``compute()``'s, then kept in both. A
    failure is kept as a 'failed' marker, so a shared setup goes on to the other sets."""
    cached = measured.get(key) or _cached(key)
    if cached is not None:
        return cached
    try:
        rows = compute()
    except Exception as exc:  # noqa: BLE001 - kept as an answer
        rows = [_marker("failed", providers.failure(exc))]
    _store(key, rows)
    measured[key] = rows
    return rows


def _each(case: type, params: tuple) -> dict[str, list[dict]]:
    """Every parameter set of ``case`` made in this one process, its rows kept by key. A set that cannot run
    is left out: ``case`` in asv's setup meets the same answer for it at once."""
    measured: dict[str, list[dict]] = {}
    for combo in itertools.product(*params):
        try:
            case(*combo, measured=measured)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    return measured


# Accuracy at equal time: each architecture trained for the same seconds (MFBENCH_ASV_BUDGET_SECONDS),
# MemoryFormer through the device's default training provider. A change that makes it train slower takes
# fewer steps in those seconds, which shows as a higher error rate and more seconds per step.
BUDGET_PARAMS = (DEVICES, ["memoryformer", "dense"], ACCURACY_TASKS)


class BudgetCase:
    """One architecture trained to the seconds budget on a task, once per run (cached); metrics at its end."""

    def __init__(self, device: str, architecture: str, task: str,
                 measured: dict[str, list[dict]] | None = None) -> None:
        problem = setting_problem()
        if problem:
            raise ValueError(problem)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise NotImplementedError("no CUDA device")
        self.architecture, self.task = architecture, task
        self.recipe = "tiny" if self.device.type == "cuda" else "micro"
        seconds = SETTINGS.asv_budget_seconds
        self._key = json.dumps(["budget", device, architecture, task, self.recipe, seconds])
        self._measured = measured if measured is not None else {}
        _raise_marker(self.rows())

    def rows(self) -> list[dict]:
        return _once(self._key, self._measured, self._train)

    def _train(self) -> list[dict]:
        from mfbench.bench import budget, train
        from mfbench.tasks import synthetic

        plan = budget.Budget("seconds", SETTINGS.asv_budget_seconds)
        rec, task = train.recipe(self.recipe, seed=0), synthetic.make(self.task)
        provider = train.default_provider(self.device)
        energy, idle = budget.meter_for(plan, self.device)
        found = budget.train_to_budget(self.architecture, rec, task, self.device, provider, plan, energy, idle)
        return budget.rows(Run.start(str(self.device)), rec, task, plan, found, energy, idle)

    def metric(self, name: str) -> float:
        """``name`` at the end of the budget (the rows list the fractions in order)."""
        return _metric(list(reversed(self.rows())), name)


def train_budgets(params: tuple) -> dict[str, list[dict]]:
    """Every (device, architecture, task) set trained in this one process, for asv's ``setup_cache``."""
    return _each(BudgetCase, params)


def _write_json(path: Path, data: object) -> None:
    """Write atomically: a benchmark killed by asv's timeout must not leave half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
