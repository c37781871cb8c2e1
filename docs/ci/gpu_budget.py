"""Accuracy at equal time and equal energy on one GPU (issue 31): the tiny preset on mqar and induction,
seeds 0, 1 and 2, MemoryFormer through the Triton kernels against dense.

    OUT=/tmp/out MFBENCH_COMMIT=$(git rev-parse HEAD) python docs/ci/gpu_budget.py --seconds 6

First ``mfbench train --budget-seconds S`` on each task; those rows also hold the joules each training spent
net of idle, so the joules budget is then S times the median net power they show (rounded), and
``mfbench train --budget-joules J`` runs on each task. 24 trainings of about S seconds each, plus start-up,
warm-up and evaluation outside the budgets: at S = 6, 268 s on one H200 (703248d, 2026-12-03;
$OUT/budget.json times each command). Rows go to $OUT/results
(results.parquet + results.csv), the rendered verdict to $OUT/findings.md, the plots to $OUT/plots, each
command's output to $OUT/budget.log and the timings to $OUT/budget.json, each written as soon as it exists.

    OUT=/tmp/out MFBENCH_COMMIT=$(git rev-parse HEAD) python docs/ci/gpu_budget.py --seed-runs mqar,induction

instead trains the fixed-step recipe (``mfbench train --preset tiny --seed N``, 1000 steps) for each seed
and task, so the snapshot accuracies the docs quote get their seed spread ($OUT/seeds.md): an estimated
1.5-2 minutes per seed and task on one H200 (the H100 took 134 s for both models on mqar, 104 s on induction). The 1.6 GB snapshots go to a scratch folder, not to $OUT.
With ``--together`` all the trainings start at once (as a shell loop ran the six on one H200 in 260 s,
2026-12-03): they share the GPU, so only their accuracy and final-loss rows are kept, not their time and
energy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("OUT", "/tmp/mfbench-gpu-budget"))
TASKS = ("mqar", "induction")


ENV = {**os.environ, "PYTHONPATH": str(HERE)}  # every mfbench this script starts imports this tree's
SNAPSHOTS = Path(os.environ.get("TMPDIR", "/tmp")) / "mfbench-seed-snapshots"  # 1.6 GB each: scratch, not $OUT


def mfbench(*args: str, log) -> float:
    """Run ``python -m mfbench ARGS`` from the tree, its output appended to the log; its wall time."""
    log.write(f"$ mfbench {' '.join(args)}\n")
    log.flush()
    start = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "mfbench", *args], cwd=HERE, env=ENV, stdout=log,
                          stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    log.write(f"(exit {code}, {seconds:.1f} s)\n\n")
    log.flush()
    if code:
        raise SystemExit(f"mfbench {' '.join(args)} exited {code}; see {OUT / 'budget.log'}")
    return seconds


def net_watts(results_dir: Path) -> float | None:
    """The median net power of the seconds-budget trainings at their end, from their rows."""
    sys.path.insert(0, str(HERE))
    from mfbench.report.budget import points
    from mfbench.store import results

    pts = points(results.load(results_dir))
    pts = pts[(pts["kind"] == "seconds") & (pts["fraction"] == 1.0)].dropna(subset=["joules_spent"])
    return None if pts.empty else float((pts["joules_spent"] / pts["seconds_spent"]).median())


def findings(name: str, rows: Path) -> str:
    found = subprocess.run([sys.executable, "-m", "mfbench.report.findings", name, "--results-dir", str(rows)],
                           cwd=HERE, env=ENV, capture_output=True, text=True)
    return found.stdout + found.stderr


def seed_cases(args) -> list[tuple[str, str]]:
    """(task, seed) of each fixed-step training the seed runs make."""
    return [(task, seed) for task in args.seed_runs.split(",") for seed in args.seeds.split(",")]


def train_args(args, task: str, seed: str, rows: Path, snapshots: Path) -> list[str]:
    return ["train", "--preset", args.preset, "--task", task, "--seed", seed, "--device", args.device,
            "--results-dir", str(rows), "--snapshots-dir", str(snapshots), *(["--steps", args.steps] if args.steps else [])]


def write_seeds(report: dict, rows: Path) -> None:
    (OUT / "seeds.json").write_text(json.dumps(report, indent=1))
    (OUT / "seeds.md").write_text(findings("seeds", rows))


KEPT_TOGETHER = ("accuracy", "final_loss")  # what a training sharing the device with others still measures


def seed_runs_together(args) -> dict:
    """Every seed and task's training at once, each into rows of its own; then their accuracy and final-loss
    rows only, into $OUT/results."""
    sys.path.insert(0, str(HERE))
    from mfbench.store import results

    start, procs = time.perf_counter(), {}
    for task, seed in seed_cases(args):
        own = SNAPSHOTS / f"{task}-{seed}"
        train = train_args(args, task, seed, own / "rows", own / "snapshots")
        with open(OUT / f"seed-{task}-{seed}.log", "w") as log:
            procs[own] = subprocess.Popen([sys.executable, "-m", "mfbench", *train], cwd=HERE, env=ENV, stdout=log,
                                          stderr=subprocess.STDOUT)
    print(f"{len(procs)} trainings started together; their logs: {OUT}/seed-*.log", flush=True)
    failed = [own for own, proc in procs.items() if proc.wait() != 0]
    seconds = round(time.perf_counter() - start, 1)
    for own in procs:
        if own not in failed:
            rows = results.load(own / "rows")
            results.append(rows[rows["metric"].isin(KEPT_TOGETHER)], OUT / "results")
    return {"seeds": args.seeds, "together": True, "total_wall_s": seconds,
            "failed": [own.name for own in failed]}


def seed_runs(args) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = OUT / "results"
    if args.together:
        report = seed_runs_together(args)
        write_seeds(report, rows)
    else:
        report, start = {"seeds": args.seeds, "wall_s": {}}, time.perf_counter()
        with open(OUT / "budget.log", "a") as log:
            for task, seed in seed_cases(args):
                report["wall_s"][f"{task} seed {seed}"] = round(mfbench(*train_args(args, task, seed, rows, SNAPSHOTS),
                                                                        log=log), 1)
                report["total_wall_s"] = round(time.perf_counter() - start, 1)
                write_seeds(report, rows)
    print((OUT / "seeds.md").read_text())
    print(json.dumps(report, indent=1))
    return 1 if report.get("failed") else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="the seconds budget of each training")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="tiny", help="tiny (the GPU's); micro to try the script on a CPU")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed-runs", metavar="TASKS", help="the fixed-step trainings of these tasks per seed instead")
    parser.add_argument("--steps", help="seed runs: override the preset's steps (to try the script on a CPU)")
    parser.add_argument("--together", action="store_true",
                        help="seed runs: start every training at once, keeping only their accuracy and final-loss rows")
    args = parser.parse_args()
    if args.seed_runs:
        return seed_runs(args)
    OUT.mkdir(parents=True, exist_ok=True)
    rows, report = OUT / "results", {"seconds_budget": args.seconds, "seeds": args.seeds, "wall_s": {}}
    common = ["--preset", args.preset, "--device", args.device, "--seeds", args.seeds, "--results-dir", str(rows)]
    start = time.perf_counter()
    with open(OUT / "budget.log", "a") as log:
        def save() -> None:
            report["total_wall_s"] = round(time.perf_counter() - start, 1)
            (OUT / "budget.json").write_text(json.dumps(report, indent=1))

        for task in TASKS:
            report["wall_s"][f"{task} seconds"] = round(mfbench("train", "--task", task, "--budget-seconds",
                                                                f"{args.seconds:g}", *common, log=log), 1)
            save()
        watts = net_watts(rows)
        report["net_watts_median"] = watts
        if watts is None or watts <= 0:
            report["joules"] = "skipped: the seconds runs measured no net energy (NVML unavailable?)"
            save()
        else:
            joules = float(f"{args.seconds * watts:.2g}")
            report["joules_budget"] = joules
            for task in TASKS:
                report["wall_s"][f"{task} joules"] = round(mfbench("train", "--task", task, "--budget-joules",
                                                                   f"{joules:g}", *common, log=log), 1)
                save()
        (OUT / "findings.md").write_text(findings("budget", rows))
        subprocess.run([sys.executable, "-m", "mfbench.report.plots", "--results-dir", str(rows), "--out",
                        str(OUT / "plots")], cwd=HERE, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        save()
    print((OUT / "findings.md").read_text())
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
