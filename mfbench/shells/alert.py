"""The kernel alert: did a change make the lookup kernels slower, break them, or change their answers?

    python -m mfbench.shells.alert --base REF [--head REF] [--factor 1.1] [--report alert-report.md]

If files that a provider depends on changed between base and head (``providers.touched_by``), both
commits are checked out as git worktrees and each measures its own kernels with the kernel probe
(``mfbench.shells.kernelprobe``): one process per commit and round, every parameter set in it. On a GPU the
deciding signal is the kernels' own time (CUDA-graph replays), never the host-bound time of a call.

Rounds alternate the order (base, head, then head, base, ...). Each round gives every set one paired
log-ratio: log(median of head's samples / median of base's). After ``min_rounds`` a set is settled when
the interval mean +- z standard errors of its log-ratios lies wholly above log(factor) (regressed) or below
it (same, or improved when below -log(factor)); open sets are measured again, up to ``max_rounds``, and a
set still open then is judged by its mean. The alert stops as soon as a regression is settled.

It fails closed: a set that ran at base but fails, is skipped or gives no value at head is ``broken``, as
is a head whose probe cannot run at all; only a set the machine cannot run at either commit is left out.
It also re-scores HEAD's newest MemoryFormer snapshot through the touched exact providers (``mfbench
snapshot eval``). Exit 0: no regression; 1: regression, broken, accuracy, or nothing could be compared;
2: a usage or environment problem (bad ref, no git).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mfbench.config import settings
from mfbench.core import providers
from mfbench.shells.alert_rule import Rule, SetRecord, outcome, overall, paired_log_ratio, still_open
from mfbench.shells.asvrun import tree_pythonpath
from mfbench.shells.kernelprobe import SCHEMA as PROBE_SCHEMA
from mfbench.shells.kernelprobe import default_seqs, set_key
from mfbench.store.results import short_direction

ROOT = Path(__file__).resolve().parents[2]  # the repository: mfbench/shells/ is two levels down
KERNEL_GLOBS = providers.source_globs(plugins=False)  # the built-ins': what the workflows' path filters list
REPORT_SCHEMA = "mfbench-alert-report/1"
SCHEMA_FILE = Path(__file__).with_name("alert-report.schema.json")


class AlertError(Exception):
    """A problem with what was asked (bad ref, no git, a base without the probe); reported in one line."""


def git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(["git", *args], cwd=cwd or ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        said = (out.stderr.strip() or out.stdout.strip()).splitlines()
        raise AlertError(f"git {' '.join(args)}: {said[-1] if said else f'exit {out.returncode}'}")
    return out.stdout.strip()


def commit_of(ref: str) -> str:
    """The commit ``ref`` names; a ref that looks like an option never reaches git as one."""
    try:
        return git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    except AlertError:
        raise AlertError(f"{ref!r} names no commit in {ROOT}") from None


def changed_files(base: str, head: str, globs: tuple[str, ...] = KERNEL_GLOBS) -> list[str]:
    import fnmatch

    files = git("diff", "--name-only", f"{base}...{head}", "--").splitlines()
    return [f for f in files if any(fnmatch.fnmatch(f, g) for g in globs)]


# --- measuring ------------------------------------------------------------------------------------


# Where a tree keeps its kernel probe: since the layered folders, and before them (a base older than them).
PROBE_MODULES = ("mfbench.shells.kernelprobe", "mfbench.kernelprobe")


def probe_module(tree: Path) -> str | None:
    """The module name of ``tree``'s kernel probe, or None where it has none."""
    return next((m for m in PROBE_MODULES if (tree / (m.replace(".", "/") + ".py")).exists()), None)


