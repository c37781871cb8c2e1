"""The training commands: ``train`` (MemoryFormer and the dense baseline on a synthetic task, into
snapshots and rows) and ``snapshot`` (list the snapshots, or evaluate one through every provider)."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys

import pandas as pd
import torch

from mfbench.bench import budget as budgets
from mfbench.bench import train
from mfbench.core import providers
from mfbench.shells.cli import common
from mfbench.shells.cli.common import UsageError
from mfbench.store import results, snapshots
from mfbench.tasks import synthetic


def _train_provider(text: str | None, dev: torch.device) -> str:
    """The provider the MemoryFormer trains with: the fastest exact one measured for the device by default."""
    name = text or train.default_provider(dev)
    if name not in providers.names(exact_only=True):
        raise UsageError(f"--provider {name!r}: train through one of {', '.join(providers.names(exact_only=True))}")
    reason = providers.unavailable(name, str(dev), torch.float32)
    if reason:
        raise UsageError(f"provider {name} cannot run on {dev}: {reason}")
    return name


def cmd_train(args: argparse.Namespace) -> int:
    if args.budget_seconds is not None or args.budget_joules is not None or args.seeds is not None:
        return _cmd_budget(args)
    try:
        rec = train.recipe(args.preset, steps=args.steps, seed=args.seed)
        task = synthetic.make(args.task)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if rec.steps < 1:
        raise UsageError(f"--steps must be positive, got {rec.steps}")
    dev, rank, world = common.start_ranks(args)
    provider = _train_provider(args.provider, dev)
    archs = list(train.ARCHITECTURES) if args.arch == "both" else [args.arch]
    args.results_dir = args.results_dir or results.project_dir()
    if not args.no_save and rank == 0:
        common.ready_to_write(args.results_dir)
    run = results.Run.start(str(dev))
    if world > 1:
        from mfbench.bench import ranks as distributed

        run = distributed.rank_run(distributed.broadcast(run), dev)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(_header(run, archs, task, rec, dev, provider, world), flush=True)
    try:
        summary = [line for arch in archs
                   if (line := _train_one(args, arch, rec, task, dev, provider, run, say)) is not None]
    except KeyboardInterrupt as exc:
        return 128 + getattr(exc, "signum", signal.SIGINT)
    if args.distributed:
        from mfbench.bench import ranks as distributed

        distributed.dist.barrier()
        distributed.dist.destroy_process_group()
        if rank != 0:
            return 0
    common.print_frame(pd.DataFrame(summary))
    return 0


def _header(run, archs: list[str], task, rec, dev: torch.device, provider: str, world: int) -> str:
    """What a training run does, in three short lines (one line was 256 characters)."""
    task_spec = ", ".join(f"{k} {v}" for k, v in task.spec().items() if k != "task")
    return (f"run {run.run_id}: train {', '.join(archs)} on {task.name}, preset {rec.name}, on {dev}"
            + (f" via {provider}" if "memoryformer" in archs else "") + (f", DDP over {world} ranks" if world > 1 else "")
            + f"\n  {task.name}: {task_spec}\n  {rec.steps} steps x {rec.batch} sequences x {task.seq_len} tokens; "
            f"lr: dense {rec.lr:g}, MemoryFormer x{train.LR_RATIO:g}")


def _train_one(args, arch: str, rec, task, dev: torch.device, provider: str, run, say) -> dict | None:
    """Train one architecture, evaluate it, save its snapshot and rows; its summary line (None off rank 0)."""
    from mfbench.bench import ranks as distributed

    rank, world = distributed.rank_and_world()
    try:
        trained = train.train(arch, rec, task, dev, provider, progress=lambda m: say(m, flush=True))
    except KeyboardInterrupt:
        print(f"interrupted while training {arch}: nothing of it is kept", file=sys.stderr)
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if world > 1:  # per-rank energy and time stay per rank; rank 0 adds them up where a total is wanted
        rank_curves = distributed.gather({"device": run.device, "fingerprint": run.fingerprint, "curve": trained.curve})
        if rank != 0:
            return None
    correct, scored, _ = snapshots.task_accuracy(trained.model, task, rec.eval_sequences, snapshots.EVAL_SEED, dev)
    acc = correct / scored
    label = providers.baseline() if arch == "dense" else provider
    extra = {"recipe": train.recipe_dict(rec), "train_provider": label, "curve": trained.curve,
             "trained_seconds": trained.seconds, "lr": trained.lr, "device": run.device,
             "fingerprint": json.loads(run.fingerprint), "run_id": run.run_id,
             "eval": {"sequences": rec.eval_sequences, "seed": snapshots.EVAL_SEED, "chance": task.chance},
             "accuracy": {label: acc}}
    snap = None if args.no_save else snapshots.save(trained.model, arch, trained.config, task, extra, args.snapshots_dir)
    rows = train.train_rows(run, arch, label, rec, task, trained, acc, scored, snap.id if snap else None)
    if world > 1:
        rows = distributed.tag_rank(rows) + train.rank_train_rows(run, rows[0], rank_curves)
    if not args.no_save:
        common.append(rows, args.results_dir)
        print(f"  snapshot {snap.id} at {snap.path}; {len(rows)} rows appended", flush=True)
    value = {r["metric"]: r["value"] for r in rows}  # per-rank rows have metric names of their own
    return {"architecture": arch, "provider": label, "lr": f"{trained.lr:g}",
            "final loss": f"{value['final_loss']:.3f}", "accuracy": f"{acc:.3f}",
            "chance": f"{task.chance:.3f}", "ms/step": f"{1e3 * value['time_per_step']:.1f}",
            "J/step": f"{value['energy_per_step']:.3g}" if "energy_per_step" in value else "-",
            "train s": f"{trained.seconds:.0f}", "snapshot": snap.id if snap else "-"}


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"--seeds takes whole numbers, e.g. --seeds 0,1,2; got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds takes distinct whole numbers from 0, e.g. --seeds 0,1,2; got {text!r}")
    return seeds


def _cmd_budget(args: argparse.Namespace) -> int:
    """Each architecture and seed trained until the budget is spent, evaluated at its fractions, into rows."""
    try:
        budget = budgets.parse(args.budget_seconds, args.budget_joules)
        rec, task = train.recipe(args.preset), synthetic.make(args.task)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if budget is None:
        raise UsageError("--seeds is for budget runs (--budget-seconds, --budget-joules); a step run takes --seed")
    if args.steps is not None or args.seed is not None or args.distributed:
        raise UsageError("a budget run takes --seeds, not --steps, --seed or --distributed")
    seeds = _seeds(args.seeds or "0,1,2")
    dev = common.device(args.device or common.default_device())
    provider = _train_provider(args.provider, dev)
    archs = list(train.ARCHITECTURES) if args.arch == "both" else [args.arch]
    args.results_dir = args.results_dir or results.project_dir()
    if not args.no_save:
        common.ready_to_write(args.results_dir)
    try:
        energy, idle = budgets.meter_for(budget, dev)
    except budgets.BudgetError as exc:
        raise UsageError(str(exc)) from None
    run = results.Run.start(str(dev))
    print(f"run {run.run_id}: train {', '.join(archs)} on {task.name}, preset {rec.name}, to {budget.amount:g} "
          f"{budget.unit} each ({budget.kind}; evaluated at {', '.join(f'{f:g}' for f in budgets.FRACTIONS)} of it, "
          f"evaluation outside the budget), seeds {', '.join(map(str, seeds))}, on {dev}"
          + (f", MemoryFormer via {provider}" if "memoryformer" in archs else "")
          + (f"; energy {energy.method}, idle {idle:.4g} W" if idle is not None else f"; energy: {energy.reason}"), flush=True)
    summary = []
    try:
        for seed in seeds:  # the architectures alternate, so a change in the machine's load touches both
            for arch in archs:
                summary.append(_budget_one(args, arch, train.recipe(args.preset, seed=seed), task, dev, provider,
                                           budget, (energy, idle), run))
    except KeyboardInterrupt as exc:
        print(f"interrupted: the {len(summary)} trainings finished before are in the tables", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    common.print_frame(pd.DataFrame(summary))
    return 0


def _budget_one(args, arch: str, rec, task, dev: torch.device, provider: str, budget, meter, run) -> dict:
    """One architecture and seed to the budget; its rows appended at once (an interrupt keeps them)."""
    energy, idle = meter
    try:
        found = budgets.train_to_budget(arch, rec, task, dev, provider, budget, energy, idle,
                                        progress=lambda m: print(m, flush=True))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    rows = budgets.rows(run, rec, task, budget, found, energy, idle, [f"note: {args.note}"] if args.note else [])
    if not args.no_save:
        common.append(rows, args.results_dir)
    last = found.points[-1]
    return {"architecture": arch, "provider": found.provider, "seed": rec.seed, "steps": last.steps,
            "s": f"{last.seconds:.1f}", "J net": "-" if last.joules is None else f"{last.joules:.4g}",
            **{f"acc at {p.fraction:g}": f"{p.accuracy:.3f}" for p in found.points}}


def cmd_snapshot(args: argparse.Namespace) -> int:
    try:
        if args.snapshot_command == "list":
            return _list_snapshots(args.snapshots_dir)
        snap = snapshots.find(args.id, args.snapshots_dir, architecture=None if args.id != "latest" else "memoryformer")
    except snapshots.SnapshotError as exc:
        raise UsageError(str(exc)) from None
    tolerance = _tolerance(args.tolerance)
    dev = common.device(args.device or common.default_device())
    names = common.provider_list(args.providers, providers.names(exact_only=True))
    print(f"snapshot {snap.id}: {snap.meta['architecture']} {snap.meta['config']['name']} on "
          f"{snap.meta['task']['task']}, trained at {snap.meta['commit'][:10]}; tolerance {tolerance:g}", flush=True)
    measured = snapshots.evaluate(snap, names, dev, args.sequences, progress=lambda m: print(m, flush=True))
    reference = measured[0]
    common.print_frame(pd.DataFrame([m.line(reference, tolerance) for m in measured]))
    for name in args.choice.split(",") if args.choice else []:
        _score_choice(snap, name.strip(), args, dev, [m.provider for m in measured if not (m.skipped or m.failed)])
    if not args.no_save:
        run = results.Run.start(str(dev))
        rows = snapshots.rows(snap, measured, run, args.sequences)
        try:
            path = results.append(rows, args.results_dir or results.project_dir())
        except results.ResultsError as exc:
            raise UsageError(str(exc)) from None
        print(f"wrote {len(rows)} rows to {path} (run {run.run_id})")
    failed = [m.provider for m in measured if not m.agrees_with(reference, tolerance)]
    if failed:
        broken = [m.provider for m in measured if m.failed and m.provider in failed]
        differ = [name for name in failed if name not in broken]
        said = ([f"{', '.join(differ)} differ from reference by more than {tolerance:g}"] if differ else []) + \
            ([f"{', '.join(broken)} failed to run"] if broken else [])
        print(f"accuracy regression: {'; '.join(said)}", file=sys.stderr)
        return 1
    return 0


def _tolerance(given: float | None) -> float:
    """--tolerance: a finite difference of accuracy, 0 or more (NaN would agree with anything)."""
    if given is None:
        return snapshots.ACCURACY_TOLERANCE
    if not math.isfinite(given) or given < 0:
        raise UsageError(f"--tolerance must be a finite accuracy difference of 0 or more, got {given:g}")
    return given


def _list_snapshots(directory) -> int:
    snaps = snapshots.listing(directory)
    if not snaps:
        print(f"no snapshots under {directory or snapshots.directory()}")
        return 0
    common.print_frame(pd.DataFrame([{
        "id": s.id, "architecture": s.meta["architecture"], "preset": s.meta["config"]["name"],
        "task": s.meta["task"].get("task", "-"), "steps": s.meta.get("recipe", {}).get("steps", "-"),
        "accuracy": ", ".join(f"{k} {v:.3f}" for k, v in s.meta.get("accuracy", {}).items()),
        "commit": s.meta["commit"][:10], "MB": f"{s.meta.get('weights_bytes', 0) / 2**20:.1f}",
        "created": s.meta.get("created_utc", "-")} for s in snaps]))
    return 0


def _score_choice(snap, name: str, args: argparse.Namespace, device: torch.device, names: list[str]) -> None:
    from mfbench.tasks import choice

    vocab = snap.meta["config"]["vocab_size"]
    if vocab < choice.BYTE_VOCAB:
        raise UsageError(f"snapshot {snap.id} reads {vocab} token ids; multiple-choice text needs a byte "
                         f"vocabulary of {choice.BYTE_VOCAB} or more")
    try:
        questions = choice.load(name, args.data, args.limit)
    except (choice.DataMissing, ValueError) as exc:
        raise UsageError(str(exc)) from None
    model = snap.load_model(device)
    for provider in names:
        if hasattr(model, "set_provider"):
            model.set_provider(provider)
        s = choice.score(model, questions, device)
        print(f"{name}: {provider}: acc {s.acc:.4f}, acc_norm {s.acc_norm:.4f} over {s.questions} questions")
