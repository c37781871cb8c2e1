"""torch.distributed on CPU ranks (gloo), launched by torchrun as a user would: the sharded matrix, DDP
training and the sharded provider."""

import json
import os
import socket
import subprocess
import sys


from mfbench import cli, distributed, results, runner, snapshots
from mfbench.model import ModelConfig


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def torchrun(*args: str, ranks: int = 2, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port",
               _port(), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ})


def _keys(frame):
    measured = frame[frame["benchmark"].isin(runner.BENCHMARKS)]
    return set(zip(measured["benchmark"], measured["params"], measured["provider"], measured["metric"]))


def test_smoke_matrix_on_two_gloo_ranks_is_one_run_with_the_single_rank_rows(smoke_run, tmp_path):
    out = torchrun("-m", "mfbench", "run", "--distributed", "--preset", "smoke", "--device", "cpu",
                   "--results-dir", str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    frame, single = results.load(tmp_path), results.load(smoke_run)
    assert frame["run_id"].nunique() == 1
    assert _keys(frame) == _keys(single)
    measured = frame[frame["benchmark"].isin(runner.BENCHMARKS) & (frame["metric"] != "skipped")]
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


def test_sharded_provider_matches_reference_on_two_ranks():
    out = torchrun("-m", "mfbench.sharded")
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
    cfg = ModelConfig.preset("tiny")
    import torch

    items = runner.plan(runner.PRESETS["default"], torch.device("cuda"), ["reference", "embedding_bag", "compiled",
                                                                         "triton", "dense"], None, torch.float16)
    cost = lambda item: runner.cost_estimate(item, cfg, torch.device("cuda"))  # noqa: E731
    for world in (1, 2, 3, 8):
        shards = distributed.shard(items, cost, world)
        flat = [i for s in shards for i in s]
        assert sorted(map(repr, flat)) == sorted(map(repr, items)) and len(flat) == len(items)
        loads = [sum(map(cost, s)) for s in shards]
        assert max(loads) - min(loads) <= max(map(cost, items))  # greedy: within one item of each other


def test_distributed_outside_torchrun_is_a_one_line_error(capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["run", "--distributed", "--device", "cpu"]) == 2
    assert "needs torchrun" in capsys.readouterr().err
    assert cli.main(["train", "--distributed", "--device", "cpu"]) == 2
    assert "needs torchrun" in capsys.readouterr().err
