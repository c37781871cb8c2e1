"""Accuracy snapshots: a trained checkpoint with its config, task, recipe, commit and accuracy, stored
content-addressed under ``results/snapshots/<id>/`` (``weights.pt`` + ``snapshot.json``).

The id is a hash of the weights and of what they mean (architecture, config, task), so the same
training result is stored once; ``snapshot.json`` also carries ``meta_sha256``, a hash of every other
recorded field (accuracy, eval, recipe, ...). The seal is checked whenever snapshots are listed or found,
the id whenever the weights are loaded: swapped weights or an edited record are a SnapshotError, never an
evaluation against the wrong figures. Small snapshots (the ``micro`` ones) are committed; ones larger
than ``COMMIT_LIMIT_BYTES`` go under ``results/snapshots/local/``, which git ignores.

``evaluate`` re-runs a snapshot's task through every provider. Providers must agree with ``reference``
within ``ACCURACY_TOLERANCE``; the share of hash indices (sign-bit buckets of every Memory Layer, every
token) identical to ``reference``'s is recorded beside each accuracy.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mfbench.core import providers
from mfbench.core.lookup import sign_hash, split_chunks
from mfbench.core.model import MemoryLayer, ModelConfig, build
from mfbench.tasks.synthetic import SyntheticTask, accuracy, from_spec

WEIGHTS = "weights.pt"
META = "snapshot.json"
SEAL = "meta_sha256"
COMMIT_LIMIT_BYTES = 32 * 2**20
# Absolute difference in accuracy allowed between a provider and ``reference`` on the same snapshot.
# Providers sum the same rows in different orders, so a token whose chunk sits within rounding of zero
# can hash to another bucket; on the micro snapshot that moves no answer at all (bucket agreement ~1).
ACCURACY_TOLERANCE = 0.005


# The seed of every evaluation set; training draws its batches from other seeds (mfbench.bench.train).
EVAL_SEED = 7


class SnapshotError(Exception):
    """A snapshot that does not exist, is ambiguous or is damaged; the message says which."""


def directory() -> Path:
    from mfbench.store.results import project_dir

    return project_dir() / "snapshots"


@dataclass(frozen=True)
class Snapshot:
    path: Path
    meta: dict

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def task(self) -> SyntheticTask:
        try:
            return from_spec(self.meta["task"])
        except (TypeError, ValueError, KeyError) as exc:
            raise SnapshotError(f"snapshot {self.id}: its task {self.meta['task']} cannot be made: {exc}") from None

    @property
    def config(self) -> ModelConfig:
        try:
            return ModelConfig(**self.meta["config"])
        except (TypeError, ValueError) as exc:
            raise SnapshotError(f"snapshot {self.id}: its config cannot be built: {exc}") from None

    def load_model(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        try:
            with torch.device(device):
                model = build(self.meta["architecture"], self.config)
        except (TypeError, ValueError, KeyError) as exc:
            raise SnapshotError(f"snapshot {self.id}: its model cannot be built: {exc}") from None
        try:
            weights = (self.path / WEIGHTS).read_bytes()
            state = torch.load(io.BytesIO(weights), map_location=device, weights_only=True)
            model.load_state_dict(state)
        except (OSError, RuntimeError, EOFError, ValueError, KeyError) as exc:  # truncated, corrupt, other shapes
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SnapshotError(f"snapshot {self.id}: its weights ({self.path / WEIGHTS}) cannot be loaded: {first}") from None
        found = _content_id(weights, _identity(self.meta))
        if found != self.id:
            raise SnapshotError(f"snapshot {self.id}: its weights and identity hash to {found}, not to its id: "
                                f"{self.path / WEIGHTS} was swapped or changed, or the architecture, config or task "
                                "recorded was edited")
        model.eval()
        return model


def _content_id(weights: bytes, identity: dict) -> str:
    digest = hashlib.sha256(weights)
    digest.update(json.dumps(identity, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def _identity(meta: dict) -> dict:
    return {"architecture": meta["architecture"], "config": meta["config"], "task": meta["task"]}


def seal(meta: dict) -> str:
    """The hash of every recorded field but the seal itself."""
    rest = {k: v for k, v in meta.items() if k != SEAL}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


# the fields every snapshot holds, and the type each must have; checked (with the seal) before any is used
_FIELDS = {"id": str, "architecture": str, "config": dict, "task": dict, "eval": dict, "commit": str, SEAL: str}
_OPTIONAL = {"accuracy": dict, "recipe": dict, "weights_bytes": int, "created_utc": str}


def _checked(meta, where: Path) -> dict:
    """``meta`` if it is a whole, sealed snapshot record; else a SnapshotError naming what is wrong."""
    def wrong(why: str) -> SnapshotError:
        return SnapshotError(f"{where}: damaged snapshot metadata ({why})")

    if not isinstance(meta, dict):
        raise wrong(f"{type(meta).__name__}, not an object")
    for name, kind in {**_FIELDS, **{k: v for k, v in _OPTIONAL.items() if k in meta}}.items():
        if name not in meta:
            raise wrong(f"no {name!r}" + ("; made before records were sealed: if you trust it, add "
                                          "snapshots.seal(meta) as its meta_sha256" if name == SEAL else ""))
        if not isinstance(meta[name], kind) or isinstance(meta[name], bool):
            raise wrong(f"{name!r} is {json.dumps(meta[name])[:40]}, not {kind.__name__}")
    if not isinstance(meta["task"].get("task"), str) or not isinstance(meta["config"].get("name"), str):
        raise wrong("a task without its name, or a config without its preset name")
    sequences = meta["eval"].get("sequences")
    if not isinstance(sequences, int) or isinstance(sequences, bool) or sequences < 1:
        raise wrong(f"eval sequences {sequences!r} is not a positive whole number")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in meta.get("accuracy", {}).values()):
        raise wrong("an accuracy that is not a number")
    if meta["id"] != where.parent.name:
        raise wrong(f"its id {meta['id']!r} is not its directory's name")
    if seal(meta) != meta[SEAL]:
        raise wrong(f"{SEAL} does not match what is recorded: a field (accuracy, eval, ...) was edited after "
                    "training")
    return meta


def save(model: torch.nn.Module, architecture: str, cfg: ModelConfig, task: SyntheticTask, extra: dict,
         root: Path | None = None) -> Snapshot:
    """Store a trained model; ``extra`` holds the recipe, curve, accuracy and provenance."""
    from mfbench.instruments.fingerprint import git_commit

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    weights = buffer.getvalue()
    identity = {"architecture": architecture, "config": asdict(cfg), "task": task.spec()}
    snap_id = _content_id(weights, identity)
    root = Path(root) if root else directory()
    path = (root / "local" if len(weights) > COMMIT_LIMIT_BYTES else root) / snap_id
    commit, dirty = git_commit()
    meta = {"id": snap_id, **identity, "commit": commit, "dirty": dirty,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "weights_bytes": len(weights), **extra}
    meta = json.loads(json.dumps(meta))  # sealed as it will read back
    meta[SEAL] = seal(meta)
    path.mkdir(parents=True, exist_ok=True)
    for name, data in ((WEIGHTS, weights), (META, json.dumps(meta, indent=1, sort_keys=True).encode())):
        tmp = path / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        tmp.replace(path / name)
    return Snapshot(path, meta)


def listing(root: Path | None = None) -> list[Snapshot]:
    """Every snapshot under ``root``, oldest first."""
    root = Path(root) if root else directory()
    found = []
    for meta_path in list(root.glob(f"*/{META}")) + list(root.glob(f"local/*/{META}")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SnapshotError(f"{meta_path}: unreadable snapshot metadata ({exc})") from None
        found.append(Snapshot(meta_path.parent, _checked(meta, meta_path)))
    return sorted(found, key=lambda s: (s.meta.get("created_utc", ""), s.id))


def find(ref: str = "latest", root: Path | None = None, architecture: str | None = "memoryformer",
         task: str | None = None) -> Snapshot:
    """A snapshot by id (or unique prefix), or the newest one (``latest``) of an architecture and task."""
    snaps = listing(root)
    where = Path(root) if root else directory()
    if ref == "latest":
        snaps = [s for s in snaps if (architecture is None or s.meta["architecture"] == architecture)
                 and (task is None or s.meta["task"]["task"] == task)]
        if not snaps:
            raise SnapshotError(f"no {architecture or ''} snapshot{' for ' + task if task else ''} under {where}; "
                                "make one with `mfbench train`")
        return snaps[-1]
    matches = [s for s in snaps if s.id.startswith(ref)]
    if len(matches) != 1:
        known = ", ".join(s.id for s in snaps[-5:]) or "none"
        raise SnapshotError(f"snapshot {ref!r} {'is ambiguous' if matches else 'not found'} under {where}; "
                            f"known: {known}")
    return matches[0]


# --- evaluation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderAccuracy:
    provider: str
    accuracy: float | None
    correct: int
    scored: int
    bucket_agreement: float | None = None  # share of hash indices identical to reference's
    skipped: str | None = None  # this machine cannot run the provider at all (no GPU, no Triton)
    failed: str | None = None  # it should run here and did not: never a pass
    # an exact provider off the float64 reference on a tiny layer (providers.trial): never a pass either,
    # even where the task's accuracy happens to come out the same
    mismatch: str | None = None

    def agrees_with(self, reference: "ProviderAccuracy", tolerance: float = ACCURACY_TOLERANCE) -> bool:
        if self.failed or reference.failed or self.mismatch:
            return False
        return not self.differs_from(reference, tolerance)

    def differs_from(self, reference: "ProviderAccuracy", tolerance: float = ACCURACY_TOLERANCE) -> bool:
        if self.accuracy is None or reference.accuracy is None:
            return False  # skipped: this machine cannot run it, nothing to disagree with
        return abs(self.accuracy - reference.accuracy) > tolerance

    def verdict(self, reference: "ProviderAccuracy", tolerance: float = ACCURACY_TOLERANCE) -> str:
        if self.failed:
            return f"FAILED: {self.failed}"
        if self.skipped:
            return f"skipped: {self.skipped}"
        if self.differs_from(reference, tolerance):
            return "DISAGREES"
        return f"FAILED: {self.mismatch}" if self.mismatch else "agrees"

    def line(self, reference: "ProviderAccuracy", tolerance: float = ACCURACY_TOLERANCE) -> dict:
        """What ``mfbench snapshot eval`` prints for this provider beside the reference."""
        return {"provider": self.provider,
                "accuracy": "-" if self.accuracy is None else f"{self.accuracy:.4f}",
                "vs reference": "-" if self.accuracy is None or reference.accuracy is None
                else f"{self.accuracy - reference.accuracy:+.4f}",
                "bucket agreement": "-" if self.bucket_agreement is None else f"{self.bucket_agreement:.6f}",
                "verdict": self.verdict(reference, tolerance)}


class _BucketRecorder:
    """Forward pre-hooks on every Memory Layer that keep the bucket index each token lands in."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.buckets: list[torch.Tensor] = []
        self._handles = [m.register_forward_pre_hook(self._hook) for m in model.modules() if isinstance(m, MemoryLayer)]

    def _hook(self, layer: MemoryLayer, args: tuple) -> None:
        x = args[0].detach().reshape(-1, layer.in_features)
        self.buckets.append(sign_hash(split_chunks(x, layer.spec.tau)).cpu())

    def close(self) -> torch.Tensor | None:
        for h in self._handles:
            h.remove()
        return torch.cat([b.flatten() for b in self.buckets]) if self.buckets else None


