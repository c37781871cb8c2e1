"""Every ``MFBENCH_*`` environment variable the package reads, in one documented, frozen dataclass.

``settings()`` reads the environment when it is called, never at import, and never raises: a value that
cannot be used keeps the default, and where that would hide a mistake (``MFBENCH_ASV_TIMER``) the field
``problems`` says why, for the code that depends on it to report. Nothing here writes ``os.environ``;
values that travel between processes (the commit asv runs) are passed to the child's environment by the
code that starts it.

docs/architecture.md lists them with the modules that read them, and those read outside the package
(tests, nox, CI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

TIMERS = ("wall", "process")


def _list(text: str | None) -> tuple[str, ...]:
    """A comma-separated value as its non-empty items."""
    return tuple(v.strip() for v in (text or "").split(",") if v.strip())


def _number(text: str | None, default: float | None) -> float | None:
    try:
        return float(text) if text else default
    except ValueError:
        return default


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Settings:
    # --- providers (mfbench.core.registry, mfbench.core.trial)
    provider_modules: str = ""  # MFBENCH_PROVIDER_MODULES: files or modules registering providers, in every process
    plugins: bool = True  # MFBENCH_PLUGINS=0: installed plugins (the mfbench.providers entry points) are not loaded
    call_budget_s: float | None = None  # MFBENCH_CALL_BUDGET_S: seconds one call may take (providers with no own budget)
    lock_wait_s: float = 600.0  # MFBENCH_LOCK_WAIT_S: seconds a run waits for result tables another process holds
    skip_compile: bool = False  # MFBENCH_SKIP_COMPILE: skip torch.compile on the CPU (the 'compiled' provider)
    # --- where a figure comes from (mfbench.instruments.fingerprint)
    commit: str | None = None  # MFBENCH_COMMIT: the commit of a tree without .git (or the one asv runs)
    dirty: bool = False  # MFBENCH_DIRTY=1: that tree differs from MFBENCH_COMMIT
    # --- the machine's ceilings (mfbench.instruments.ceilings)
    cache_dir: str = ""  # MFBENCH_CACHE: where measured ceilings are cached (default ~/.cache/mfbench)
    ceilings_max_age_days: float | None = None  # MFBENCH_CEILINGS_MAX_AGE_DAYS: re-measure older ceilings
    # --- the asv suites (mfbench.shells.suite): what they measure; empty means the machine's default
    asv_devices: tuple[str, ...] = ()  # MFBENCH_ASV_DEVICES
    asv_providers: tuple[str, ...] = ()  # MFBENCH_ASV_PROVIDERS
    asv_seqs: tuple[int, ...] = ()  # MFBENCH_ASV_SEQS
    asv_preset: str = "tiny"  # MFBENCH_ASV_PRESET: the model config
    asv_tasks: tuple[str, ...] = ("mqar",)  # MFBENCH_ASV_TASKS: tasks whose snapshots suites/accuracy.py evaluates
    asv_timer: str = "wall"  # MFBENCH_ASV_TIMER: wall, or process (CPU time of the process; CPU only)
    asv_budget_seconds: float = 20.0  # MFBENCH_ASV_BUDGET_SECONDS: each training of suites/budget.py
    asv_cache: str = ""  # MFBENCH_ASV_CACHE: the suites' measurement cache for one asv run
    # --- the kernel alert (mfbench.shells.alert): defaults of its options
    alert_rounds: int = 2  # MFBENCH_ALERT_ROUNDS
    alert_max_rounds: int = 6  # MFBENCH_ALERT_MAX_ROUNDS
    alert_providers: str | None = None  # MFBENCH_ALERT_PROVIDERS
    alert_directions: str = "forward,backward"  # MFBENCH_ALERT_DIRECTIONS
    alert_seqs: str | None = None  # MFBENCH_ALERT_SEQS
    alert_preset: str = "tiny"  # MFBENCH_ALERT_PRESET
    alert_device: str | None = None  # MFBENCH_ALERT_DEVICE
    alert_accuracy: bool = True  # MFBENCH_ALERT_ACCURACY=0 turns the snapshot accuracy check off
    alert_accuracy_sequences: int | None = None  # MFBENCH_ALERT_ACCURACY_SEQUENCES
    # --- the sharded provider's own check (python -m mfbench.shells.sharded_check)
    device: str | None = None  # MFBENCH_DEVICE=cpu: check on the CPU where a GPU is present
    # Values that were set but cannot be used, as one-line reasons, for the code that needs them.
    problems: tuple[str, ...] = field(default=(), compare=False)


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of ``environ`` (default: this process's environment), read now."""
    env = os.environ if environ is None else environ
    get = env.get
    problems = []
    timer = get("MFBENCH_ASV_TIMER") or "wall"
    if timer not in TIMERS:
        problems.append(f"MFBENCH_ASV_TIMER must be one of {', '.join(TIMERS)}, got {timer!r}")
        timer = "wall"
    seqs: tuple[int, ...] = ()
    try:
        seqs = tuple(int(s) for s in _list(get("MFBENCH_ASV_SEQS")))
    except ValueError:
        problems.append(f"MFBENCH_ASV_SEQS takes whole numbers, got {get('MFBENCH_ASV_SEQS')!r}")
    for name in ("MFBENCH_ALERT_ROUNDS", "MFBENCH_ALERT_MAX_ROUNDS", "MFBENCH_ALERT_ACCURACY_SEQUENCES"):
        if get(name) and _int(get(name)) is None:
            problems.append(f"{name} takes a whole number, got {get(name)!r}")
    budget = _number(get("MFBENCH_CALL_BUDGET_S"), None)
    train_budget = _number(get("MFBENCH_ASV_BUDGET_SECONDS"), 20.0)
    if get("MFBENCH_ASV_BUDGET_SECONDS") and _number(get("MFBENCH_ASV_BUDGET_SECONDS"), None) is None \
            or not 0 < train_budget < float("inf"):
        problems.append(f"MFBENCH_ASV_BUDGET_SECONDS must be a positive number of seconds, got "
                        f"{get('MFBENCH_ASV_BUDGET_SECONDS')!r}")
        train_budget = 20.0
    lock_wait = _number(get("MFBENCH_LOCK_WAIT_S"), None)
    return Settings(
        provider_modules=get("MFBENCH_PROVIDER_MODULES", ""),
        plugins=get("MFBENCH_PLUGINS", "1") != "0",
        call_budget_s=budget if budget is not None and budget > 0 else None,
        lock_wait_s=lock_wait if lock_wait is not None and lock_wait >= 0 else 600.0,
        skip_compile=bool(get("MFBENCH_SKIP_COMPILE")),
        commit=get("MFBENCH_COMMIT") or None,
        dirty=get("MFBENCH_DIRTY") == "1",
        cache_dir=get("MFBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mfbench"),
        ceilings_max_age_days=_number(get("MFBENCH_CEILINGS_MAX_AGE_DAYS"), None),
        asv_devices=_list(get("MFBENCH_ASV_DEVICES")),
        asv_providers=_list(get("MFBENCH_ASV_PROVIDERS")),
        asv_seqs=seqs,
        asv_preset=get("MFBENCH_ASV_PRESET") or "tiny",
        asv_tasks=_list(get("MFBENCH_ASV_TASKS")) or ("mqar",),
        asv_timer=timer,
        asv_budget_seconds=train_budget,
        asv_cache=get("MFBENCH_ASV_CACHE", ""),
        alert_rounds=_int(get("MFBENCH_ALERT_ROUNDS")) or 2,
        alert_max_rounds=_int(get("MFBENCH_ALERT_MAX_ROUNDS")) or 6,
        alert_providers=get("MFBENCH_ALERT_PROVIDERS") or None,
        alert_directions=get("MFBENCH_ALERT_DIRECTIONS") or "forward,backward",
        alert_seqs=get("MFBENCH_ALERT_SEQS") or None,
        alert_preset=get("MFBENCH_ALERT_PRESET") or "tiny",
        alert_device=get("MFBENCH_ALERT_DEVICE") or None,
        alert_accuracy=get("MFBENCH_ALERT_ACCURACY", "1") != "0",
        alert_accuracy_sequences=_int(get("MFBENCH_ALERT_ACCURACY_SEQUENCES")),
        device=get("MFBENCH_DEVICE") or None,
        problems=tuple(problems),
    )


def triton_cache_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Triton cache every mfbench process shares, for an entry point to set before its first compile.

    Otherwise the first torch.compile'd kernel of a process points TRITON_CACHE_DIR at Inductor's per-device
    folder (/tmp/torchinductor_USER/triton/<device index>), so the kernels' binaries and autotuning results
    land in a different place for cuda:0 and cuda:1, and before and after a process's first compile: seen
    on nvidia-h200-x2, where each rank of a warm distributed run re-tuned and re-compiled the lookup kernels
    (up to 28 s of a 57 s share). This is Triton's own default location; a TRITON_CACHE_DIR already set wins.
    """
    env = os.environ if environ is None else environ
    if env.get("TRITON_CACHE_DIR"):
        return {}
    home = env.get("TRITON_HOME") or os.path.expanduser("~")
    return {"TRITON_CACHE_DIR": os.path.join(home, ".triton", "cache")}
