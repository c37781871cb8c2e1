"""The CI files follow GitHub's and GitLab's hardening advice for self-hosted runners that run pull-request
code: approval before a GPU runs it, separate runners for trusted and untrusted jobs, least permissions,
no token left in the checkout, a throwaway virtualenv instead of the host's Python, and a push token that
merge-request pipelines never see."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:  # what tests/test_workflows.py reads them with (installed with check-jsonschema; the test extra names it)
    from ruamel.yaml import YAML

    def _parse(text: str):
        return YAML(typ="safe").load(text)
except ImportError:
    yaml = pytest.importorskip("yaml", reason="neither ruamel.yaml nor PyYAML is installed to read the workflows")

    def _parse(text: str):
        return yaml.safe_load(text)

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = {p.name: _parse(p.read_text()) for p in sorted((ROOT / ".github" / "workflows").glob("*.yml"))}
GITLAB_TEXT = (ROOT / "docs" / "ci" / "gitlab-ci.yml").read_text()
GITLAB = _parse(GITLAB_TEXT)
UNTRUSTED_EVENTS = {"pull_request", "pull_request_target"}


def _events(doc: dict) -> set[str]:
    on = doc.get("on", doc.get(True))  # YAML 1.1 readers turn `on` into True
    return {on} if isinstance(on, str) else set(on)


def _labels(runs_on) -> frozenset[str]:
    """A job's runner labels; for `fromJSON(vars.X || '[...]')` the default list."""
    if isinstance(runs_on, list):
        return frozenset(runs_on)
    found = re.search(r"'(\[.*?\])'", runs_on)
    return frozenset(json.loads(found.group(1))) if found else frozenset([runs_on])


def _jobs():
    for name, doc in WORKFLOWS.items():
        for job_name, job in doc["jobs"].items():
            yield name, doc, job_name, job


def _self_hosted(job: dict) -> bool:
    return "self-hosted" in _labels(job["runs-on"])


def _writes(permissions) -> set[str]:
    if isinstance(permissions, str):
        return {"*"} if permissions == "write-all" else set()
    return {scope for scope, level in (permissions or {}).items() if level == "write"}


def test_every_workflow_and_job_declares_least_permissions():
    for name, doc in WORKFLOWS.items():
        assert "permissions" in doc, f"{name} has no top-level permissions block (the default token may write)"
        assert not _writes(doc["permissions"]), f"{name} grants write at the top level; grant it per job"
    granted = {(name, job_name): _writes(job.get("permissions")) for name, _, job_name, job in _jobs()}
    assert {k: v for k, v in granted.items() if v} == {
        ("bench.yml", "bench"): {"contents"},  # pushes the results branch
        ("bench.yml", "publish"): {"id-token", "pages"},
        ("kernel-alert.yml", "comment"): {"pull-requests"},
    }


def test_no_workflow_runs_pull_request_code_with_the_base_repositorys_rights():
    for name, doc in WORKFLOWS.items():
        assert "pull_request_target" not in _events(doc), name


def test_checkouts_do_not_keep_the_token():
    checkouts = 0
    for name, _, job_name, job in _jobs():
        for step in job.get("steps", []):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                checkouts += 1
                assert (step.get("with") or {}).get("persist-credentials") is False, f"{name}:{job_name}"
    assert checkouts >= 3


def test_pull_request_code_on_a_gpu_waits_for_approval_on_runners_of_its_own():
    untrusted, trusted = [], []
    for name, doc, job_name, job in _jobs():
        if not _self_hosted(job):
            continue
        if _events(doc) & UNTRUSTED_EVENTS:
            untrusted.append(_labels(job["runs-on"]))
            environment = job.get("environment")
            assert environment, f"{name}:{job_name} runs pull-request code on a GPU with no approval gate"
            assert not _writes(job.get("permissions")) and "permissions" in job, f"{name}:{job_name}"
        else:
            assert doc["jobs"][job_name].get("if", "").find("refs/heads/main") >= 0, f"{name}:{job_name}"
            trusted.append(_labels(job["runs-on"]))
    assert untrusted and trusted
    for pr in untrusted:
        for main in trusted:
            # a runner takes a job when it has all of the job's labels: neither runner may fit the other's jobs
            assert not pr <= main and not main <= pr, (pr, main)


