"""mfbench.config: every MFBENCH_* variable read in one place, when asked, never raising, never written."""

import os
import re
import subprocess
import sys
from pathlib import Path

from mfbench import config

ROOT = Path(__file__).resolve().parents[1]


def test_values_that_cannot_be_used_keep_their_defaults_and_say_why():
    got = config.settings({"MFBENCH_ASV_TIMER": "sundial", "MFBENCH_ASV_SEQS": "64,x", "MFBENCH_CALL_BUDGET_S": "-1",
                           "MFBENCH_CEILINGS_MAX_AGE_DAYS": "soon", "MFBENCH_ALERT_ROUNDS": "two"})
    assert got.asv_timer == "wall" and got.asv_seqs == () and got.call_budget_s is None
    assert got.ceilings_max_age_days is None and got.alert_rounds == 2
    assert any("MFBENCH_ASV_TIMER" in p for p in got.problems) and any("MFBENCH_ASV_SEQS" in p for p in got.problems)


def test_lists_and_switches_read_as_documented():
    got = config.settings({"MFBENCH_ASV_DEVICES": "cpu, cuda:1", "MFBENCH_ASV_SEQS": "64,128", "MFBENCH_DIRTY": "1",
                           "MFBENCH_COMMIT": "abc", "MFBENCH_ALERT_ACCURACY": "0", "MFBENCH_SKIP_COMPILE": "1"})
    assert got.asv_devices == ("cpu", "cuda:1") and got.asv_seqs == (64, 128)
    assert (got.commit, got.dirty) == ("abc", True) and not got.alert_accuracy and got.skip_compile
    assert config.settings({}).asv_tasks == ("mqar",)


def test_the_package_reads_mfbench_variables_only_through_config():
    readers = []
    for path in (ROOT / "mfbench").rglob("*.py"):
        if path.name == "config.py":
            continue
        for line in path.read_text().splitlines():
            if re.search(r"environ(\.get)?\W+[\"']MFBENCH_", line):
                readers.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not readers, readers


def test_importing_every_module_leaves_the_environment_alone():
    """No import raises on a bad value, and none writes os.environ (TRITON_CACHE_DIR included): entry
    points choose cache directories."""
    code = ("import os, pkgutil, importlib, mfbench\n"
            "before = dict(os.environ)\n"
            "for m in pkgutil.walk_packages(mfbench.__path__, 'mfbench.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n"
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_CACHE_DIR"}
    env.update(MFBENCH_ASV_TIMER="sundial", MFBENCH_ASV_SEQS="x", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