def probe(tree: Path, args: list[str], out: Path, timeout_s: float) -> tuple[dict | None, str]:
    """Run ``tree``'s kernel probe with ``tree``'s own mfbench: (its report, or None, and why not). Its
    progress goes on to stderr as it comes."""
    import threading

    env = {**os.environ, "PYTHONPATH": tree_pythonpath(tree)}
    cmd = [sys.executable, "-m", probe_module(tree), *args, "--out", str(out)]
    tail: list[str] = []

    def relay(stream) -> None:
        for line in stream:
            print(line.rstrip(), file=sys.stderr, flush=True)
            tail[:] = (tail + [line.strip()])[-5:]

    try:
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        return None, f"the probe could not start: {exc}"
    reader = threading.Thread(target=relay, args=(proc.stderr,), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, f"the probe ran past {timeout_s:g} s"
    finally:
        reader.join(timeout=5)
    if code != 0 or not out.exists():
        return None, f"the probe exited {code}: " + (" | ".join(t for t in tail if t)[-300:] or "no output")
    report = json.loads(out.read_text())
    if report.get("schema") != PROBE_SCHEMA:
        return None, f"the probe writes {report.get('schema')!r}, this alert reads {PROBE_SCHEMA!r}"
    return report, ""


def record(records: dict[str, SetRecord], side: str, sets: list[dict] | None, why: str, wanted: list[str]) -> None:
    """File one probe run's sets under ``side``; a run that gave nothing marks every wanted set failed."""
    found = {set_key(s["provider"], s["direction"], s["seq"]): s for s in sets or []}
    for key in wanted:
        entry = found.get(key) or {"status": "failed", "reason": why or "the probe gave no value for this set",
                                   "method": "", "samples_s": []}
        if entry["status"] == "ok" and not entry["samples_s"]:
            entry = {**entry, "status": "failed", "reason": "no samples"}
        getattr(records[key], side).append({k: entry.get(k) for k in ("status", "reason", "method", "samples_s")})
        if entry.get("dtype"):
            records[key].dtype = entry["dtype"]


def run_rounds(trees: dict[str, Path], base: str, head: str, probe_args: list[str], keys: list[str], rule: Rule,
               work: Path, timeout_s: float) -> tuple[dict[str, SetRecord], int, str]:
    """(every set's record, the rounds run, the device the probes named)."""
    records: dict[str, SetRecord] = {}
    for key in keys:
        provider, direction, seq = key.split("/")
        records[key] = SetRecord(provider, direction, int(seq))
    wanted, done, device = list(keys), 0, ""
    for r in range(rule.max_rounds):
        order = [(base, "base"), (head, "head")] if r % 2 == 0 else [(head, "head"), (base, "base")]
        for sha, side in order:
            print(f"round {r + 1} (at least {rule.min_rounds}, at most {rule.max_rounds}): {side} {sha[:10]}, "
                  f"{len(wanted)} set(s)", file=sys.stderr, flush=True)
            out = work / f"probe-{side}-{r}.json"
            report, why = probe(trees[sha], [*probe_args, "--only", ",".join(wanted)], out, timeout_s)
            device = device or (report or {}).get("device", "")
            record(records, side, report and report["sets"], why, wanted)
        for key in wanted:
            rec = records[key]
            b, h = rec.base[-1], rec.head[-1]
            if b["status"] == h["status"] == "ok":
                rec.log_ratios.append(paired_log_ratio(b["samples_s"], h["samples_s"]))
        done = r + 1
        verdicts = {k: outcome(records[k], rule) for k in wanted}
        wanted = still_open(verdicts, done, rule)
        if not wanted:
            break
        if done >= rule.min_rounds:
            print(f"after {done} rounds, {len(wanted)} set(s) not yet clear of x{rule.factor:g}: "
                  + "; ".join(f"{k} x{verdicts[k][2].ratio:.3f}" for k in wanted[:6]), file=sys.stderr, flush=True)
    return records, done, device


# --- accuracy --------------------------------------------------------------------------------------


def accuracy_check(tree: Path, names: list[str], device: str, sequences: int | None) -> tuple[int, str]:
    """``mfbench snapshot eval`` of the tree's newest MemoryFormer snapshot through ``names``, with the
    tree's own code: (exit code, its output). Exit 0 with a note where the tree has no snapshot."""
    snaps = tree / "results" / "snapshots"
    if not any(snaps.glob("*/snapshot.json")):
        return 0, f"no snapshot committed under {snaps.relative_to(tree)}; accuracy not checked"
    args = [sys.executable, "-m", "mfbench", "snapshot", "eval", "--no-save", "--snapshots-dir", str(snaps),
            "--device", device, "--providers", ",".join([providers.reference(), *[n for n in names if n != providers.reference()]])]
    if sequences:
        args += ["--sequences", str(sequences)]
    env = {**os.environ, "PYTHONPATH": tree_pythonpath(tree)}
    result = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True)
    return result.returncode, (result.stdout + result.stderr).strip()


