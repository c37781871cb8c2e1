"""Every example provider on a GPU (issue 30): the example package installed (into a folder of its own, offline,
as tests/conftest.py's `installed` does), then `mfbench run --preset smoke` on cuda with dense, example_gather and
example_compiled (torch.compile max-autotune, whose backward a kept graph refused with donated buffers on), and
the GPU tests of the plugins if pytest is there.

    OUT=/tmp/out python docs/ci/gpu_plugins.py

Writes as each step ends: $OUT/plugins-gpu.json (the verdict per provider and direction, the run's exit code,
the seconds each step took), $OUT/run.log (the run's output), $OUT/rows.csv (its result rows), $OUT/pytest.log.
Exit 0 when every example provider measured forward and backward, 1 otherwise. At most 300 s for the run and
200 s for the tests (which run the same command again, warm).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("OUT", "/tmp/mfbench-gpu-plugins"))
NAMES = ("example_gather", "example_compiled")


def install_example(target: Path) -> list[str]:
    """The example package pip-installed into ``target`` (its entry point), or, where pip cannot build it
    offline (no setuptools in the image), the mfbench options that load the same module and register it."""
    build = Path(tempfile.mkdtemp(prefix="example-src-")) / "pkg"
    shutil.copytree(HERE / "examples" / "mfbench-example-provider", build)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(build)], capture_output=True, text=True)
    if done.returncode == 0:
        return []
    (OUT / "pip.log").write_text(done.stdout + done.stderr)
    shim = target / "example_shim.py"
    shim.write_text(f"import sys\nsys.path.insert(0, {str(build)!r})\nimport mfbench_example_provider\n"
                    "mfbench_example_provider.register()\n")
    return ["--provider-module", str(shim)]


def verdicts(rows_dir: Path) -> dict:
    sys.path.insert(0, str(HERE))
    from mfbench.store import results

    frame = results.load(rows_dir)
    frame.to_csv(OUT / "rows.csv", index=False)
    found = {}
    for name in NAMES:
        rows = frame[frame["provider"] == name]
        for _, row in rows[rows["metric"].isin(["time", "failed", "skipped"])].iterrows():
            params = json.loads(row["params"])
            key = f"{name} {row['benchmark']} {params['direction']}"
            found[key] = (f"{row['value'] * 1e3:.4g} ms" if row["metric"] == "time"
                          else f"{row['metric']}: {row['flags']}")
    return found


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    report: dict = {"steps": {}}
    save = lambda: (OUT / "plugins-gpu.json").write_text(json.dumps(report, indent=1))  # noqa: E731
    site = Path(tempfile.mkdtemp(prefix="example-site-"))
    start = time.time()
    extra = install_example(site)
    report["steps"]["install_s"] = round(time.time() - start, 1)
    report["example_loaded_by"] = "--provider-module shim (pip could not build it)" if extra else "entry point"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(HERE)]), "MFBENCH_PLUGINS": "1"}
    env.pop("TRITON_INTERPRET", None)
    rows = Path(tempfile.mkdtemp(prefix="rows-"))
    start = time.time()
    try:
        done = subprocess.run([sys.executable, "-m", "mfbench", "run", "--preset", "smoke", "--device", "cuda",
                               "--providers", ",".join(("dense",) + NAMES), "--results-dir", str(rows), *extra],
                              cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:  # keep what it printed and the rows it wrote
        done = subprocess.CompletedProcess(exc.cmd, 124, exc.stdout or "", exc.stderr or "")
        done.stdout, done.stderr = (x.decode() if isinstance(x, bytes) else x for x in (done.stdout, done.stderr))
    (OUT / "run.log").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    report["steps"]["run_s"] = round(time.time() - start, 1)
    report["run_exit"] = done.returncode
    report["rows"] = verdicts(rows)
    measured = [k for k, v in report["rows"].items() if v.endswith(" ms")]
    report["ok"] = done.returncode == 0 and all(any(k.startswith(f"{n} layer {d}") for k in measured)
                                                for n in NAMES for d in ("forward", "backward")) \
        and len(measured) == len(report["rows"])
    save()
    if not extra and subprocess.run([sys.executable, "-c", "import pytest, hypothesis"]).returncode == 0:
        start = time.time()
        try:
            test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_plugins.py"],
                                  cwd=HERE, env={**env, "MFBENCH_TEST_GPU": "1"}, capture_output=True, text=True,
                                  timeout=200)
        except subprocess.TimeoutExpired:
            test = subprocess.CompletedProcess([], 124, "timed out after 200 s\n", "")
        (OUT / "pytest.log").write_text(test.stdout + test.stderr)
        report["steps"]["pytest_s"] = round(time.time() - start, 1)
        report["pytest_exit"] = test.returncode
        report["pytest_summary"] = (test.stdout.strip().splitlines() or [""])[-1]
        save()
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
