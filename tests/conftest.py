"""Test set-up. The Triton interpreter must be chosen before triton is first imported, so it is set here:
kernel tests run on CPU tensors through it. On a GPU host, MFBENCH_TEST_GPU=1 leaves it off and the
tests marked ``gpu`` run the kernels on the device instead."""

import os
import tempfile

if os.environ.get("MFBENCH_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Always a fresh cache, never the developer's: with setdefault a MFBENCH_CACHE exported in the shell (or
# CI) pointing at the real cache let tests write ceilings measured under the suite's load there, and later
# runs read their floors from them.
os.environ["MFBENCH_CACHE"] = tempfile.mkdtemp(prefix="mfbench-cache-")
# The user's installed plugins (the README's example package) are not the suite's: no entry point is loaded
# here or in the processes tests start. Tests of plugins install them into a directory of their own and
# turn this back on for their processes (`installed` below).
os.environ["MFBENCH_PLUGINS"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", deadline=None, max_examples=20,
                           suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    gpu_ok = torch.cuda.is_available() and not INTERPRETING
    skip = pytest.mark.skip(reason="needs a CUDA device and MFBENCH_TEST_GPU=1")
    for item in items:
        if "gpu" in item.keywords and not gpu_ok:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One single-process `mfbench run --preset smoke` on the CPU, shared by the runner and distributed tests."""
    from mfbench.shells.cli.main import main

    directory = tmp_path_factory.mktemp("results")
    code = main(["run", "--preset", "smoke", "--device", "cpu", "--results-dir", str(directory)])
    assert code == 0
    return directory


@pytest.fixture(scope="session")
def committed(tmp_path_factory):
    """The tree as committed at HEAD, for tests of the committed documents and results: README.md, docs/ and
    results/ (its tables, asv results and snapshots; not the plots), extracted from git, so what a user has measured into results/ since
    (a bench, a run, training) never changes a test's answer. Outside a git checkout: the files as they are."""
    import shutil
    import subprocess
    import tarfile
    from io import BytesIO
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    target = tmp_path_factory.mktemp("committed")
    paths = ["README.md", "docs", "results/asv", "results/kernels.md", "results/decode.md", "results/results.parquet",
             "results/results.csv",
             "results/snapshots"]
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", *paths], cwd=root, capture_output=True)
    if archive.returncode == 0:
        tarfile.open(fileobj=BytesIO(archive.stdout)).extractall(target, filter="data")
    else:
        for path in paths:
            copy = shutil.copytree if (root / path).is_dir() else shutil.copy
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            copy(root / path, target / path)
    return target


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """examples/mfbench-example-provider, pip-installed (its own pyproject, offline) into a directory of its
    own that the mfbench processes of a test see through PYTHONPATH: its dist-info carries the entry point,
    and the shared test environment stays as it was. Processes that should load it set MFBENCH_PLUGINS=1."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    build = tmp_path_factory.mktemp("example-src") / "pkg"
    # pip builds in place: build/ and *.egg-info land in the copy, not in examples/
    shutil.copytree(Path(__file__).resolve().parent.parent / "examples" / "mfbench-example-provider", build)
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(build)], check=True, capture_output=True)
    assert (next(target.glob("mfbench_example_provider-*.dist-info")) / "entry_points.txt").exists()
    return target
