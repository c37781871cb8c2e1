"""The training recipe behind the accuracy snapshots: MemoryFormer and the dense baseline, the same model
config and token budget, on a synthetic task; MemoryFormer at 3x the baseline's learning rate (the paper).

Every ``log_every`` steps the loop records the mean loss, the wall time per step, tokens per second and,
where NVML has an energy counter, joules per step (one energy window per interval; the device is
synchronised at its ends only, so the steps inside run as they would in any training job).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from mfbench.core.lookup import input_checks
from mfbench.instruments.energy import EnergyMeter
from mfbench.core.model import ModelConfig, build
from mfbench.tasks.synthetic import IGNORE, SyntheticTask

LR_RATIO = 3.0  # MemoryFormer's learning rate over the dense baseline's, as in the paper's training setup
ARCHITECTURES = ("memoryformer", "dense")
# Training batches are drawn with seeds from here on and evaluation sets with EVAL_SEED, so the model is
# never scored on a sequence it was trained on by construction of the seeds (mfbench.store.snapshots).
TRAIN_SEED_BASE = 1_000_000


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str  # a ModelConfig preset
    steps: int
    batch: int  # sequences per step
    lr: float  # the dense baseline's peak learning rate; MemoryFormer gets LR_RATIO times it
    warmup: int
    weight_decay: float = 0.0
    log_every: int = 25
    eval_sequences: int = 256
    seed: int = 0

    def lr_for(self, architecture: str) -> float:
        return self.lr * (LR_RATIO if architecture == "memoryformer" else 1.0)

    def schedule(self, step: int) -> float:
        """Linear warm-up, then cosine decay to a tenth over the recipe's steps."""
        return lr_factor(step, self.warmup, (step - self.warmup) / max(1, self.steps - self.warmup))