def _scripts_calling_nox(job: dict) -> list[str]:
    scripts = [s["run"] for s in job.get("steps", []) if "run" in s]
    scripts += ["\n".join(job.get("script", []))] if "script" in job else []
    return [s for s in scripts if re.search(r"^\s*-?\s*nox -s ", s, re.M)]


def test_gpu_jobs_run_nox_from_a_throwaway_virtualenv():
    jobs = [job for _, _, _, job in _jobs() if _self_hosted(job)]
    jobs += [job for job in GITLAB.values() if isinstance(job, dict) and "tags" in job]
    assert len(jobs) == 4
    for job in jobs:
        for script in _scripts_calling_nox(job):
            before_nox = script[:script.index("nox -s ")]
            assert "bash .ci/throwaway-venv" in before_nox and 'export PATH="$venv/bin:$PATH"' in before_nox, script


def test_the_throwaway_virtualenv_sees_host_packages_and_keeps_installs_to_itself(tmp_path):
    pkg = tmp_path / "planted"
    (pkg / "planted").mkdir(parents=True)
    (pkg / "planted" / "__init__.py").write_text("")
    (pkg / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\nbuild-backend = '
                                        '"setuptools.build_meta"\n[project]\nname = "planted"\nversion = "0"\n')
    env = {**os.environ, "MFBENCH_HOST_PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    env.pop("RUNNER_TEMP", None)
    venv = Path(subprocess.run(["bash", str(ROOT / ".ci" / "throwaway-venv")], env=env, capture_output=True,
                               text=True, check=True, timeout=120).stdout.strip())
    python = str(venv / "bin" / "python")
    seen = subprocess.run([python, "-c", "import sys, pandas, nox; print(sys.prefix)"], capture_output=True, text=True,
                          timeout=120)
    assert seen.returncode == 0 and seen.stdout.strip() == str(venv), seen.stderr
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation", "--no-deps",
                    str(pkg)], check=True, capture_output=True, timeout=300)
    assert subprocess.run([python, "-c", "import planted"], cwd="/").returncode == 0
    host = subprocess.run([sys.executable, "-c", "import planted"], capture_output=True, cwd="/")
    assert host.returncode != 0, "the install reached the host's Python"
    assert subprocess.run([str(venv / "bin" / "nox"), "--version"], capture_output=True).returncode == 0


def _gitlab_jobs() -> dict:
    return {k: v for k, v in GITLAB.items() if isinstance(v, dict) and ("script" in v)}


def test_gitlab_merge_request_jobs_never_see_the_push_token_and_run_apart():
    jobs = _gitlab_jobs()
    alert, bench = jobs["kernel-alert"], jobs["bench"]
    variables = GITLAB["variables"]
    pr_tags = {variables[t.strip("$")] for t in alert["tags"]}
    main_tags = {variables[t.strip("$")] for t in bench["tags"]}
    assert pr_tags.isdisjoint(main_tags)
    # merge-request rules only, a fork's run started by a maintainer, in an environment that can be protected
    assert all("merge_request_event" in rule["if"] for rule in alert["rules"])
    fork = [rule for rule in alert["rules"] if "CI_MERGE_REQUEST_SOURCE_PROJECT_ID != $CI_PROJECT_ID" in rule["if"]]
    assert fork and fork[0]["when"] == "manual" and fork[0]["allow_failure"] is False
    assert alert["environment"]["name"]
    for name, job in jobs.items():
        text = "\n".join(job["script"])
        if "MFBENCH_PUSH_TOKEN}@" in text:  # the only use of the token: on pushes to the default branch
            assert name == "bench" and [r["if"] for r in job["rules"]] == [
                '$CI_PIPELINE_SOURCE == "push" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH']
    assert re.search(r"MFBENCH_PUSH_TOKEN.*\n?.*protected and\s+#?\s*masked", GITLAB_TEXT)


@pytest.mark.parametrize("token,code", [("glpat-secret", 1), ("", 0)])
def test_gitlab_merge_request_job_refuses_to_run_where_it_can_see_the_push_token(token, code):
    guard = _gitlab_jobs()["kernel-alert"]["script"][0]
    env = {**os.environ, "MFBENCH_PUSH_TOKEN": token}
    out = subprocess.run(["bash", "-c", guard], env=env, capture_output=True, text=True)
    assert out.returncode == code and ("mark it protected" in out.stderr) == bool(code)