# --- reports ----------------------------------------------------------------------------------------


def _median_of_medians(runs: list[dict]) -> float | None:
    medians = [statistics.median(r["samples_s"]) for r in runs if r["status"] == "ok" and r["samples_s"]]
    return statistics.median(medians) if medians else None


def summary(records: dict[str, SetRecord], rule: Rule) -> list[dict]:
    rows = []
    for rec in records.values():
        verdict, reason, j = outcome(rec, rule)
        rows.append({"provider": rec.provider, "direction": rec.direction, "seq": rec.seq, "dtype": rec.dtype,
                     "method": next((r["method"] for r in rec.head + rec.base if r["method"]), ""),
                     "base_s": _median_of_medians(rec.base), "head_s": _median_of_medians(rec.head),
                     "ratio": j and j.ratio, "ratio_low": j and j.low, "ratio_high": j and j.high,
                     "settled": bool(j and j.settled), "rounds": len(rec.log_ratios), "verdict": verdict,
                     "reason": reason, "log_ratios": rec.log_ratios,
                     "samples_base_s": [r["samples_s"] for r in rec.base],
                     "samples_head_s": [r["samples_s"] for r in rec.head]})
    return rows


HEADLINES = {
    "broken": "**Broken**: a set that ran at base fails, is skipped or gives no value at head.",
    "regression": "**Regression**: a set's kernels are slower than the threshold.",
    "accuracy": "**Accuracy regression**: a provider's answers differ from reference's beyond the tolerance.",
    "unmeasured": "**Not measured**: no set could be compared at both commits, so nothing passes.",
    "pass": "No regression.",
    "no-kernel-change": "No kernel file changed; nothing to measure.",
}


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e6:.4g} us" if seconds < 1e-3 else f"{seconds * 1e3:.4g} ms"


def markdown(report: dict) -> str:
    rule = report["rule"]
    lines = [f"# mfbench kernel alert: {report['head'][:10]} vs {report['base'][:10]}", "",
             HEADLINES[report["verdict"]], "", f"Kernel files changed: {', '.join(report['files']) or '-'}"]
    if report["verdict"] != "no-kernel-change":
        lines += [f"Device: {report['device']}; providers: {', '.join(report['providers'])}. Deciding signal: "
                  "the kernels' own time per call (CUDA-graph replays on a GPU; CPU time per call on a CPU).",
                  f"Rule: a set regressed when its head/base interval (mean of {rule['min_rounds']}-"
                  f"{rule['max_rounds']} paired rounds +- {rule['z']:g} standard errors) lies above "
                  f"x{rule['factor']:g}. {report['rounds']} round(s) in {report['seconds']:.0f} s.", "",
                  "| provider | dir | tokens | base | head | head/base [interval] | rounds | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        first = {"broken": 0, "regressed": 1}
        for r in sorted(report["sets"], key=lambda r: (first.get(r["verdict"], 2), -(r["ratio"] or 0))):
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f} [{r['ratio_low']:.3f}-{r['ratio_high']:.3f}]"
            verdict = r["verdict"] if r["verdict"] not in ("broken", "regressed") else f"**{r['verdict']}**"
            verdict += f": {r['reason']}" if r["reason"] else ""
            lines.append(f"| {r['provider']} | {short_direction(r['direction'])} | {r['seq']} | {_time(r['base_s'])} | "
                         f"{_time(r['head_s'])} | {ratio} | {r['rounds']} | {verdict.replace('|', '/')} |")
        accuracy = report["accuracy"]
        lines += ["", f"## Accuracy at {report['head'][:10]}", "",
                  ("Not checked." if not accuracy["checked"] else "Every provider agrees with reference."
                   if accuracy["exit_code"] == 0 else f"**Failed** (snapshot eval exit {accuracy['exit_code']})."),
                  "", "```", accuracy["output"], "```"]
    return "\n".join(lines) + "\n"


