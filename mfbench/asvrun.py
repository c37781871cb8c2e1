"""Driving asv for mfbench: run the suites for a commit in the host environment, bring asv's values into
the result tables, and decide whether a kernel change regressed.

asv's ``existing`` environment benchmarks whatever Python runs it and ``asv continuous`` refuses such
environments, so each commit is checked out in a temporary git worktree and run there with
``asv run --set-commit-hash``; the comparison is asv's own (``asv.commands.compare``).

    python -m mfbench.asvrun bench  [--bench REGEX] [--quick]
    python -m mfbench.asvrun alert  --base REF [--head REF] [--factor 1.1] [--report FILE]

An alert also re-evaluates HEAD's newest MemoryFormer snapshot through every provider (``mfbench snapshot
eval``): a kernel that answers differently from ``reference`` fails the alert like a slowdown does.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "asv.conf.json"
KERNEL_GLOBS = ("mfbench/kernels/*", "mfbench/lookup.py", "mfbench/providers.py")
KERNEL_SUITES = r"^layer\.Layer(Forward|Backward)\.time_call"


class AlertError(Exception):
    """A problem with what was asked (bad ref, no git); reported in one line."""


def _git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(["git", *args], cwd=cwd or ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise AlertError(f"git {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def machine_name() -> str:
    """Names the accelerator, so H100, H200 and CPU results never share an asv machine."""
    import torch

    from mfbench.measure.fingerprint import _cpu_model, device_name

    if torch.cuda.is_available():
        return device_name("cuda")
    cpu = "".join(c if c.isalnum() else "-" for c in _cpu_model()).strip("-")[:40]
    return f"{device_name('cpu')}-{cpu}"


def _machine_known(name: str) -> bool:
    """Whether asv's machine file already describes ``name`` (so `asv machine` need not run again)."""
    from asv.machine import MachineCollection
    from asv.util import UserError

    try:
        MachineCollection.load(name)
    except (UserError, OSError, ValueError):
        return False
    return True


def _conf_for(tree: Path, results_dir: Path, html_dir: Path) -> Path:
    """A copy of asv.conf.json that benchmarks ``tree`` and writes under ``results_dir``/``html_dir``."""
    text = "\n".join(line for line in CONF.read_text().splitlines() if not line.strip().startswith("//"))
    conf = json.loads(text)
    conf.update(repo=str(tree), benchmark_dir=str(tree / "suites"), results_dir=str(results_dir),
                html_dir=str(html_dir))
    path = Path(tempfile.mkdtemp(prefix="mfbench-asv-")) / "asv.conf.json"
    path.write_text(json.dumps(conf, indent=1))
    return path


def _asv(conf: Path, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "asv", "--config", str(conf), *args]
    print("+ asv " + " ".join(args), flush=True)
    return subprocess.run(cmd, env=env, cwd=cwd)