@torch.no_grad()
def task_accuracy(model: torch.nn.Module, task: SyntheticTask, sequences: int, seed: int,
                  device: torch.device | str, batch: int = 64) -> tuple[int, int, torch.Tensor | None]:
    """(correct, scored, bucket indices) of ``model`` on ``sequences`` evaluation sequences from ``seed``."""
    inputs, targets = task.batch(sequences, seed)
    recorder = _BucketRecorder(model)
    correct = scored = 0
    try:
        for i in range(0, sequences, batch):
            c, n = accuracy(model(inputs[i:i + batch].to(device)).cpu(), targets[i:i + batch])
            correct, scored = correct + c, scored + n
    finally:
        buckets = recorder.close()
    return correct, scored, buckets


def evaluate(snap: Snapshot, names: list[str] | None = None, device: torch.device | str = "cpu",
             sequences: int | None = None, progress=None) -> list[ProviderAccuracy]:
    """The snapshot's task accuracy through each provider (every exact one by default; ``reference``
    always, first). A dense snapshot has no Memory Layers: it is scored once, as ``dense``."""
    device = torch.device(device)
    sequences = sequences or snap.meta["eval"]["sequences"]
    seed = snap.meta["eval"].get("seed", EVAL_SEED)
    model = snap.load_model(device)
    task = snap.task
    if snap.meta["architecture"] == "dense":
        c, n, _ = task_accuracy(model, task, sequences, seed, device)
        return [ProviderAccuracy(providers.baseline(), c / n, c, n)]
    first = providers.reference()
    names = [first] + [p for p in (names or providers.names(exact_only=True)) if p != first]
    out: list[ProviderAccuracy] = []
    reference_buckets = None
    for name in names:
        reason = providers.requirement_unmet(name, str(device), torch.float32)
        if reason:
            out.append(ProviderAccuracy(name, None, 0, 0, skipped=reason))
            continue
        if progress:
            progress(f"  evaluating {snap.id} through {name} ...")
        model.set_provider(name)
        try:
            c, n, buckets = task_accuracy(model, task, sequences, seed, device)
        except Exception as exc:  # noqa: BLE001 - a provider that should run here and fails is an answer
            out.append(ProviderAccuracy(name, None, 0, 0, failed=providers.failure(exc)))
            continue
        if name == first:
            reference_buckets = buckets
        agreement = float((buckets == reference_buckets).double().mean()) if reference_buckets is not None else None
        # a provider that answers in another shape or dtype, over its time budget, or off float64 may still
        # score the task: the trial on a tiny layer keeps it from passing
        found = providers.trial(name, str(device), torch.float32)
        if found.error:
            out.append(ProviderAccuracy(name, None, 0, 0, failed=found.error))
            continue
        out.append(ProviderAccuracy(name, c / n, c, n, agreement, mismatch=found.mismatch))
    return out


def rows(snap: Snapshot, measured: list[ProviderAccuracy], run, sequences: int | None = None) -> list[dict]:
    """Result-table rows (benchmark 'accuracy:TASK'): accuracy and bucket agreement per provider."""
    params = {"snapshot": snap.id, "architecture": snap.meta["architecture"], "preset": snap.meta["config"]["name"],
              **{f"task_{k}": v for k, v in snap.meta["task"].items()},
              "eval_sequences": sequences or snap.meta["eval"]["sequences"]}
    bench = f"accuracy:{snap.meta['task']['task']}"
    out = []
    for m in measured:
        if m.skipped or m.failed:
            metric, reason = ("skipped", m.skipped) if m.skipped else ("failed", m.failed)
            out.append(run.row(bench, params, m.provider, metric, float("nan"), "", flags=[reason]))
            continue
        out.append(run.row(bench, params, m.provider, "accuracy", m.accuracy, "fraction", samples=m.scored))
        if m.bucket_agreement is not None:
            out.append(run.row(bench, params, m.provider, "bucket_agreement", m.bucket_agreement, "fraction"))
        if m.mismatch:
            out.append(run.row(bench, params, m.provider, "failed", float("nan"), "", flags=[m.mismatch]))
    return out