def write_reports(report: dict, md: Path, js: Path) -> None:
    for path, text in ((md, markdown(report)), (js, json.dumps(report, indent=1, allow_nan=False))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# --- the alert ---------------------------------------------------------------------------------------


@dataclass
class Options:
    base: str
    head: str = "HEAD"
    rule: Rule = Rule()
    providers: list[str] | None = None  # default: those the changed files touch
    directions: str = "forward,backward"
    seqs: str | None = None
    preset: str = "tiny"
    device: str | None = None
    report: Path = Path("alert-report.md")
    json_report: Path | None = None
    accuracy: bool = True
    accuracy_sequences: int | None = None
    probe_timeout_s: float = 600.0
    probes_dir: Path | None = None  # keep every probe run's JSON here


def alert(opts: Options) -> int:
    started = time.monotonic()
    base, head = commit_of(opts.base), commit_of(opts.head)
    files = changed_files(base, head, providers.source_globs())  # plugins registered since import included
    js = opts.json_report or opts.report.with_suffix(".json")
    report = {"schema": REPORT_SCHEMA, "base": base, "head": head, "files": files, "rule": asdict(opts.rule),
              "device": "", "providers": [], "rounds": 0, "seconds": 0.0, "sets": [],
              "accuracy": {"checked": False, "exit_code": 0, "output": ""}}
    if not files:
        report.update(verdict="no-kernel-change", exit_code=0)
        write_reports(report, opts.report, js)
        print(markdown(report))
        return 0
    names = opts.providers or [n for n in providers.touched_by(files) if providers.one_process(n)]
    device = opts.device or _default_device()
    probe_args = ["--device", device, "--providers", ",".join(names), "--directions", opts.directions,
                  "--preset", opts.preset, *(["--seqs", opts.seqs] if opts.seqs else [])]
    print(f"kernel files changed: {', '.join(files)}; measuring {', '.join(names)} on {device}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="mfbench-alert-"))
    trees = {sha: work / f"tree-{side}" for sha, side in ((base, "base"), (head, "head"))}
    try:
        for sha, tree in trees.items():
            git("worktree", "add", "--detach", str(tree), sha)
            if probe_module(tree) is None:
                raise AlertError(f"{sha[:10]} has no kernel probe (mfbench/shells/kernelprobe.py): compare with a base "
                                 "that has one")
        keys = _keys(names, opts.directions, opts.seqs, device)
        records, rounds, measured_on = run_rounds(trees, base, head, probe_args, keys, opts.rule, work,
                                                  opts.probe_timeout_s)
        if opts.probes_dir:
            opts.probes_dir.mkdir(parents=True, exist_ok=True)
            for path in work.glob("probe-*.json"):
                shutil.copy2(path, opts.probes_dir / path.name)
        if opts.accuracy:
            print("checking the snapshot's accuracy through the touched providers ...", file=sys.stderr, flush=True)
            exact = [n for n in names if n in providers.names(exact_only=True)]
            code, text = accuracy_check(trees[head], exact, device, opts.accuracy_sequences)
            report["accuracy"] = {"checked": True, "exit_code": code, "output": text[-4000:]}
        else:
            report["accuracy"]["output"] = "not checked (--no-accuracy)"
    finally:
        for tree in trees.values():
            if tree.exists():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
    rows = summary(records, opts.rule)
    verdict = overall(rows, report["accuracy"]["exit_code"])
    report.update(device=measured_on, providers=names, rounds=rounds, seconds=time.monotonic() - started,
                  sets=rows, verdict=verdict, exit_code=0 if verdict == "pass" else 1)
    write_reports(report, opts.report, js)
    shutil.rmtree(work, ignore_errors=True)
    print(markdown(report))
    print(f"alert: {verdict}; reports in {opts.report} and {js}", file=sys.stderr)
    return report["exit_code"]


def _keys(names: list[str], directions: str, seqs: str | None, device: str) -> list[str]:
    """Every set the alert measures, named as the probe names them."""
    lengths = [int(s) for s in (seqs.split(",") if seqs else default_seqs(device))]
    return [set_key(p, d, s) for d in directions.split(",") for s in lengths for p in names]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    env = settings()
    parser = argparse.ArgumentParser(prog="python -m mfbench.shells.alert", description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare with (e.g. the merge base)")
    parser.add_argument("--head", default="HEAD")
    parser.add_argument("--factor", type=float, default=1.1, help="slowdown ratio that counts (default 1.1)")
    parser.add_argument("--min-rounds", type=int, default=env.alert_rounds,
                        help="base/head process pairs at least (default $MFBENCH_ALERT_ROUNDS or 2)")
    parser.add_argument("--max-rounds", type=int, default=env.alert_max_rounds,
                        help="at most, while a set is not clear of the threshold (default $MFBENCH_ALERT_MAX_ROUNDS or 6)")
    parser.add_argument("--providers", default=env.alert_providers,
                        help="comma-separated (default $MFBENCH_ALERT_PROVIDERS, else those the changed files touch)")
    parser.add_argument("--directions", default=env.alert_directions)
    parser.add_argument("--seqs", default=env.alert_seqs,
                        help="token counts (default $MFBENCH_ALERT_SEQS, else 2048,8192,32768 on a GPU, 128,512 on a CPU)")
    parser.add_argument("--preset", default=env.alert_preset)
    parser.add_argument("--device", default=env.alert_device)
    parser.add_argument("--report", type=Path, default=Path("alert-report.md"))
    parser.add_argument("--json", type=Path, default=None, help="the JSON report (default: --report with .json)")
    parser.add_argument("--no-accuracy", action="store_true", default=not env.alert_accuracy,
                        help="skip the snapshot's accuracy check (or MFBENCH_ALERT_ACCURACY=0)")
    parser.add_argument("--probes-dir", type=Path, default=None, help="keep every probe run's samples (JSON) here")
    parser.add_argument("--accuracy-sequences", type=int, default=env.alert_accuracy_sequences,
                        help="evaluation sequences for the accuracy check (default: the snapshot's own)")
    args = parser.parse_args(argv)
    try:
        if not 1 <= args.min_rounds <= args.max_rounds:
            raise AlertError(f"rounds: need 1 <= --min-rounds ({args.min_rounds}) <= --max-rounds ({args.max_rounds})")
        if not args.factor > 1:
            raise AlertError(f"--factor must be above 1, got {args.factor:g}")
        names = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
        for name in names or []:
            try:
                providers.get(name)
            except ValueError as exc:
                raise AlertError(str(exc)) from None
        rule = Rule(args.factor, min_rounds=args.min_rounds, max_rounds=args.max_rounds)
        return alert(Options(args.base, args.head, rule, names, args.directions, args.seqs, args.preset, args.device,
                             args.report, args.json, not args.no_accuracy, args.accuracy_sequences,
                             probes_dir=args.probes_dir))
    except AlertError as exc:
        print(f"mfbench alert: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
