"""nox sessions: `nox -s tests` (the CI command) and `nox -s bench` (the main job on a GPU or CPU box).

Torch is never reinstalled on a host that has one: sessions see the host's packages
(--system-site-packages) and pin its torch and triton with a constraint. A host without torch and
without a GPU gets the CPU pins in constraints/cpu.txt, never a multi-GB CUDA build. On an offline host,
MFBENCH_WHEELS=DIR installs the missing pure-Python packages from a local wheel directory.
"""

from __future__ import annotations

import os
import shutil
import sys
import subprocess
from pathlib import Path

import importlib.util

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
ROOT = Path(__file__).parent
# A Python that already has torch (a GPU host's image) is used as it is: a new virtualenv would not see
# the packages of a venv-based host Python, and nothing may reinstall torch there.
HOST_TORCH = importlib.util.find_spec("torch") is not None
VENV = {"venv_backend": "none"} if HOST_TORCH else {"venv_params": ["--system-site-packages"]}
PY = sys.executable if HOST_TORCH else "python"


def run(session: nox.Session, *args: str) -> None:
    """Run a command with the session's Python (the host's own where sessions use no virtualenv)."""
    session.run(PY, *args, external=HOST_TORCH)


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def _host_versions(session: nox.Session) -> dict[str, str]:
    """torch/triton versions the session's interpreter already sees (from the host), if any."""
    code = ("import importlib.metadata as m\n"
            "for n in ('torch', 'triton'):\n"
            "    try: print(n, m.version(n))\n"
            "    except m.PackageNotFoundError: pass\n")
    out = session.run(PY, "-c", code, silent=True, external=True) or ""
    return dict(line.split() for line in out.strip().splitlines() if line.strip())


def _pins(text: str) -> dict[str, str]:
    """{name: requirement line} of a constraints file, comments dropped."""
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return {line.split("=")[0].split("<")[0].split(">")[0].strip(): line for line in lines if line}


def _ready_here(session: nox.Session) -> bool:
    """Whether the host Python already imports this checkout's mfbench and what the sessions need (a
    GPU runner that ran a session before, or a test driving a CI job): then nothing is installed."""
    code = ("import pathlib, asv, asv_tachyon, pandas, pyarrow, seaborn, pynvml, mfbench\n"
            "print(pathlib.Path(mfbench.__file__).resolve().parent.parent)")
    out = session.run(PY, "-c", code, silent=True, external=True, success_codes=[0, 1]) or ""
    return out.strip().splitlines()[-1:] == [str(ROOT.resolve())]


def install(session: nox.Session, extras: str = "") -> None:
    """Install mfbench into the session, keeping the host's torch and triton where it has them."""
    if HOST_TORCH and not extras and _ready_here(session):
        session.log("mfbench from this checkout and its dependencies are importable here: nothing to install")
        return
    host = _host_versions(session)
    if "torch" not in host and _has_gpu():
        session.error("this host has a GPU but no torch: install the torch build that matches its CUDA first")
    pins = {} if _has_gpu() else _pins((ROOT / "constraints" / "cpu.txt").read_text())
    pins.update({name: f"{name}=={version}" for name, version in host.items()})
    constraint = Path(session.create_tmp()) / "constraints.txt"
    constraint.write_text("".join(line + "\n" for line in pins.values()))
    args = ["-c", str(constraint), "-e", f".{extras}"]
    wheels = os.environ.get("MFBENCH_WHEELS")
    if wheels:
        args = ["--no-index", "--find-links", wheels, "--no-build-isolation", *args]
    if HOST_TORCH:
        run(session, "-m", "pip", "install", "-q", *args)
    else:
        session.install(*args)


@nox.session(**VENV)
def tests(session: nox.Session) -> None:
    """Run the test suite (Triton kernels through the CPU interpreter where there is no GPU)."""
    install(session, "[test]")
    run(session, "-m", "pytest", *(session.posargs or ["-q"]))


NEWEST_TRITON = ROOT / "constraints" / "triton-newest.txt"


@nox.session(venv_params=["--system-site-packages"])
def interpreter(session: nox.Session) -> None:
    """The kernel tests (tests/kernels) again, under the CPU interpreter of the newest Triton pip installs.

    `tests` runs them on cpu.txt's Triton, the GPU image's; the two interpreters differ (3.9's refuses
    masks that 3.6's took), so CI runs both. Elsewhere the suite meets the kernels through the `triton`
    provider, whose trial run tests/kernels makes too. A host with its own torch (the README's CPU set-up: a
    venv with the CPU build) keeps it: the session's virtualenv reads the host's packages after its own, so
    only the newest Triton and its numpy come first, and the host's stay as they were.
    """
    if _has_gpu():
        session.skip("a GPU host runs the kernels on its own Triton: `nox -s tests` and `pytest -m gpu` test it")
    newest = _pins(NEWEST_TRITON.read_text())
    pins = {} if HOST_TORCH else _pins((ROOT / "constraints" / "cpu.txt").read_text())
    pins.update(newest)
    constraint = Path(session.create_tmp()) / "constraints.txt"
    constraint.write_text("".join(line + "\n" for line in pins.values()))
    if HOST_TORCH:
        _behind_the_host(session)
        session.install("-c", str(constraint), *newest)
    else:
        session.install("-c", str(constraint), "-e", ".[test]")
    session.run("python", "-m", "pytest", *(session.posargs or ["-q", "tests/kernels"]))


def _behind_the_host(session: nox.Session) -> None:
    """Make the host Python's packages (torch, this checkout's editable mfbench, pytest) importable in the
    session's virtualenv, after its own: a virtualenv made from a venv's Python does not see that venv's
    packages, --system-site-packages or not. addsitedir also reads the host's .pth files (editable installs)."""
    import site

    own = session.run("python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                      silent=True).strip().splitlines()[-1]
    host = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in host)
    Path(own, "zz_mfbench_host.pth").write_text(lines)


@nox.session(**VENV)
def bench(session: nox.Session) -> None:
    """Run the asv suites for HEAD here, append the result tables, draw the plots, publish the dashboard, and
    end with MemoryFormer against dense per case of this run."""
    install(session)
    run(session, "-m", "mfbench", "info")
    run(session, "-m", "mfbench.shells.asvrun", "bench", *session.posargs)
    run(session, "-m", "mfbench.report.plots")
    _publish(session)
    run(session, "-m", "mfbench.report.bench_summary")  # last: MemoryFormer against dense in this run, and where to look


def _publish(session: nox.Session) -> None:
    run(session, "-m", "asv", "publish", "--config", "asv.conf.json")
    run(session, "-m", "mfbench.report.dashboard", "install", "results/html")


@nox.session(**VENV)
def publish(session: nox.Session) -> None:
    """Publish the asv results as an offline dashboard in results/html (asv publish + asv-tachyon UI)."""
    install(session)
    _publish(session)


@nox.session(**VENV)
def plots(session: nox.Session) -> None:
    """Draw the plots of the result tables into results/plots (PNG and SVG)."""
    install(session)
    run(session, "-m", "mfbench.report.plots", *session.posargs)


@nox.session(**VENV)
def alert(session: nox.Session) -> None:
    """If kernel files changed since --base REF: time both commits' kernels, re-score the snapshot; fail on a regression."""
    install(session)
    run(session, "-m", "mfbench.shells.alert", *session.posargs)
