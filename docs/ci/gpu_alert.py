"""The kernel alert v2 on a GPU, the way a CI runner meets it: whole alerts (``python -m mfbench.shells.alert``,
timed from process start to exit, accuracy check included) on planted heads, each against its expectation.

    OUT=/tmp/out python docs/ci/gpu_alert.py --runs 1          # about 6 minutes on one H200
    OUT=/tmp/out python docs/ci/gpu_alert.py --runs 3 --heads unchanged,launch   # a subset

It copies the working tree into a scratch git repository of its own (so the checkout's .git, which may
be older or missing, does not matter) with commits on one base (the tree as it is):

- ``unchanged``: a comment added to the kernel file: expect exit 0, every set "same", no count increase;
- ``launch``: one extra tiny kernel launch per call in the Triton forward (tests/plant.py, plant_launch):
  expect exit 1, with "kernels" among the count increases;
- ``slow8``: the gather kernel gathers 5% of its tables twice (plant_slowdown 0.05; x1.087 at 8192 tokens
  on the H200 before; where the decode kernel takes 1 and 8 tokens, those sets are not slowed): expect
  exit 0 with a set "slower, below the threshold" and none regressed;
  ``slow8-fail`` is the same head with ``--fail-on slower``: expect exit 1, verdict "slower".

The alerts measure Triton forward only (MFBENCH_ALERT_*), at the decode sets (1 and 8 tokens per call,
d = h = 2048) and one prefill shape (8192 tokens, tiny preset), at most ``--max-rounds`` rounds. The
Triton caches are warmed first (one short probe per kernel version, not timed as an alert). After EACH
alert $OUT/alert-gpu-summary.json (every alert's report, samples and markdown included), .md (one row an
alert) and alert-gpu.log (the alerts' stderr) are rewritten, so a run cut short keeps what it measured
(three files: the device tool brings back at most eight).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

STARTED = time.monotonic()
HERE = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("OUT", "/tmp/mfbench-gpu-alert"))
SKIP = ("results/html/", "results/asv/", ".whl/", ".git/", ".nox/", ".asv/")
HEADS = ("unchanged", "launch", "slow8", "slow8-fail")


def sh(*cmd: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, check=True, capture_output=True, text=True, **kw)


def tree_files() -> list[str]:
    """The working tree's files: git's list where HERE is a checkout, else every file but caches."""
    try:
        return sh("git", "ls-files", "-co", "--exclude-standard", cwd=HERE).stdout.splitlines()
    except (subprocess.CalledProcessError, OSError):
        return [str(p.relative_to(HERE)) for p in HERE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def scratch_repo(path: Path) -> dict[str, str]:
    """base and the three heads, by name (slow8-fail is slow8's commit)."""
    sys.path.insert(0, str(HERE))
    from tests.plant import plant_launch, plant_slowdown

    if path.exists():
        shutil.rmtree(path)
    for name in tree_files():
        if name.startswith(SKIP) or "__pycache__" in name or not (HERE / name).is_file():
            continue
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(HERE / name, path / name)
    git = ["git", "-c", "user.email=ci@mfbench", "-c", "user.name=ci"]
    sh(*git, "init", "-q", "-b", "main", cwd=path)
    sh(*git, "add", "-A", cwd=path)
    sh(*git, "commit", "-qm", "base", cwd=path)
    kernel = path / "mfbench" / "kernels" / "lookup.py"
    source = kernel.read_text()
    commits = {"base": sh("git", "rev-parse", "HEAD", cwd=path).stdout.strip()}
    for name, text in (("unchanged", source + "# a comment: the kernel file changed, the kernels did not\n"),
                       ("launch", plant_launch(source)), ("slow8", plant_slowdown(source, 0.05))):
        sh(*git, "checkout", "-q", "-B", name, commits["base"], cwd=path)
        kernel.write_text(text)
        sh(*git, "commit", "-qam", name, cwd=path)
        commits[name] = sh("git", "rev-parse", "HEAD", cwd=path).stdout.strip()
    commits["slow8-fail"] = commits["slow8"]
    sh(*git, "checkout", "-q", "main", cwd=path)
    return commits


def expectation(head: str, code: int, report: dict | None) -> tuple[bool, str]:
    """(met, what was expected) for one alert's exit code and report."""
    rows = (report or {}).get("sets", [])
    verdicts = [r["verdict"] for r in rows]
    increased = {n for r in rows for n in r["count_increases"]}
    if head == "unchanged":
        return code == 0 and bool(rows) and set(verdicts) == {"same"} and not increased, \
            'exit 0, every set "same", no count increase'
    if head == "launch":
        return code == 1 and "kernels" in increased, "exit 1 with a kernel-count increase"
    if head == "slow8":
        return code == 0 and "slower" in verdicts and "regressed" not in verdicts, \
            'exit 0, a set "slower, below the threshold", none regressed'
    return code == 1 and (report or {}).get("verdict") == "slower", 'exit 1 (--fail-on slower), verdict "slower"'


def row_text(r: dict) -> str:
    width = f"@{r['width']}" if r["width"] else ""
    ratio = "-" if r["ratio"] is None else f"x{r['ratio']:.3f} [{r['ratio_low']:.3f}-{r['ratio_high']:.3f}]"
    eager = r["eager"] and f", eager x{r['eager']['ratio']:.3f} {r['eager']['verdict']}"
    counts = "".join(f", {n} {b:g}->{h:g}" for n, (b, h) in r["count_increases"].items())
    return f"fwd {r['seq']}{width} {r['verdict']} {ratio}{eager or ''}{counts}"


def save(result: dict) -> None:
    (OUT / "alert-gpu-summary.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Kernel alert v2 on {result['device']}", "", f"source: {result['source_commit'] or '-'}; sets: "
             f"{result['env']['MFBENCH_ALERT_SEQS']}; max rounds {result['max_rounds']}; {result['elapsed_s']:.0f} s "
             "so far", "", "| head | run | exit | expected | met | wall s | rounds | sets |", "|---|---|---|---|---|---|---|---|"]
    for a in result["alerts"]:
        sets = "; ".join(row_text(r) for r in (a["report"] or {}).get("sets", [])) or a["stderr_tail"][-200:]
        lines.append(f"| {a['head']} | {a['run']} | {a['exit_code']} | {a['expected']} | {'yes' if a['met'] else '**NO**'} "
                     f"| {a['wall_s']:.1f} | {(a['report'] or {}).get('rounds', '-')} | {sets.replace('|', '/')} |")
    (OUT / "alert-gpu-summary.md").write_text("\n".join(lines) + "\n")


def warm(repo: Path, commits: dict[str, str], env: dict, seqs: str) -> float:
    """One short probe per kernel version, so every alert meets warm Triton caches; its seconds."""
    t0 = time.monotonic()
    for name in ("base", "launch", "slow8"):
        tree = repo.parent / f"warm-{name}"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), commits[name]], cwd=repo,
                       capture_output=True)
        probe = subprocess.run([sys.executable, "-m", "mfbench.shells.kernelprobe", "--providers", "triton",
                                "--directions", "forward", "--seqs", seqs, "--replays", "5", "--out",
                                str(repo.parent / f"warm-{name}.json")], cwd=tree, env={**env, "PYTHONPATH": str(tree)},
                               capture_output=True, text=True)
        print(f"warm {name}: exit {probe.returncode}", flush=True)
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=repo, capture_output=True)
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1, help="whole alerts per head")
    parser.add_argument("--heads", default=",".join(HEADS), help=f"comma-separated, of {', '.join(HEADS)}")
    parser.add_argument("--seqs", default="1@2048,8@2048,8192", help="the alert's sets (Triton forward)")
    parser.add_argument("--max-rounds", type=int, default=3)
    parser.add_argument("--accuracy-sequences", type=int, default=16)
    parser.add_argument("--budget-s", type=float, default=560, help="start no alert that could end past this")
    parser.add_argument("--repo", type=Path, default=Path("/tmp/mfbench-alert-repo"))
    args = parser.parse_args()
    heads = [h for h in args.heads.split(",") if h]
    if not heads or set(heads) - set(HEADS):
        parser.error(f"--heads takes {', '.join(HEADS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    commits = scratch_repo(args.repo)
    tmp, reports = args.repo.parent / "alert-tmp", args.repo.parent / "alert-reports"
    tmp.mkdir(exist_ok=True)
    reports.mkdir(exist_ok=True)
    alert_env = {"MFBENCH_ALERT_PROVIDERS": "triton", "MFBENCH_ALERT_DIRECTIONS": "forward",
                 "MFBENCH_ALERT_SEQS": args.seqs, "MFBENCH_ALERT_MAX_ROUNDS": str(args.max_rounds),
                 "MFBENCH_ALERT_ROUNDS": str(min(2, args.max_rounds)),
                 "MFBENCH_ALERT_ACCURACY_SEQUENCES": str(args.accuracy_sequences)}
    env = {**os.environ, **alert_env, "PYTHONPATH": str(args.repo), "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)}
    import torch

    result = {"source_commit": os.environ.get("MFBENCH_SOURCE_COMMIT", ""), "commits": commits, "env": alert_env,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
              "max_rounds": args.max_rounds, "warm_s": 0.0, "elapsed_s": 0.0, "alerts": []}
    result["warm_s"] = warm(args.repo, commits, env, args.seqs)
    longest = 90.0
    for run in range(args.runs):
        for head in heads:
            if time.monotonic() - STARTED + longest * 1.2 > args.budget_s:
                print(f"stopping: the next alert could end past --budget-s {args.budget_s:g}", flush=True)
                result["stopped"] = f"budget: {len(result['alerts'])} alerts done"
                save(result)
                return 0
            name = f"alert-{head}-{run}"
            extra = ["--fail-on", "slower"] if head == "slow8-fail" else []
            t0 = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "mfbench.shells.alert", "--base", commits["base"], "--head",
                                   commits[head], "--report", str(reports / f"{name}.md"), *extra],
                                  cwd=args.repo, env=env, capture_output=True, text=True)
            wall = time.monotonic() - t0
            longest = max(longest, wall)
            path = reports / f"{name}.json"
            report = json.loads(path.read_text()) if path.exists() else None
            met, expected = expectation(head, done.returncode, report)
            left = [p.name for p in tmp.iterdir() if p.name.startswith("mfbench-alert")]
            result["alerts"].append({"head": head, "run": run, "exit_code": done.returncode, "wall_s": wall,
                                     "expected": expected, "met": met, "left_behind": left,
                                     "stderr_tail": "\n".join(l for l in done.stderr.splitlines()
                                                              if not l.startswith("USDT"))[-3000:],
                                     "report": report, "markdown": (reports / f"{name}.md").read_text()
                                     if report else ""})
            with (OUT / "alert-gpu.log").open("a") as log:
                log.write(f"=== {name}: exit {done.returncode} in {wall:.1f} s\n{done.stderr[-8000:]}\n")
            result["elapsed_s"] = time.monotonic() - STARTED
            save(result)
            print(f"{name}: exit {done.returncode} in {wall:.1f} s, expected {expected}: {'met' if met else 'NOT MET'}",
                  flush=True)
    print(f"done in {time.monotonic() - STARTED:.0f} s", flush=True)
    return 0 if all(a["met"] for a in result["alerts"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
