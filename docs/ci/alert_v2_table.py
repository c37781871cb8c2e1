"""The "v2 on the H200" table of docs/alerts.md from the whole alerts that docs/ci/gpu_alert.py recorded:

    python docs/ci/alert_v2_table.py results/alert/h200-v2.json

Graph verdicts as the alerts gave them; each eager interval judged again by the current rule
(``alert_rule.judge`` at the eager factor) from its recorded log-ratios.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mfbench.shells import alert_rule  # noqa: E402

HEADS = {"unchanged": "comment added to the kernel file", "launch": "planted extra launch per call",
         "slow8": "planted slowdown (5% of the gather kernel's tables twice)", "slow8-fail": "the same, `--fail-on slower`"}


def set_text(s: dict, rule: alert_rule.Rule) -> str:
    eager = alert_rule.judge(s["eager"]["log_ratios"], rule, rule.eager_factor)
    counts = "".join(f", {k} {b:g}->{h:g}" for k, (b, h) in s["count_increases"].items() if k in ("kernels", "syncs"))
    where = f"{s['seq']}@{s['width']}" if s["width"] else f"{s['seq']}"
    return (f"{where}: {s['verdict']} x{s['ratio']:.3f} [{s['ratio_low']:.3f}-{s['ratio_high']:.3f}]; "
            f"eager x{eager.ratio:.2f} {eager.verdict}{counts}")


def main(path: str) -> None:
    record, rule = json.loads(Path(path).read_text()), alert_rule.Rule()
    print("| head | run | exit (answer) | as expected | whole alert, s | rounds | sets: graph verdict; eager at x1.25; "
          "count increases |\n|---|---|---|---|---|---|---|")
    for head, name in HEADS.items():
        runs = [a for a in record["alerts"] if a["head"] == head]
        for n, a in enumerate(runs, 1):
            rep = a["report"]
            print(f"| {name} | {n} | {a['exit_code']} ({rep['verdict']}) | {'yes' if a['met'] else 'NO'} | {a['wall_s']:.0f} "
                  f"| {rep['rounds']} | {'<br>'.join(set_text(s, rule) for s in rep['sets'])} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/alert/h200-v2.json")
