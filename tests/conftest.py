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
def installed(tmp_path_factory):
    """examples/mfbench-example-provider, pip-installed (its own pyproject, offline) into a directory of its
    own that the mfbench processes of a test see through PYTHONPATH: its dist-info carries the entry point,
    and the shared test environment stays as it was."""
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
