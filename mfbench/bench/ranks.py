"""Scale-out on torch.distributed, launched by ``torchrun`` (its rendezvous handles one host or many).

- ``mfbench run --distributed``: every rank measures a disjoint share of the matrix on its own device:
  it starts on a home share of whole providers and then takes what is left of the others' (``claim``;
  ``shard`` is the static, cost-estimated split); rank 0 gathers the rows and writes them as one run (one ``run_id``), each row keeping the
  device fingerprint and the rank of whoever measured it. Per-rank wall time and energy are rows of their
  own; the run's totals (slowest rank's wall time, sum of the ranks' energy) are derived from them and
  flagged ``derived``.
- ``mfbench train --distributed``: DistributedDataParallel over the same global batch as one device.
- the ``sharded`` provider (``mfbench.core.sharded``): a Memory Layer whose chunk tables are split over ranks.

The backend is NCCL on GPUs and gloo on CPU ranks.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import time
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

import mfbench
from mfbench.bench.cases import BENCHMARKS, Item, cost_estimate
from mfbench.bench.measurement import Measurement, to_rows
from mfbench.core import providers
from mfbench.instruments.energy import EnergyMeter
from mfbench.store.results import Run, add_flags

T = TypeVar("T")


class LaunchError(Exception):
    """Asked for a distributed run outside torchrun, or a process group that would not start."""


def launched() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init(device_type: str) -> torch.device:
    """Join torchrun's process group; returns this rank's device (cuda:LOCAL_RANK, or the CPU)."""
    if not launched():
        raise LaunchError("this needs torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and "
                          "MASTER_PORT: start it as torchrun --nproc-per-node N -m ...")
    local = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        if local >= torch.cuda.device_count():
            raise LaunchError(f"local rank {local} has no GPU: this host shows {torch.cuda.device_count()}")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        # CUDA tensors go over NCCL (DDP's gradients, the sharded provider's all-reduce); the pickled
        # rows, run identity and barriers are host memory and go over gloo. With no device_id, NCCL
        # starts at the first CUDA collective, so `mfbench run`, which sends none, never pays for it.
        backend = "cpu:gloo,cuda:nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    share_host_cpus()
    return device


def share_host_cpus() -> int:
    """Give this rank's torch.compile worker pool its share of the host's cores; returns the pool size.

    Ranks on one host share its cores, but each rank's Inductor would size its compile pool to the whole
    host (two ranks on a 32-core host: 64 workers). ``TORCHINDUCTOR_COMPILE_THREADS``, when set, wins.
    torchrun already gives each worker one OpenMP thread unless ``OMP_NUM_THREADS`` is set.
    """
    import torch._inductor.config as inductor

    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        inductor.compile_threads = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return inductor.compile_threads


def shard(items: Sequence[T], cost: Callable[[T], float], world: int) -> list[list[T]]:
    """Split ``items`` into ``world`` disjoint shards of balanced total cost (longest first onto the least
    loaded rank); every rank computes the same split, so no one has to send it. Items keep their order
    inside a shard."""
    loads = [(0.0, r) for r in range(world)]
    owner: dict[int, int] = {}
    for i in sorted(range(len(items)), key=lambda i: (-cost(items[i]), i)):
        load, r = heapq.heappop(loads)
        owner[i] = r
        heapq.heappush(loads, (load + cost(items[i]), r))
    return [[items[i] for i in range(len(items)) if owner[i] == r] for r in range(world)]


def claim(items: Sequence[T], cost: Callable[[T], float], key: str, group: Callable[[T], object] | None = None,
          *, store: dist.Store | None = None, rank: int | None = None, world: int | None = None) -> Iterator[T]:
    """Items for this rank, each one claimed in torchrun's rendezvous store, so it goes to exactly one
    rank (the store's add is atomic: whoever makes an item's key 1 owns it).

    Every rank starts on a home share: whole groups (``group``, e.g. the provider), spread over the ranks by
    estimated cost, so a group's once-per-process start-up is paid by one rank rather than by all of them
    (on an H200 the first torch.compile of a process took 3.4-4.5 s even with warm caches). Groups
    with the costliest items come first in a share and items go costliest first. A rank that finishes
    its share takes the rest from the other shares' tails, the items their owners would have reached
    last, so ranks still end close together whatever the real costs turn out to be. Without ``group``
    every item is a group of its own. ``store``, ``rank`` and ``world`` default to the process group's.
    """
    if rank is None or world is None:
        rank, world = rank_and_world()
    key_of = group or (lambda item: id(item))
    costs = [cost(item) for item in items]
    load = lambda g: sum(costs[i] for i in g)  # noqa: E731
    groups: dict[object, list[int]] = {}
    for i in sorted(range(len(items)), key=lambda i: (-costs[i], i)):
        groups.setdefault(key_of(items[i]), []).append(i)
    members = list(groups.values())  # in order of each group's costliest item
    while len(members) < world and any(len(g) > 1 for g in members):  # more ranks than groups: halve the largest
        big = max((j for j in range(len(members)) if len(members[j]) > 1), key=lambda j: (load(members[j]), -j))
        members[big:big + 1] = [members[big][0::2], members[big][1::2]]
    shares = shard(members, load, world)
    plans = [[i for g in sorted(share, key=lambda g: -load(g) / len(g)) for i in g] for share in shares]
    tails = [plans[(rank + k) % world][::-1] for k in range(1, world)]
    stolen = [t[j] for j in range(max(map(len, tails), default=0)) for t in tails if j < len(t)]
    store = store if store is not None else dist.distributed_c10d._get_default_store()
    for i in plans[rank] + stolen:
        if store.add(f"{key}-{i}", 1) == 1:
            yield items[i]


def broadcast(value: T, src: int = 0) -> T:
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather(value: T) -> list[T] | None:
    """Every rank's ``value`` on rank 0 (None elsewhere)."""
    rank, world = rank_and_world()
    out = [None] * world if rank == 0 else None
    dist.gather_object(value, out, dst=0)
    return out