def lr_factor(step: int, warmup: int, progress: float) -> float:
    """The factor on the peak learning rate: linear warm-up over ``warmup`` steps, then cosine decay to a
    tenth as ``progress`` goes from 0 to 1 (a share of the steps, or of a budget: mfbench.bench.budget)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def default_provider(device: torch.device) -> str:
    """How MemoryFormer's layers compute while training unless asked otherwise: the fastest exact provider
    measured for the device type (the Triton kernels on a GPU, embedding_bag on the CPU)."""
    return "triton" if device.type == "cuda" else "embedding_bag"


RECIPES: dict[str, Recipe] = {
    # micro: both models inside 3 minutes on two CPU cores (about 1.5 min seen, embedding_bag provider).
    # On mqar the MemoryFormer's recall jumps from about chance to near 1 somewhere in its second
    # thousand steps; where exactly depends on the seed, hence 2500.
    "micro": Recipe("micro", "micro", steps=2500, batch=32, lr=3e-3, warmup=100, log_every=100),
    # tiny: the paper's smallest shapes, both models inside 5 minutes on one H100.
    "tiny": Recipe("tiny", "tiny", steps=1000, batch=64, lr=3e-4, warmup=100, log_every=50, eval_sequences=1024),
}


def recipe(name: str, **overrides) -> Recipe:
    try:
        base = RECIPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown training preset {name!r}; choose one of {', '.join(RECIPES)}") from None
    from dataclasses import replace

    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def model_config(rec: Recipe, task: SyntheticTask, provider: str) -> ModelConfig:
    """The recipe's model preset with the task's vocabulary; the provider is how Memory Layers compute."""
    return ModelConfig.preset(rec.model, vocab_size=task.vocab_size, provider=provider)


@dataclass
class TrainResult:
    architecture: str
    model: torch.nn.Module
    config: ModelConfig
    lr: float
    curve: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def tokens_per_step(self) -> int:
        return self.curve[0]["tokens_per_step"] if self.curve else 0


def loss_on(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


def setup(architecture: str, rec: Recipe, task: SyntheticTask, device: torch.device,
          provider: str) -> tuple[torch.nn.Module, ModelConfig, float, torch.optim.Optimizer]:
    """(model, config, peak learning rate, AdamW) of one architecture, initialised from the recipe's seed."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    cfg = model_config(rec, task, provider if architecture == "memoryformer" else "reference")
    torch.manual_seed(rec.seed)
    with torch.device(device):
        model = build(architecture, cfg)
    lr = rec.lr_for(architecture)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=rec.weight_decay)
    return model, cfg, lr, optimizer


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
               targets: torch.Tensor) -> torch.Tensor:
    """One AdamW step on one batch; the loss, still on the device (reading it would sync)."""
    loss = loss_on(net, inputs, targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train(architecture: str, rec: Recipe, task: SyntheticTask, device: torch.device, provider: str,
          progress: Callable[[str], None] | None = None) -> TrainResult:
    from mfbench.bench.ranks import rank_and_world

    rank, world = rank_and_world()
    if rec.batch % world:
        raise ValueError(f"a global batch of {rec.batch} sequences does not split over {world} ranks")
    model, cfg, lr, optimizer = setup(architecture, rec, task, device, provider)
    # Under torchrun: DistributedDataParallel, each rank a slice of the same global batch, so the averaged
    # gradient is the one-device gradient (every sequence has the same number of scored answers).
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    part = slice(rank * rec.batch // world, (rank + 1) * rec.batch // world)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rec.schedule)
    meter = EnergyMeter(device)
    result = TrainResult(architecture, model, cfg, lr)
    tokens = rec.batch * task.seq_len
    model.train()
    start = time.perf_counter()
    for first in range(0, rec.steps, rec.log_every):
        last = min(first + rec.log_every, rec.steps)
        meter.begin_window("interval")
        t0 = time.perf_counter()
        losses = []
        # The input scans (token range, NaN/Inf before every Memory Layer) each sync the GPU: inside the
        # timed steps they would stall MemoryFormer's many layers more than the dense model's one check.
        # The batches are the task's own; a diverging run shows as a NaN loss in the log.
        with input_checks(False):
            for step in range(first, last):
                inputs, targets = (t[part].to(device) for t in task.batch(rec.batch, TRAIN_SEED_BASE + rec.seed * rec.steps + step))
                losses.append(train_step(net, optimizer, inputs, targets))
                scheduler.step()
        mean_loss = torch.stack(losses).mean()  # one sync per interval
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(mean_loss)
            mean_loss /= world
        mean_loss = float(mean_loss)
        energy = meter.end_window("interval", last - first)
        seconds = time.perf_counter() - t0
        steps = last - first
        point = {"step": last, "loss": mean_loss, "seconds_per_step": seconds / steps, "ranks": world,
                 "tokens_per_step": tokens, "tokens_per_s": tokens * steps / seconds,
                 "joules_per_step": energy.joules_per_call, "energy_method": energy.method}
        result.curve.append(point)
        if progress:
            joules = "" if energy.joules is None else f", {energy.joules_per_call:.3g} J/step"
            progress(f"  {architecture:<12} step {last:>5}/{rec.steps}  loss {mean_loss:.3f}  "
                     f"{point['tokens_per_s']:,.0f} tok/s{joules}")
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


def recipe_dict(rec: Recipe) -> dict:
    return {**asdict(rec), "lr_ratio_memoryformer": LR_RATIO}


def rank_train_rows(run, like: dict, curves: list[dict]) -> list[dict]:
    """Each rank's own time and energy per step (its device, its fingerprint), and their derived totals."""
    out, total = [], 0.0
    params = json.loads(like["params"])
    for r, info in enumerate(curves):
        rank_run = dataclasses.replace(run, device=info["device"], fingerprint=info["fingerprint"])
        p = {**params, "rank": r, "world_size": len(curves)}
        out.append(rank_run.row(like["benchmark"], p, like["provider"], "rank_time_per_step",
                                statistics.median(c["seconds_per_step"] for c in info["curve"]), "s", flags=[f"rank={r}/{len(curves)}"]))
        joules = [c["joules_per_step"] for c in info["curve"] if c["joules_per_step"] is not None]
        if joules:
            out.append(rank_run.row(like["benchmark"], p, like["provider"], "rank_energy_per_step",
                                    statistics.median(joules), "J", flags=[f"rank={r}/{len(curves)}"]))
            total += statistics.median(joules)
    if total and len([r for r in out if r["metric"] == "rank_energy_per_step"]) == len(curves):
        out.append(run.row(like["benchmark"], {**params, "world_size": len(curves)}, like["provider"],
                           "energy_per_step_all_ranks", total, "J", flags=["derived:sum-of-ranks"]))
    return out


def train_rows(run, arch: str, provider: str, rec, task, trained, acc: float, scored: int,
               snapshot: str | None) -> list[dict]:
    """Rows (benchmark 'train:TASK') of one trained model: accuracy, final loss, time, throughput, energy."""
    params = {"preset": rec.name, "architecture": arch, "steps": rec.steps, "batch": rec.batch, "lr": trained.lr,
              "seed": rec.seed, "tokens_per_step": trained.tokens_per_step, "snapshot": snapshot,
              **{f"task_{k}": v for k, v in task.spec().items()}, "chance": task.chance}
    bench = f"train:{task.name}"
    per_step = [p["seconds_per_step"] for p in trained.curve]
    q = statistics.quantiles(per_step, n=4) if len(per_step) > 1 else [per_step[0]] * 3
    out = [run.row(bench, params, provider, "accuracy", acc, "fraction", samples=scored),
           run.row(bench, params, provider, "final_loss", trained.curve[-1]["loss"], "nats"),
           run.row(bench, params, provider, "time_per_step", statistics.median(per_step), "s", spread_low=q[0],
                   spread_high=q[2], spread_kind="iqr", samples=len(per_step), flags=["per-log-interval"]),
           run.row(bench, params, provider, "tokens_per_s", statistics.median(p["tokens_per_s"] for p in trained.curve),
                   "tokens/s")]
    joules = [p["joules_per_step"] for p in trained.curve if p["joules_per_step"] is not None]
    if joules:
        out.append(run.row(bench, params, provider, "energy_per_step", statistics.median(joules), "J",
                           samples=len(joules), flags=[trained.curve[0]["energy_method"]]))
    return out
