"""Driving asv for mfbench: run the suites for a commit in the host environment (asv's ``existing``
environment, ``asv run --set-commit-hash``) and bring asv's values into the result tables.

    python -m mfbench.shells.asvrun bench  [--bench REGEX] [--quick]

The kernel alert on pull requests is ``mfbench.shells.alert``: it times the kernels themselves, which asv's
process-per-benchmark timing of a whole call does not do on a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mfbench.config import settings, triton_cache_env

ROOT = Path(__file__).resolve().parents[2]  # the repository: mfbench/shells/ is two levels down
CONF = ROOT / "asv.conf.json"


class AsvRunError(Exception):
    """A problem with the run (no git, asv failed); reported in one line."""


def _git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(["git", *args], cwd=cwd or ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise AsvRunError(f"git {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def machine_name() -> str:
    """Names the accelerator, so H100, H200 and CPU results never share an asv machine."""
    import torch

    from mfbench.instruments.fingerprint import cpu_model, device_name

    if torch.cuda.is_available():
        return device_name("cuda")
    cpu = "".join(c if c.isalnum() else "-" for c in cpu_model()).strip("-")[:40]
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


HEARTBEAT_S = 30.0  # the longest asv may stay silent before the run says it is still going


def _asv(conf: Path, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "asv", "--config", str(conf), *args]
    print("+ asv " + " ".join(args), flush=True)
    return streamed(cmd, env=env, cwd=cwd)


def streamed(cmd: list[str], env: dict | None = None, cwd: Path | None = None,
             heartbeat_s: float = HEARTBEAT_S) -> subprocess.CompletedProcess:
    """Run ``cmd``, passing its stdout on line by line; whenever it has said nothing for ``heartbeat_s``, a
    line saying so and what it said last (asv prints a benchmark's name before running it, and nothing
    during: a whole-model training step on a CPU ran 6.7 minutes silent)."""
    import threading
    import time

    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True, bufsize=1)
    start = time.monotonic()
    last = {"at": start, "line": ""}
    lock = threading.Lock()

    def beat() -> None:
        while proc.poll() is None:
            time.sleep(min(1.0, heartbeat_s / 4))
            with lock:
                if time.monotonic() - last["at"] >= heartbeat_s:
                    quiet = time.monotonic() - last["at"]
                    print(f"  ... still running ({time.monotonic() - start:.0f} s in, {quiet:.0f} s since: "
                          f"{last['line'][:90]})", flush=True)
                    last["at"] = time.monotonic()

    threading.Thread(target=beat, daemon=True).start()
    for line in proc.stdout:
        with lock:
            sys.stdout.write(line)
            sys.stdout.flush()
            last["at"] = time.monotonic()
            last["line"] = line.strip() or last["line"]
    return subprocess.CompletedProcess(cmd, proc.wait())


def tree_pythonpath(tree: Path) -> str:
    """PYTHONPATH with ``tree`` first, so Python imports that checkout's mfbench."""
    return os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def run_commit(tree: Path, commit: str, results_dir: Path, bench: str | None, quick: bool,
               attributes: tuple[str, ...] = (), append: bool = False, cache: Path | None = None) -> Path:
    """Run the suites of ``tree`` (a checkout of ``commit``) in this Python; returns the asv results dir.
    ``cache``: where the suites keep their measurements (their environment's MFBENCH_ASV_CACHE), by default
    the caller's MFBENCH_ASV_CACHE or a new temporary directory."""
    conf = _conf_for(tree, results_dir, results_dir.parent / "html")
    name = machine_name()
    path = tree_pythonpath(tree)
    # asv drops PYTHONPATH in benchmark processes unless it comes as ASV_PYTHONPATH; without it the
    # suites would import whichever mfbench is installed instead of this commit's.
    # asv's forkserver imports the suites once and forks per benchmark; CUDA must not be initialised
    # before the fork, so torch answers is_available() from NVML instead of the driver.
    env = {**os.environ, "PYTHONPATH": path, "ASV_PYTHONPATH": path, "MFBENCH_COMMIT": commit,
           "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
    env["MFBENCH_ASV_CACHE"] = str(cache or settings().asv_cache or tempfile.mkdtemp(prefix="mfbench-asv-cache-"))
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
    described = _benchmark_list(results_dir)
    try:
        result = _asv(conf, *args, env=env, cwd=tree)
    finally:  # asv rewrote the list with this machine's parameters alone: the other machines' come back
        _keep_benchmark_list(results_dir, described)
    if result.returncode not in (0, 2):  # 2: some benchmarks failed; their rows say so
        raise AsvRunError(f"asv run failed for {commit[:10]} (exit {result.returncode})")
    return results_dir


# --- asv's benchmarks.json, shared by every machine's results ---------------------------------------


def _benchmark_list(results_dir: Path) -> dict:
    """The benchmarks.json of ``results_dir`` (asv's list of benchmarks and their parameters); {} if none."""
    from asv.benchmarks import Benchmarks
    from asv.util import load_json

    path = results_dir / "benchmarks.json"
    return load_json(str(path), api_version=Benchmarks.api_version) if path.exists() else {}


def merged_benchmark_list(before: dict, after: dict) -> dict:
    """What asv's run on this machine wrote (``after``), with what the list held before kept.

    asv rewrites benchmarks.json from the benchmarks it finds here, with this machine's parameters only (a
    CPU's device, lengths and providers), and `asv publish` shows only results whose parameters the list
    names: after one CPU bench the H100's graphs held no values. Each benchmark keeps the union of both
    parameter lists, the earlier values first (a run that adds nothing leaves the file as it was), and a
    benchmark only the earlier list knew stays. The version is the run's: asv shows the results of a
    benchmark's current code only, on every machine alike."""
    merged = dict(before)
    for name, bench in after.items():
        old = before.get(name)
        if isinstance(old, dict) and isinstance(bench, dict) and old.get("param_names") == bench.get("param_names"):
            bench = {**bench, "params": [list(dict.fromkeys([*a, *b])) for a, b in zip(old["params"], bench["params"])]}
        merged[name] = bench
    return merged


def _keep_benchmark_list(results_dir: Path, before: dict) -> None:
    from asv.benchmarks import Benchmarks
    from asv.util import write_json

    if before:  # written as asv writes it: a run that adds nothing leaves the same bytes
        merged = merged_benchmark_list(before, _benchmark_list(results_dir))
        write_json(str(results_dir / "benchmarks.json"), merged, Benchmarks.api_version)


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


def import_to_tables(results_dir: Path, commit: str, directory: Path | None = None, cache: Path | None = None,
                     dirty: bool = False) -> int:
    """Append to the result tables, as one run: asv's values for ``commit`` on this machine (benchmark
    'asv:NAME', so every number the dashboard shows is a row) and the pipeline's rows behind the track_
    benchmarks, from the suites' cache. The rows name ``commit`` and ``dirty`` as the caller saw the tree."""
    import torch

    from mfbench.bench.measure import Bench
    from mfbench.instruments.ceilings import ceilings
    from mfbench.store import results

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = results.Run.start(str(device), source=(commit, dirty))
    rows = Bench(device, ceilings(device), energy_seconds=0.0).machine_rows(run)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfbench.shells.asvrun", description=__doc__.splitlines()[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="run the suites for HEAD and append asv's values to the result tables")
    b.add_argument("--bench", help="regular expression of benchmarks to run (default: all)")
    b.add_argument("--quick", action="store_true", help="one sample per benchmark (smoke runs)")
    b.add_argument("--results-dir", type=Path, help="result tables (default: the project's)")
    args = parser.parse_args(argv)
    os.environ.update(triton_cache_env())  # the entry point chooses the process's Triton cache
    try:
        # The rows name the tree as it was before asv ran: asv rewrites results/asv/benchmarks.json, a
        # tracked file, so a git status taken when the rows are built would call every new run dirty. A
        # tree without .git names its commit in MFBENCH_COMMIT (and MFBENCH_DIRTY).
        env = settings()
        head = env.commit or _git("rev-parse", "HEAD")
        dirty = env.dirty if env.commit else bool(_git("status", "--porcelain", "--untracked-files=no"))
        results_dir = ROOT / "results" / "asv"
        cache = Path(tempfile.mkdtemp(prefix="mfbench-asv-cache-"))
        run_commit(ROOT, head, results_dir, args.bench, args.quick, cache=cache)
        count = import_to_tables(results_dir, head, args.results_dir, cache, dirty=dirty)
        print(f"appended {count} rows (asv values and the measurements behind them) to the result tables")
        return 0
    except AsvRunError as exc:
        print(f"mfbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
