"""The kernel alert on a GPU, the way a CI runner meets it: whole alerts on a planted 20% slowdown and on a
comment-only kernel change (and on a planted 5% slowdown), and a trace of the probe processes behind them for ``alert_replay.py``.

    OUT=/tmp/out python docs/ci/gpu_alert.py --alerts 3 --budget-s 540

It copies the working tree into a scratch git repository with four commits: ``base`` (the tree as it is),
``planted`` (tests/plant.py, share 0.2), ``planted5`` (share 0.05) and ``unchanged`` (a comment added to
the kernel file). Then it alternates whole alerts (``python -m mfbench.shells.alert``, timed from process start
to exit, accuracy check included) on ``planted`` and ``unchanged``, keeping every probe process's samples,
and spends what is left of the budget on extra probe processes of base, planted and planted5. Everything
goes to $OUT/alert-validation.json, rewritten after each step, so a run cut short keeps what it measured.
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

HERE = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("OUT", "/tmp/mfbench-gpu-alert"))


def sh(*cmd: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, check=True, capture_output=True, text=True, **kw)


def scratch_repo(path: Path) -> dict[str, str]:
    """The four commits, by name."""
    sys.path.insert(0, str(HERE))
    from tests.plant import plant_slowdown

    if path.exists():
        shutil.rmtree(path)
    files = sh("git", "ls-files", "-co", "--exclude-standard", cwd=HERE).stdout.splitlines()
    for name in files:
        if name.startswith(("results/html/", "results/asv/", ".whl/")) or not (HERE / name).is_file():
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
    for name, text in (("planted", plant_slowdown(source, 0.2)), ("planted5", plant_slowdown(source, 0.05)),
                       ("unchanged", source + "# a comment: the kernel file changed, the kernels did not\n")):
        sh(*git, "checkout", "-q", "-B", name, commits["base"], cwd=path)
        kernel.write_text(text)
        sh(*git, "commit", "-qam", name, cwd=path)
        commits[name] = sh("git", "rev-parse", "HEAD", cwd=path).stdout.strip()
    sh(*git, "checkout", "-q", "main", cwd=path)
    return commits


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=3, help="whole alerts of each kind")
    parser.add_argument("--alerts5", type=int, default=1, help="whole alerts on the planted 5%% slowdown, last")
    parser.add_argument("--budget-s", type=float, default=540)
    parser.add_argument("--repo", type=Path, default=Path("/tmp/mfbench-alert-repo"))
    args = parser.parse_args()
    start = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    commits = scratch_repo(args.repo)
    env = {**os.environ, "PYTHONPATH": str(args.repo), "PYTHONUNBUFFERED": "1"}
    result = {"source_commit": os.environ.get("MFBENCH_SOURCE_COMMIT", ""), "commits": commits, "alerts": [],
              "probes": []}

    def save() -> None:
        tmp = OUT / "alert-validation.json.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(OUT / "alert-validation.json")

    def keep_probes(folder: Path, alert_index: int, head: str) -> None:
        for path in sorted(folder.glob("probe-*.json")):
            build = "base" if path.name.startswith("probe-base-") else head
            result["probes"].append({"alert": alert_index, "file": path.name, "build": build,
                                     **json.loads(path.read_text())})

    heads = ["planted", "unchanged"] * args.alerts + ["planted5"] * args.alerts5
    for i, head in enumerate(heads):
        if time.monotonic() - start > args.budget_s - 100:  # an alert took about a minute on an H200
            print(f"stopping after {i} alerts: the budget is nearly spent", flush=True)
            break
        folder = args.repo.parent / f"probes-{i}"
        shutil.rmtree(folder, ignore_errors=True)
        report = (OUT if i < 2 else args.repo.parent) / f"alert-{head}-{i}.md"  # $OUT takes 8 files
        t0 = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "mfbench.shells.alert", "--base", commits["base"], "--head", commits[head],
                              "--report", str(report), "--json", str(args.repo.parent / f"alert-{i}.json"),
                              "--probes-dir", str(folder)],
                             cwd=args.repo, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - t0
        (OUT / "alerts.log").open("a").write(f"=== alert {i} {head}: exit {run.returncode} in {seconds:.1f} s\n"
                                             f"{run.stderr[-6000:]}\n")
        report_json = args.repo.parent / f"alert-{i}.json"
        result["alerts"].append({"head": head, "exit_code": run.returncode, "wall_s": seconds,
                                 "report": json.loads(report_json.read_text()) if report_json.exists() else None})
        keep_probes(folder, i, head)
        save()
        print(f"alert {i}: {head} exit {run.returncode} in {seconds:.1f} s", flush=True)
    builds = ["base", "planted", "planted5"]
    extra = 0
    while time.monotonic() - start < args.budget_s - 25:
        build = builds[extra % len(builds)]
        tree = args.repo.parent / "tree-extra"
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=args.repo, capture_output=True)
        sh("git", "worktree", "add", "-q", "--detach", str(tree), commits[build], cwd=args.repo)
        out = args.repo.parent / f"extra-{extra}.json"
        probe = subprocess.run([sys.executable, "-m", "mfbench.shells.kernelprobe", "--providers", "triton", "--out", str(out)],
                               cwd=tree, env={**env, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
        if probe.returncode == 0:
            result["probes"].append({"alert": None, "file": f"extra-{build}", "build": build,
                                     **json.loads(out.read_text())})
        save()
        print(f"extra probe {extra}: {build} exit {probe.returncode}", flush=True)
        extra += 1
    save()
    print(f"done in {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