def _tree_pythonpath(tree: Path) -> str:
    """PYTHONPATH with ``tree`` first, so Python imports that checkout's mfbench."""
    return os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def run_commit(tree: Path, commit: str, results_dir: Path, bench: str | None, quick: bool,
               attributes: tuple[str, ...] = (), append: bool = False) -> Path:
    """Run the suites of ``tree`` (a checkout of ``commit``) in this Python; returns the asv results dir."""
    conf = _conf_for(tree, results_dir, results_dir.parent / "html")
    name = machine_name()
    path = _tree_pythonpath(tree)
    # asv drops PYTHONPATH in benchmark processes unless it comes as ASV_PYTHONPATH; without it the
    # suites would import whichever mfbench is installed instead of this commit's.
    # asv's forkserver imports the suites once and forks per benchmark; CUDA must not be initialised
    # before the fork, so torch answers is_available() from NVML instead of the driver.
    env = {**os.environ, "PYTHONPATH": path, "ASV_PYTHONPATH": path, "MFBENCH_COMMIT": commit,
           "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
    env.setdefault("MFBENCH_ASV_CACHE", tempfile.mkdtemp(prefix="mfbench-asv-cache-"))
    # asv's forkserver listens on a Unix socket under TMPDIR, and such a path may not exceed 107 bytes;
    # nox points TMPDIR into the session folder (<checkout>/.nox/alert/tmp), which in a deep checkout is
    # too long and asv stops with "Failed to start server thread" (seen in CI).
    if len(os.path.join(tempfile.gettempdir(), "asv-forkserver-xxxxxxxx", "socket")) > 100 and os.path.isdir("/tmp"):
        env["TMPDIR"] = "/tmp"
    if not _machine_known(name):
        _asv(conf, "machine", "--machine", name, "--yes", env=env, cwd=tree)
    args = ["run", "--set-commit-hash", commit, "--machine", name, "-E", f"existing:{sys.executable}",
            "--show-stderr", "--durations", "all", "--record-samples"]
    if bench:
        args += ["--bench", bench]
    if quick:
        args.append("--quick")
    if append:
        args.append("--append-samples")
    for attribute in attributes:
        args += ["-a", attribute]
    result = _asv(conf, *args, env=env, cwd=tree)
    if result.returncode not in (0, 2):  # 2: some benchmarks failed; their rows say so
        raise AlertError(f"asv run failed for {commit[:10]} (exit {result.returncode})")
    return results_dir


# --- asv results -> result rows ------------------------------------------------------------------


@dataclass(frozen=True)
class AsvValue:
    benchmark: str
    params: dict
    value: float | None
    unit: str
    q25: float | None
    q75: float | None
    samples: int | None
    stats: tuple
    selector: str = ""  # what asv's --bench matches for exactly this parameter set


def asv_values(results_dir: Path, machine: str, commit: str) -> list[AsvValue]:
    """Every value asv recorded for ``commit`` on ``machine``, one per benchmark and parameter set."""
    from asv.results import iter_results_for_machine_and_hash

    bench_meta = json.loads((results_dir / "benchmarks.json").read_text())
    out = []
    for result in iter_results_for_machine_and_hash(str(results_dir), machine, commit):
        for key in result.get_all_result_keys():
            meta = bench_meta.get(key, {})
            params = result.get_result_params(key)
            names = meta.get("param_names", [])
            values = result.get_result_value(key, params)
            stats = result.get_result_stats(key, params)
            samples = result.get_result_samples(key, params)
            combos = list(itertools.product(*params)) if params else [()]
            if not params:
                values, stats, samples = [values], [stats], [samples]
            for combo, value, stat, sample in zip(combos, values, stats, samples):
                labelled = {n: _unrepr(v) for n, v in zip(names, combo)}
                stat = stat or {}
                selector = f"{key}({', '.join(combo)})" if params else key
                out.append(AsvValue(key, labelled, value, meta.get("unit", ""), stat.get("q_25"), stat.get("q_75"),
                                    len(sample) if sample else None, (stat, sample), selector))
    return out


def _unrepr(text: str):
    try:
        return json.loads(text.replace("'", '"'))
    except ValueError:
        return text


def import_to_tables(results_dir: Path, commit: str, directory: Path | None = None,
                     cache: Path | None = None) -> int:
    """Append to the result tables, as one run: asv's values for ``commit`` on this machine (benchmark
    'asv:NAME', so every number the dashboard shows is a row) and the runner's rows behind the track_
    benchmarks, from the suites' cache."""
    from mfbench import results

    from mfbench.measure.ceilings import ceilings
    from mfbench.runner import ceiling_rows

    device = "cuda" if _has_cuda() else "cpu"
    run = results.Run.start(device)
    rows = ceiling_rows(run, ceilings(device))
    for path in sorted(cache.glob("*.json")) if cache else []:
        if path.name.startswith("probe-"):  # availability verdicts, not measurements
            continue
        for row in json.loads(path.read_text()):
            if "schema_version" not in row:  # a 'skipped' marker, not a measurement
                continue
            rows.append({**row, **{k: getattr(run, k) for k in ("run_id", "time_utc", "commit", "dirty")}})
    for v in asv_values(results_dir, machine_name(), commit):
        value = float("nan") if v.value is None else float(v.value)
        flags = [] if v.value is not None else ["failed-or-skipped"]
        rows.append(run.row(f"asv:{v.benchmark}", v.params, str(v.params.get("provider", "-")), "asv_value", value,
                            v.unit, spread_low=v.q25, spread_high=v.q75, spread_kind="iqr" if v.q25 is not None else "",
                            samples=v.samples, flags=flags))
    results.append(rows, directory or results.project_dir())
    return len(rows)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- alerts ------------------------------------------------------------------------------------------


def changed_kernel_files(base: str, head: str, globs: tuple[str, ...]) -> list[str]:
    files = _git("diff", "--name-only", f"{base}...{head}").splitlines()
    return [f for f in files if any(fnmatch.fnmatch(f, g) for g in globs)]


def compare(results_dir: Path, base: str, head: str, factor: float) -> list[dict]:
    """asv's own verdict per benchmark and parameter set: 'regressed', 'improved' or 'same'."""
    from asv.commands.compare import _is_result_better

    machine = machine_name()
    before = {(v.benchmark, json.dumps(v.params, sort_keys=True)): v for v in asv_values(results_dir, machine, base)}
    rows = []
    for v in asv_values(results_dir, machine, head):
        b = before.get((v.benchmark, json.dumps(v.params, sort_keys=True)))
        if b is None or b.value is None or v.value is None or math.isnan(b.value) or math.isnan(v.value):
            continue
        if _is_result_better(b.value, v.value, b.stats, v.stats, factor):
            verdict = "regressed"
        elif _is_result_better(v.value, b.value, v.stats, b.stats, factor):
            verdict = "improved"
        else:
            verdict = "same"
        rows.append({"benchmark": v.benchmark, "params": v.params, "before": b.value, "after": v.value,
                     "ratio": v.value / b.value, "before_iqr": (b.q25, b.q75), "after_iqr": (v.q25, v.q75),
                     "unit": v.unit, "verdict": verdict})
    return rows


def report(rows: list[dict], base: str, head: str, files: list[str], factor: float,
           paired: dict | None = None, rounds_note: str = "") -> str:
    """The markdown a reviewer reads. ``paired``: per (benchmark, params) the per-round log ratios."""
    paired = paired or {}

    def iqr(pair):
        lo, hi = pair
        return "-" if lo is None else f"{lo:.4g}-{hi:.4g}"

    regressed = [r for r in rows if r["verdict"] == "regressed"]
    lines = [f"# mfbench kernel alert: {head[:10]} vs {base[:10]}", "",
             f"Kernel files changed: {', '.join(files)}", f"Machine: {machine_name()}; threshold: x{factor:g} "
             "and asv's significance test.", *([rounds_note] if rounds_note else []), "",
             f"**{len(regressed)} regression(s)** in {len(rows)} compared measurements." if regressed
             else f"No regression in {len(rows)} compared measurements.", "",
             "| benchmark | params | before | after | ratio | before IQR | after IQR | verdict | per-round ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["ratio"]):
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"| {r['benchmark']} | {params} | {r['before']:.4g} {r['unit']} | {r['after']:.4g} {r['unit']} "
                     f"| {r['ratio']:.3f} | {iqr(r['before_iqr'])} | {iqr(r['after_iqr'])} | {r['verdict']} "
                     f"| {_paired_text(paired.get(_key(r['benchmark'], r['params']), []))} |")
    return "\n".join(lines) + "\n"


# --- rounds: how many base/head pairs an alert runs ----------------------------------------------
# On a shared CPU runner the same call drifts by 10-20 % over seconds, so one asv run per commit is a
# sample of that drift as much as of the code. Rounds alternate base and head (base, head, head, base,
# ...); each round gives one paired ratio, the median of head's new samples over base's. An alert runs
# at least --rounds of them and keeps adding rounds, up to --max-rounds, for every benchmark whose mean
# paired log-ratio is not yet SETTLE_Z standard errors away from the threshold. The verdict itself stays
# asv's, on all samples.
SETTLE_Z = 3.0
SETTLE_MIN_SE = 0.01  # a floor on the standard error: two rounds that happen to agree prove little


def _key(benchmark: str, params: dict) -> tuple[str, str]:
    return benchmark, json.dumps(params, sort_keys=True)


def unsettled(log_ratios: list[float], factor: float, z: float = SETTLE_Z) -> bool:
    """Whether the paired log-ratios so far leave open which side of ``factor`` head/base lies."""
    if len(log_ratios) < 2:
        return True
    se = max(statistics.stdev(log_ratios) / math.sqrt(len(log_ratios)), SETTLE_MIN_SE)
    return abs(statistics.fmean(log_ratios) - math.log(factor)) <= z * se


def round_order(r: int, base: str, head: str) -> tuple[str, str]:
    """Who runs first in round ``r`` (from 0): base, head, then head, base, and so on."""
    return (base, head) if r % 2 == 0 else (head, base)


def paired_log_ratio(before: list[float] | None, after: list[float] | None) -> float | None:
    """One round's paired log-ratio: log(median of head's new samples / median of base's); None where a
    side has no samples or a non-positive median."""
    if not before or not after:
        return None
    b, a = statistics.median(before), statistics.median(after)
    return math.log(a / b) if a > 0 and b > 0 else None


def _paired_text(log_ratios: list[float]) -> str:
    if not log_ratios:
        return "-"
    ratios = [math.exp(v) for v in log_ratios]
    spread = f" ± {statistics.stdev(ratios) / math.sqrt(len(ratios)):.3f}" if len(ratios) > 1 else ""
    return f"{math.exp(statistics.fmean(log_ratios)):.3f}{spread} ({len(ratios)} rounds)"


def _samples(results_dir: Path, commit: str) -> dict[tuple[str, str], tuple[str, list[float]]]:
    """(asv's selector, samples so far) per benchmark and parameter set."""
    return {_key(v.benchmark, v.params): (v.selector, [x for x in (v.stats[1] or []) if not math.isnan(x)])
            for v in asv_values(results_dir, machine_name(), commit)}


def accuracy_check(tree: Path) -> tuple[int, str]:
    """``mfbench snapshot eval`` of the tree's newest MemoryFormer snapshot, with the tree's own code:
    (exit code, its output). Exit 0 with a note where the tree has no snapshot.
    ``MFBENCH_ALERT_ACCURACY_SEQUENCES`` narrows the evaluation set (the Triton interpreter is slow)."""
    snaps = tree / "results" / "snapshots"
    if not any(snaps.glob("*/snapshot.json")):
        return 0, f"no snapshot committed under {snaps.relative_to(tree)}; accuracy not checked"
    args = [sys.executable, "-m", "mfbench", "snapshot", "eval", "--no-save", "--snapshots-dir", str(snaps),
            "--device", "cuda" if _has_cuda() else "cpu"]
    sequences = os.environ.get("MFBENCH_ALERT_ACCURACY_SEQUENCES")
    if sequences:
        args += ["--sequences", sequences]
    result = subprocess.run(args, cwd=tree, env={**os.environ, "PYTHONPATH": _tree_pythonpath(tree)},
                            capture_output=True, text=True)
    return result.returncode, (result.stdout + result.stderr).strip()


def alert(base: str, head: str, factor: float, bench: str, globs: tuple[str, ...], report_path: Path,
          quick: bool, attributes: tuple[str, ...], rounds: int = 2, accuracy: bool = True,
          max_rounds: int = 8) -> int:
    base_sha, head_sha = _git("rev-parse", base), _git("rev-parse", head)
    files = changed_kernel_files(base_sha, head_sha, globs)
    if not files:
        message = f"No kernel file changed between {base} and {head} (globs: {', '.join(globs)}); nothing to run."
        print(message)
        report_path.write_text(f"# mfbench kernel alert\n\n{message}\n")
        return 0
    print(f"kernel files changed: {', '.join(files)}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="mfbench-alert-"))
    results_dir = work / "asv-results"
    trees = {sha: work / sha[:12] for sha in (base_sha, head_sha)}
    try:
        for sha, tree in trees.items():
            _git("worktree", "add", "--detach", str(tree), sha)
        paired: dict[tuple[str, str], list[float]] = {}
        seen: dict[str, dict] = {base_sha: {}, head_sha: {}}
        selectors: dict[tuple[str, str], str] = {}
        selection, done = bench, 0
        for r in range(max(rounds, max_rounds)):
            block: dict[str, dict] = {base_sha: {}, head_sha: {}}
            for sha in round_order(r, base_sha, head_sha):
                print(f"round {r + 1} (at least {rounds}, at most {max_rounds}): {'base' if sha == base_sha else 'head'} "
                      f"{sha[:10]}", flush=True)
                run_commit(trees[sha], sha, results_dir, selection, quick, attributes, append=r > 0)
                for key, (selector, samples) in _samples(results_dir, sha).items():
                    selectors[key] = selector
                    new = samples[seen[sha].get(key, 0):]  # asv appends a run's samples after the old ones
                    seen[sha][key] = len(samples)
                    block[sha][key] = new
            for key, after in block[head_sha].items():
                ratio = paired_log_ratio(block[base_sha].get(key), after)
                if ratio is not None:
                    paired.setdefault(key, []).append(ratio)
            done = r + 1
            if done < rounds:
                continue
            if quick:  # one sample a run: no paired ratio to judge by
                break
            open_keys = [k for k, v in paired.items() if unsettled(v, factor)]
            if not open_keys or done >= max_rounds:
                break
            print(f"after {done} rounds, {len(open_keys)} measurement(s) not yet clear of x{factor:g}: "
                  + "; ".join(f"{k[0]} {k[1]} {_paired_text(paired[k])}" for k in open_keys[:5]), flush=True)
            # only the open parameter sets run again; asv matches "name(param, ...)" for those
            selection = "^(?:" + "|".join(re.escape(selectors[k]) for k in open_keys) + ")$"
        open_keys = [k for k, v in paired.items() if unsettled(v, factor)]
        rounds_note = (f"Rounds: {done} base/head pairs" + (f"; {len(open_keys)} measurement(s) still within "
                       f"{SETTLE_Z:g} standard errors of the threshold at --max-rounds" if open_keys and not quick
                       else "") + ".")
        if accuracy:
            print("checking the snapshot's accuracy through every provider ...", flush=True)
            accuracy_code, accuracy_text = accuracy_check(trees[head_sha])
        else:
            accuracy_code, accuracy_text = 0, "not checked (MFBENCH_ALERT_ACCURACY=0)"
    finally:
        for tree in trees.values():
            if tree.exists():
                _git("worktree", "remove", "--force", str(tree))
        _git("worktree", "prune")
    rows = compare(results_dir, base_sha, head_sha, factor)
    text = report(rows, base_sha, head_sha, files, factor, paired, rounds_note)
    verdict = ("**accuracy regression**: a provider's accuracy differs from reference's beyond the tolerance"
               if accuracy_code else "Every provider's accuracy agrees with reference's." if accuracy
               else "Accuracy not checked.")
    text += f"\n## Accuracy at {head_sha[:10]}\n\n{verdict}\n\n```\n{accuracy_text}\n```\n"
    report_path.write_text(text)
    print(text)
    shutil.rmtree(work, ignore_errors=True)
    if not rows:
        print("no measurement could be compared (every benchmark failed or was skipped)", file=sys.stderr)
        return 1
    return 1 if accuracy_code or any(r["verdict"] == "regressed" for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfbench.asvrun", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="run the suites for HEAD and append asv's values to the result tables")
    b.add_argument("--bench", help="regular expression of benchmarks to run (default: all)")
    b.add_argument("--quick", action="store_true", help="one sample per benchmark (smoke runs)")
    b.add_argument("--results-dir", type=Path, help="result tables (default: the project's)")
    a = sub.add_parser("alert", help="benchmark base and head if kernel files changed; exit 1 on a regression")
    a.add_argument("--base", required=True)
    a.add_argument("--head", default="HEAD")
    a.add_argument("--factor", type=float, default=1.1, help="slowdown ratio that counts (default 1.1)")
    bench = os.environ.get("MFBENCH_ALERT_BENCH", KERNEL_SUITES)
    a.add_argument("--bench", default=bench, help=f"benchmarks to compare (default $MFBENCH_ALERT_BENCH or {KERNEL_SUITES})")
    a.add_argument("--globs", default=",".join(KERNEL_GLOBS), help="comma-separated kernel file globs")
    a.add_argument("--report", type=Path, default=Path("alert-report.md"))
    a.add_argument("--quick", action="store_true")
    a.add_argument("--rounds", type=int, default=int(os.environ.get("MFBENCH_ALERT_ROUNDS", "2")),
                   help="base/head pairs of asv runs, interleaved base/head/head/base, at least "
                        "(default $MFBENCH_ALERT_ROUNDS or 2)")
    a.add_argument("--max-rounds", type=int, default=int(os.environ.get("MFBENCH_ALERT_MAX_ROUNDS", "8")),
                   help="rounds at most, added while a benchmark's ratio is not yet clear of the threshold "
                        "(default $MFBENCH_ALERT_MAX_ROUNDS or 8)")
    attributes = [s for s in os.environ.get("MFBENCH_ALERT_ATTRIBUTES", "").split(";") if s.strip()]
    a.add_argument("-a", "--attribute", action="append", default=attributes,
                   help="asv benchmark attribute override, e.g. 'repeat=(20,20,20.0)' (default: "
                        "$MFBENCH_ALERT_ATTRIBUTES, ';'-separated)")
    args = parser.parse_args(argv)
    try:
        if args.command == "alert":
            if args.rounds < 1:
                raise AlertError(f"--rounds must be at least 1, got {args.rounds}")
            if args.max_rounds < args.rounds:
                raise AlertError(f"--max-rounds ({args.max_rounds}) must be at least --rounds ({args.rounds})")
            return alert(args.base, args.head, args.factor, args.bench, tuple(g for g in args.globs.split(",") if g),
                         args.report, args.quick, tuple(args.attribute), args.rounds,
                         os.environ.get("MFBENCH_ALERT_ACCURACY", "1") != "0", args.max_rounds)
        head = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
        results_dir = ROOT / "results" / "asv"
        # The rows name the tree as it was before asv ran: asv rewrites results/asv/benchmarks.json, a
        # tracked file, so a git status taken when the rows are built would call every new run dirty.
        os.environ.setdefault("MFBENCH_DIRTY", "1" if dirty else "0")
        os.environ.setdefault("MFBENCH_COMMIT", head)
        cache = Path(tempfile.mkdtemp(prefix="mfbench-asv-cache-"))
        os.environ["MFBENCH_ASV_CACHE"] = str(cache)
        run_commit(ROOT, head, results_dir, args.bench, args.quick)
        count = import_to_tables(results_dir, head, args.results_dir, cache)
        print(f"appended {count} rows (asv values and the measurements behind them) to the result tables")
        return 0
    except AlertError as exc:
        print(f"mfbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
