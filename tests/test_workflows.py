"""The ready-made CI: workflow files pass the GitHub Actions and GitLab CI schemas, call only nox
sessions that exist, watch the kernel files the alert watches, and the pull-request job's own commands,
run on a planted regression, fail with the report a reviewer would see."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mfbench.shells import alert

from .plant import plant_slowdown
from .test_alert import ALERT_ENV, ENV, _git

ROOT = alert.ROOT
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
GITLAB = ROOT / "docs" / "ci" / "gitlab-ci.yml"


def _load(path: Path) -> dict:
    # imported here: collection must not need ruamel (the GPU image, where `pytest -m gpu` runs, lacks it)
    yaml = pytest.importorskip("ruamel.yaml")
    return yaml.YAML(typ="safe").load(path.read_text())


def _schema_check(schema: str, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, files)],
                          capture_output=True, text=True)


def test_workflows_pass_their_schemas():
    assert {p.name for p in WORKFLOWS} >= {"tests.yml", "kernel-alert.yml", "bench.yml"}
    github = _schema_check("vendor.github-workflows", *WORKFLOWS)
    assert github.returncode == 0, github.stdout + github.stderr
    gitlab = _schema_check("vendor.gitlab-ci", GITLAB)
    assert gitlab.returncode == 0, gitlab.stdout + gitlab.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    steps:\n      - run: echo\n")  # no runs-on
    assert _schema_check("vendor.github-workflows", broken).returncode != 0


def _nox_sessions() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "nox", "-l", "-f", str(ROOT / "noxfile.py")], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[1] for line in out.splitlines() if line[:2] in ("* ", "- ")}


def _scripts(doc: dict) -> list[str]:
    jobs = doc.get("jobs") or {k: v for k, v in doc.items() if isinstance(v, dict) and "script" in v}
    out = []
    for job in jobs.values():
        out += [s["run"] for s in job.get("steps", []) if "run" in s]
        out += [s for s in job.get("script", [])]
    return out


def test_jobs_call_existing_nox_sessions_and_watch_the_kernel_files():
    sessions = _nox_sessions()
    assert {"tests", "bench", "publish", "plots", "alert"} <= sessions
    called = set()
    for path in [*WORKFLOWS, GITLAB]:
        for script in _scripts(_load(path)):
            for line in script.splitlines():
                if line.strip().startswith("nox -s "):
                    called.add(line.split()[2])
    assert called == {"alert", "bench"} and called <= sessions
    doc = _load(ROOT / ".github" / "workflows" / "kernel-alert.yml")
    paths = doc.get("on", doc.get(True))["pull_request"]["paths"]  # YAML 1.1 readers turn `on` into True
    globs = {g.rstrip("*").rstrip("/") for g in alert.KERNEL_GLOBS}
    assert {p.rstrip("*").rstrip("/") for p in paths} == globs


def _pr_job_steps() -> list[dict]:
    return _load(ROOT / ".github" / "workflows" / "kernel-alert.yml")["jobs"]["alert"]["steps"]


@pytest.fixture
def planted_pr(tmp_path) -> Path:
    """A checkout as the PR runner sees it: HEAD is a PR that plants a kernel slowdown, origin/main
    is where it branched off."""
    path = tmp_path / "pr"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True)
    _git(path, "update-ref", "refs/remotes/origin/main", "HEAD")
    kernel = path / "mfbench" / "kernels" / "lookup.py"
    # every table gathered twice: about x1.8 under the interpreter, settled in the alert's first two rounds (at
    # half the tables, x1.3, the rounds' noise on a shared CPU kept it open for all six: two minutes)
    kernel.write_text(plant_slowdown(kernel.read_text(), 1.0))
    _git(path, "commit", "-qam", "a kernel change that is slower")
    return path


def test_pr_job_commands_fail_on_a_planted_regression_with_the_report(planted_pr, tmp_path):
    summary = tmp_path / "summary.md"
    # The runner's nox and Python: this test's Python, whose mfbench is the PR checkout's. (A `nox` found on
    # PATH could belong to another Python: in CI's nox venv, the system's.)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nox").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m nox "$@"\n')
    (bin_dir / "nox").chmod(0o755)
    env = {**os.environ, **ENV, "BASE_REF": "main", "GITHUB_STEP_SUMMARY": str(summary),
           "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(planted_pr),
           # the CPU stand-in for a GPU runner: only what the planted slowdown touches
           **ALERT_ENV}
    env.pop("MFBENCH_ASV_CACHE", None)
    codes, logs = {}, []
    for step in _pr_job_steps():
        if "run" in step and "gh pr comment" not in step["run"]:
            out = subprocess.run(["bash", "-eo", "pipefail", "-c", step["run"]], cwd=planted_pr, env=env,
                                 capture_output=True, text=True)
            codes[step.get("name")] = out.returncode
            logs.append(f"--- {step.get('name')}: exit {out.returncode}\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    alert_code = codes["Benchmark base and head, compare"]
    assert summary.exists(), "\n".join(logs)
    text = summary.read_text()
    assert alert_code != 0, text
    assert "**Regression**" in text and "| **regressed**" in text and "mfbench/kernels/lookup.py" in text
