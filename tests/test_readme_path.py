"""The README's path holds (issue 30): in a copy of this tree, do what README.md tells a new user to do (a
bench adds this machine's asv results and rows to results/ and redraws the plots, the example plugin is
installed and run, a model is trained into results/), then run the README's test command there. It must
pass: tests answer for the committed state, never for what a user has measured or installed.

The steps are the README's, made small (one quick asv benchmark, the smoke preset, a few training steps):
what matters is that they write where the full ones write. By default the copy runs the tests that read
results/, the committed documents or the registry (STATE_READERS); MFBENCH_SLOW_TESTS=1 runs the whole suite
there."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SLOW = os.environ.get("MFBENCH_SLOW_TESTS") == "1"
# Every test that reads results/ (tables, asv results, snapshots), README.md or results/kernels.md of the
# tree, or the provider registry's full list: the ones a user's bench, training or installed plugin could change.
STATE_READERS = [
    "tests/test_findings.py",
    "tests/test_bench_writes.py::test_a_bench_on_a_new_machine_adds_its_files_and_rewrites_no_other_machines",
    "tests/test_dashboard.py",
    "tests/test_output.py::test_the_schema_documents_every_column_of_load",
    "tests/instruments/test_counters.py::test_kernels_md_shows_the_counter_rows_of_the_result_tables",
    "tests/test_alert.py::test_the_alert_measures_the_providers_a_change_touches",
    "tests/test_providers.py",
    "tests/test_decode.py::test_the_readme_shows_the_decode_rows_of_the_result_tables",
    "tests/test_budget.py::test_readme_and_the_snapshot_docs_carry_the_tables_of_the_rows",
    # the newest snapshot, which training made the user's
    "tests/test_plugins.py::test_snapshot_eval_checks_the_example_and_fails_the_broken_ones",
    "tests/test_battery.py::test_damaged_snapshot_weights_are_a_one_line_error_not_an_accuracy_failure",
]
ASV_SMALL = {"MFBENCH_ASV_PROVIDERS": "embedding_bag,dense", "MFBENCH_ASV_DEVICES": "cpu", "MFBENCH_ASV_SEQS": "64",
             "MFBENCH_ASV_PRESET": "micro"}


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.email=test@mfbench", "-c", "user.name=test", *args], cwd=cwd,
                          check=True, capture_output=True, text=True)
    return done.stdout


def _copy_of_this_tree(target: Path) -> Path:
    """A clone (with the history the committed asv results name) on branch main, whose HEAD is the working
    tree as it is (tracked and new files, not ignored ones), but for results/ as committed: a user's own
    results here must not become the copy's committed ones."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True, capture_output=True)
    _git(target, "checkout", "-q", "-B", "main")  # asv.conf.json names the branch
    files = _git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in (f for f in files if f and not f.startswith("results/")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
        elif (target / name).exists():  # deleted here, not yet committed
            (target / name).unlink()
    _git(target, "add", "-A")
    _git(target, "commit", "-qm", "the tree under test", "--allow-empty")
    return target


def _step(tree: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def followed(tmp_path_factory, installed):
    """A copy of this tree after the README's steps, and the environment a user has there."""
    tree = _copy_of_this_tree(tmp_path_factory.mktemp("readme") / "mfbench")
    home = tmp_path_factory.mktemp("home")  # asv's machine file: this test's, not the user's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(installed)]), "HOME": str(home),
           "TRITON_INTERPRET": "1", "MFBENCH_PLUGINS": "1", **ASV_SMALL}  # the plugin is installed
    # nox -s bench: the asv suites for HEAD, their values into the tables, the plots redrawn
    _step(tree, env, "-m", "mfbench.shells.asvrun", "bench", "--quick", "--bench", r"^layer\.LayerForwardMetrics\.track_median")
    if SLOW:  # a minute on 2 cores; no test reads the plots
        _step(tree, env, "-m", "mfbench.report.plots")
    # Benchmark your own kernel: the installed example beside the built-ins, into the default results/
    _step(tree, env, "-m", "mfbench", "run", "--preset", "smoke", "--device", "cpu", "--benchmarks", "layer",
          "--providers", "reference,example_gather,dense")
    # mfbench train: a model and its snapshot into results/
    _step(tree, env, "-m", "mfbench", "train", "--preset", "micro", "--task", "mqar", "--steps", "2")
    return tree, env


def test_the_readme_test_command_passes_after_the_readme_steps(followed):
    tree, env = followed
    changed = _git(tree, "status", "--porcelain", "--untracked-files=all")
    # the steps left the user's state the tests must not depend on: new rows, this machine's asv results, a
    # trained snapshot, redrawn plots; and the plugin is measured
    assert " M results/results.parquet" in changed and "results/asv/benchmarks.json" in changed, changed
    assert "?? results/snapshots/" in changed and "?? results/asv/" in changed, changed
    from mfbench.store import results

    rows = results.load(tree / "results")
    assert {"example_gather", "embedding_bag"} <= set(rows["provider"])
    tests = ["tests", "--ignore", "tests/test_readme_path.py"] if SLOW else STATE_READERS
    user = {k: v for k, v in env.items() if k not in ASV_SMALL}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=tree, env=user,
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout.splitlines()[-1] and " failed" not in done.stdout.splitlines()[-1]


def test_no_test_reads_the_working_trees_results_or_documents():
    """What a user measured into results/ is theirs: tests read results/, README.md and results/kernels.md as
    committed (the `committed` fixture), or tables of their own in tmp_path."""
    reads = re.compile(r'project_dir\(\)|results\.load\(\)|ROOT\s*/\s*"results"|ROOT\s*/\s*"README.md"')
    found = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "tests").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if reads.search(line)
             and path.name != "test_readme_path.py"]
    assert found == [], found
