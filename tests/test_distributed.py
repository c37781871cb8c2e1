"""torch.distributed on CPU ranks (gloo), launched by torchrun as a user would: the sharded matrix, DDP
training and the sharded provider."""

import json
import os
import socket
import subprocess
import sys


from mfbench.bench import ranks as distributed
from mfbench.shells.cli import main as cli
from mfbench.store import results, snapshots
from mfbench.bench import cases


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def torchrun(*args: str, ranks: int = 2, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port",
               _port(), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ})


# Under torchrun the smoke matrix is measured without the Triton provider: its interpreted items are three
# quarters of a smoke run on the CPU (about 30 s of 40) and say nothing about ranks; the single-process smoke
# run the rows are compared with (and test_runner reads) measures them.
LAUNCHED = "reference,embedding_bag,compiled,sharded,dense"


def _keys(frame, providers: str | None = None):
    measured = frame[frame["benchmark"].isin(cases.BENCHMARKS)]
    if providers:
        measured = measured[measured["provider"].isin(providers.split(","))]
    return set(zip(measured["benchmark"], measured["params"], measured["provider"], measured["metric"]))


def test_smoke_matrix_on_two_gloo_ranks_is_one_run_with_the_single_rank_rows(smoke_run, tmp_path):
    out = torchrun("-m", "mfbench", "run", "--distributed", "--preset", "smoke", "--device", "cpu",
                   "--providers", LAUNCHED, "--results-dir", str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    frame, single = results.load(tmp_path), results.load(smoke_run)
    assert frame["run_id"].nunique() == 1
    assert _keys(frame) and _keys(frame) == _keys(single, LAUNCHED)
    measured = frame[frame["benchmark"].isin(cases.BENCHMARKS) & (frame["metric"] != "skipped")]
    ranks = measured["flags"].str.extract(r"rank=(\d)/2")[0]
    assert ranks.notna().all() and set(ranks) == {"0", "1"}  # both ranks measured, each row says which
    prints = [json.loads(f) for f in frame["fingerprint"]]
    assert {p["rank"] for p in prints} == {0, 1}
    # the two ranks share this host's cores: each one's torch.compile pool gets half of them
    cores = len(os.sched_getaffinity(0))
    assert {p["compile_threads"] for p in prints} == {max(1, cores // 2)}, prints[0]
    walls = frame[frame["metric"] == "rank_wall_time"]["value"]
    total = frame[frame["metric"] == "run_wall_time"]
    assert len(walls) == 2 and float(total["value"].iloc[0]) == walls.max() and "derived" in total["flags"].iloc[0]
    sharded = frame[frame["provider"] == "sharded"]
    assert (sharded["metric"] == "skipped").all() and sharded["flags"].str.contains("every rank").all()
    assert {p["backend"] for p in prints} == {"gloo"}
    setup = frame[frame["metric"] == "rank_setup_time"]
    assert len(setup) == 2 and (setup["value"] > 0).all()  # imports to first item, per rank
    assert "[rank 1/2] set up in" in out.stdout


def test_two_nodes_meet_in_torchruns_c10d_rendezvous_and_write_one_run(smoke_run, tmp_path):
    """The several-hosts command of docs/scaleout.md, as two one-rank "nodes" on this host: each agent is started
    alone, they meet in the c10d rendezvous, and rank 0 writes one run with the single-process rows."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_port()}", "--rdzv-id", "mfbench-test",
               "-m", "mfbench", "run", "--distributed", "--preset", "smoke", "--device", "cpu", "--providers", LAUNCHED,
               "--results-dir", str(tmp_path)]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [node.communicate(timeout=900)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(out[-3000:] for out in outs)
    frame = results.load(tmp_path)
    assert frame["run_id"].nunique() == 1 and _keys(frame) and _keys(frame) == _keys(results.load(smoke_run), LAUNCHED)
    prints = [json.loads(f) for f in frame["fingerprint"]]
    assert {(p["rank"], p["world_size"]) for p in prints} == {(0, 2), (1, 2)}
    # each node is a host of its own to torchrun: one local rank, so its compile pool keeps every core
    assert {p["compile_threads"] for p in prints} == {len(os.sched_getaffinity(0))}
    assert len(frame[frame["metric"] == "rank_wall_time"]) == 2
    assert sum("wrote" in out for out in outs) == 1  # rank 0's node alone writes


def test_sharded_provider_matches_reference_on_two_ranks():
    out = torchrun("-m", "mfbench.shells.sharded_check")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    checks = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {c["rank"] for c in checks} == {0, 1} and len(checks) == 4
    for c in checks:
        assert c["table_bytes_per_rank"] * 2 == c["table_bytes_whole"]  # each rank holds half the tables
        assert max(c["rel_err_y"], c["rel_err_grad_x"], c["rel_err_grad_tables"]) < 1e-5, c
    print("\n" + out.stdout.splitlines()[-1])


def test_ddp_training_gives_the_single_process_accuracy(tmp_path):
    args = ["train", "--arch", "memoryformer", "--device", "cpu", "--steps", "200"]
    out = torchrun("-m", "mfbench", *args, "--distributed", "--results-dir", str(tmp_path / "ddp"),
                   "--snapshots-dir", str(tmp_path / "ddp" / "snaps"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert cli.main([*args, "--results-dir", str(tmp_path / "one"), "--snapshots-dir", str(tmp_path / "one" / "snaps")]) == 0
    acc = {}
    for name in ("ddp", "one"):
        frame = results.load(tmp_path / name)
        acc[name] = float(frame[frame["metric"] == "accuracy"]["value"].iloc[0])
    print(f"\nmicro mqar, 200 steps: DDP over 2 gloo ranks {acc['ddp']:.4f}, one process {acc['one']:.4f}")
    assert abs(acc["ddp"] - acc["one"]) <= snapshots.ACCURACY_TOLERANCE
    ddp = results.load(tmp_path / "ddp")
    per_rank = ddp[ddp["metric"] == "rank_time_per_step"]
    assert len(per_rank) == 2 and set(per_rank["flags"]) == {"rank=0/2", "rank=1/2"}


def test_shards_are_disjoint_complete_and_balanced():
    import torch

    items = cases.plan(cases.PRESETS["default"], torch.device("cuda"), ["reference", "embedding_bag", "compiled",
                                                                         "triton", "dense"], None, torch.float16)
    cost = lambda item: cases.cost_estimate(item, torch.device("cuda"))  # noqa: E731
    for world in (1, 2, 3, 8):
        shards = distributed.shard(items, cost, world)
        flat = [i for s in shards for i in s]
        assert sorted(map(repr, flat)) == sorted(map(repr, items)) and len(flat) == len(items)
        loads = [sum(map(cost, s)) for s in shards]
        assert max(loads) - min(loads) <= max(map(cost, items))  # greedy: within one item of each other


def _simulate_claims(items, cost, world, seconds, startup, group):
    """Ranks claiming from one store, run on a simulated clock: an item takes ``seconds(item)``, plus
    ``startup(provider)`` the first time a rank meets that provider. Returns (items per rank, clocks)."""
    import torch.distributed as dist

    store = dist.HashStore()
    claims = [distributed.claim(items, cost, "run", group, store=store, rank=r, world=world) for r in range(world)]
    clock, got, seen, active = [0.0] * world, [[] for _ in range(world)], [set() for _ in range(world)], set(range(world))
    while active:
        r = min(active, key=lambda r: (clock[r], r))  # the rank that is free first claims next
        item = next(claims[r], None)
        if item is None:
            active.discard(r)
            continue
        clock[r] += seconds(item) + (0.0 if item.provider in seen[r] else startup(item.provider))
        seen[r].add(item.provider)
        got[r].append(item)
    return got, clock


def test_claimed_items_go_once_each_and_a_providers_start_up_is_paid_once():
    import torch

    device = torch.device("cuda")
    names = ["reference", "embedding_bag", "compiled", "triton", "dense"]
    items = cases.plan(cases.PRESETS["default"], device, names, None, torch.float16)
    cost = lambda item: cases.cost_estimate(item, device)  # noqa: E731
    # per-item times and first-use start-up as measured on an H200 with warm caches (items 1.2-2.5 s,
    # the first torch.compile of a process 3.4 s, the first Triton launch 0.13 s); the estimates differ
    seconds = lambda item: 1.2 + 0.1 * item.seq / 2048 * cases.BENCHMARK_COST[item.benchmark] / 4  # noqa: E731
    startup = lambda provider: {"compiled": 3.4, "triton": 0.13}.get(provider, 0.0)  # noqa: E731
    for world in (1, 2, 3, 5, 8, 64):
        got, clock = _simulate_claims(items, cost, world, seconds, startup, group=lambda item: item.provider)
        flat = [i for share in got for i in share]
        assert sorted(map(repr, flat)) == sorted(map(repr, items))  # every item, each exactly once
        # the ranks finish together: within one item (and one start-up) of each other
        assert max(clock) - min(clock) <= max(map(seconds, items)) + 3.4, (world, clock)
        if world in (2, 3):  # fewer ranks than providers: each provider starts on one rank ...
            assert sum(any(i.provider == "compiled" for i in share) for share in got) == 1
            # ... and the run ends sooner than when every rank takes the next costliest item
            _, ungrouped = _simulate_claims(items, cost, world, seconds, startup, group=None)
            assert max(clock) < max(ungrouped), (world, clock, ungrouped)


def test_distributed_outside_torchrun_is_a_one_line_error(capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["run", "--distributed", "--device", "cpu"]) == 2
    assert "needs torchrun" in capsys.readouterr().err
    assert cli.main(["train", "--distributed", "--device", "cpu"]) == 2
    assert "needs torchrun" in capsys.readouterr().err


COMPARE = os.path.join(os.path.dirname(__file__), "..", "docs", "scaleout", "compare.py")


def test_one_rank_under_torchrun_measures_the_same_matrix_and_compare_times_the_command(smoke_run, tmp_path):
    out = subprocess.run([sys.executable, COMPARE, "--configs", "torchrun:1", "--repeats", "1", "--preset", "smoke",
                          "--results-dir", str(tmp_path), "--", "--device", "cpu", "--providers", LAUNCHED],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    frame = results.load(tmp_path)
    assert _keys(frame) and _keys(frame) == _keys(results.load(smoke_run), LAUNCHED)
    # the same matrix as on two ranks: 'sharded' is not measured over a world of one either
    sharded = frame[frame["provider"] == "sharded"]
    assert (sharded["metric"] == "skipped").all() and sharded["flags"].str.contains("every rank").all()
    assert set(frame.loc[frame["metric"] == "rank_wall_time", "flags"]) == {"rank=0/1"}
    command = frame[frame["metric"] == "command_wall_time"]
    assert len(command) == 1 and frame["run_id"].nunique() == 1  # the row joins the run the command wrote
    assert json.loads(command["params"].iloc[0]) == {"launcher": "torchrun", "ranks": 1, "preset": "smoke"}
    inside = frame[frame["metric"].isin(["rank_wall_time", "rank_setup_time"])]["value"].sum()
    assert command["value"].iloc[0] > inside  # launch to exit holds the rank's set-up and its shard
    assert "torchrun:1" in out.stdout.splitlines()[-1]
    # the command's time taken apart from the rank's own rows
    assert "set-up" in out.stdout and "outside the ranks" in out.stdout, out.stdout[-2000:]


def test_scaleout_compare_refuses_an_unknown_configuration():
    out = subprocess.run([sys.executable, COMPARE, "--configs", "mpirun:2"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "configs are" in out.stderr


def test_scaleout_agreement_sets_many_rank_rows_against_the_one_device_runs(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare", COMPARE)
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    rows, ids = [], {"process": [], "torchrun:N": []}
    values = {"process": [[1.0, 2.0, 3.0], [1.2, 2.2, 2.8], [0.9, 1.8, 3.3]], "torchrun:N": [[1.1, 2.5, 3.0]]}
    for config, runs in values.items():
        for n, times in enumerate(runs):
            run = results.Run(f"{config}-{n}", "t", "c", False, "m", "d", "{}")
            ids[config].append(run.run_id)
            rows += [run.row("layer", {"seq": s}, "triton", "time", v, "s") for s, v in zip((1, 2, 3), times)]
    results.append(rows, tmp_path)
    yardstick, line = compare.agreement(results.load(tmp_path), ids)
    # each one-device run against the other two: run 0 is inside on all three, run 1 on none, run 2 on none
    assert yardstick.endswith("3, 0, 0 of 3 inside their range"), yardstick
    # 1.1/1.0, 2.5/2.0, 3.0/3.0 against the medians; 2.5 is above the one-device runs' 1.8-2.2
    assert "median 1.100" in line and "2 of 3 inside the range of the 3 one-device run(s)" in line, line
    assert yardstick.startswith("time: ") and "time rows / one-device median" in line
    assert compare.agreement(results.load(tmp_path), ids, "kernel_time") == []  # no such rows (a CPU run): no verdict