def rank_run(run, device: torch.device):
    """Rank 0's run identity with this rank's own machine, device and fingerprint."""
    mine = Run.start(str(device))
    rank, world = rank_and_world()
    info = json.loads(mine.fingerprint)
    info.update(rank=rank, world_size=world, backend=str(dist.get_backend()))
    return dataclasses.replace(run, machine=mine.machine, device=mine.device, fingerprint=json.dumps(info, sort_keys=True))


def tag_rank(rows: list[dict]) -> list[dict]:
    rank, world = rank_and_world()
    return add_flags(rows, f"rank={rank}/{world}")


def rank_rows(run, seconds: float, energy, items: int, setup_seconds: float | None = None) -> list[dict]:
    """This rank's own wall time and energy over its whole shard, and the time it took to get there
    (from its first import of mfbench: imports, device and process-group start, fingerprint, ceilings)."""
    rank, world = rank_and_world()
    params = {"rank": rank, "world_size": world, "items": items}
    rows = [run.row("distributed", params, "-", "rank_wall_time", seconds, "s")]
    if setup_seconds is not None:
        rows.append(run.row("distributed", params, "-", "rank_setup_time", setup_seconds, "s",
                            flags=["from-mfbench-import"]))
    if energy is not None and energy.available:
        rows.append(run.row("distributed", params, "-", "rank_energy", energy.joules, "J", flags=[energy.method]))
    return tag_rank(rows)


def derived_rows(run, rows: list[dict]) -> list[dict]:
    """Totals of a distributed run, computed from the per-rank rows only (rank 0)."""
    walls = [r["value"] for r in rows if r["metric"] == "rank_wall_time"]
    joules = [r["value"] for r in rows if r["metric"] == "rank_energy"]
    params = {"world_size": len(walls)}
    out = [run.row("distributed", params, "-", "run_wall_time", max(walls), "s", flags=["derived:max-of-ranks"])]
    if joules and len(joules) == len(walls):
        out.append(run.row("distributed", params, "-", "run_energy", sum(joules), "J", flags=["derived:sum-of-ranks"]))
    return out



@dataclasses.dataclass
class Share:
    """This rank's part of ``mfbench run --distributed``: rank 0's run identity with this rank's machine,
    the items it measures (claimed as it frees up, or a static cost-balanced split), and at the end its
    rows gathered into one run on rank 0. Collective providers need every rank in each call, so a sharded
    matrix skips them, saying so."""

    run: Run
    items: Iterable[Item]
    collective: list[Item]
    rank: int
    world: int
    started: float = 0.0
    meter: EnergyMeter | None = None

    @classmethod
    def start(cls, items: list[Item], device: torch.device, schedule: str) -> "Share":
        rank, world = rank_and_world()
        run = rank_run(broadcast(Run.start(str(device))), device)
        collective = [item for item in items if providers.get(item.provider).collective]
        mine = [item for item in items if item not in collective]
        cost = lambda item: cost_estimate(item, device)  # noqa: E731
        mine = (shard(mine, cost, world)[rank] if schedule == "static"
                else claim(mine, cost, f"mfbench-items-{run.run_id}", group=lambda item: item.provider))
        return cls(run, mine, collective, rank, world)

    @property
    def tag(self) -> str:
        return f"[rank {self.rank}/{self.world}] "

    def begin(self, device: torch.device) -> None:
        """From here on this rank's wall time and energy count (set-up time is what came before)."""
        self.started = time.perf_counter()
        print(f"{self.tag}set up in {self.started - mfbench.IMPORTED:.1f} s", flush=True)
        self.meter = EnergyMeter(device)
        self.meter.begin_window("shard")

    def finish(self, rows: list[dict]) -> list[dict] | None:
        """Every rank's rows, its own time and energy, and the run's derived totals on rank 0; None elsewhere."""
        measured = len({(r["benchmark"], r["params"], r["provider"]) for r in rows if r["benchmark"] in BENCHMARKS})
        energy = self.meter.end_window("shard", max(1, measured))
        rows = tag_rank(rows) + rank_rows(self.run, time.perf_counter() - self.started, energy, measured,
                                          setup_seconds=self.started - mfbench.IMPORTED)
        gathered = gather(rows)
        dist.barrier()
        if self.rank == 0:
            rows = [row for part in gathered for row in part]
            rows += derived_rows(self.run, rows)
            why = ("not in a sharded matrix: it needs every rank in each call (measure it in a run of its own "
                   "under torchrun)")
            rows += [row for item in self.collective for row in to_rows(Measurement(item, skipped=why), self.run)]
        dist.destroy_process_group()
        return rows if self.rank == 0 else None
