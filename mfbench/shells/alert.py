"""The kernel alert: did a change make the lookup kernels slower, do more work per call, break them, or
change their answers?

    python -m mfbench.shells.alert --base REF [--head REF] [--factor 1.1] [--fail-on slower] [--report alert-report.md]

If files that a provider depends on differ between base and head (``providers.touched_by``; the two trees
compared directly, whichever commit is older), both commits are checked out as git worktrees and each
measures its own kernels with the kernel probe (``mfbench.shells.kernelprobe``): one process per commit and
round, every parameter set in it, decode sets (1 and 8 tokens per call at d = h = 2048) included. ``--head
HEAD`` (the default) with uncommitted changes measures the working tree as it is, as a temporary commit,
and the report says so. On a GPU the deciding signal is the kernels' own time (CUDA-graph replays); the
eager call's time is judged beside it at its own wider factor, and the first round counts per call the
kernels launched, host-device synchronisations and device bytes allocated (and torch ops, also on a CPU):
any increase is named and fails by default, and a GPU set whose counts cannot be taken is broken.

Rounds alternate the order (base, head, then head, base, ...) and give every set one paired log-ratio a
round; ``alert_rule`` turns them into same / slower / faster / regressed / improved / unsettled. It fails
closed: a set that ran at base but fails, is skipped or gives no value at head is ``broken``, as is a head
whose probe cannot run at all; only a set the machine cannot run at either commit is left out. It also
re-scores HEAD's newest MemoryFormer snapshot through the touched exact providers (``mfbench snapshot
eval``). Exit 0: no failure; 1: regression (or --fail-on slower and a certain slowdown), a set left unsettled with
its mean above the factor, a per-call count increase, an eager regression, broken, accuracy, or nothing
compared; 2: a usage or environment problem
(bad ref or option, no git, an unwritable report), one line. Temporary checkouts are removed on every path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mfbench.config import settings
from mfbench.core import providers
from mfbench.shells.alert_git import (ROOT, AlertError, add_worktree, changed_files, check_repository, commit_of,
                                      remove_worktrees, resolve_head)
from mfbench.shells.alert_report import REPORT_SCHEMA, SCHEMA_FILE, markdown, summary, write_reports
from mfbench.shells.alert_rule import Rule, SetRecord, outcome, overall, paired_log_ratio, still_open
from mfbench.shells.asvrun import tree_pythonpath
from mfbench.shells.kernelprobe import DIRECTIONS, SCHEMA as PROBE_SCHEMA
from mfbench.shells.kernelprobe import default_sets, parse_key, parse_sets, set_key, wanted_sets

KERNEL_GLOBS = providers.source_globs(plugins=False)  # the built-ins': what the workflows' path filters list
__all__ = ["ROOT", "AlertError", "REPORT_SCHEMA", "SCHEMA_FILE", "KERNEL_GLOBS", "alert", "main", "summary",
           "markdown", "write_reports", "changed_files"]


# --- measuring ------------------------------------------------------------------------------------


PROBE_FILE = "mfbench/shells/kernelprobe.py"


def check_probe(tree: Path, sha: str) -> None:
    """Raise where ``sha``'s kernel probe is missing or older than this alert's (it would give no counts)."""
    path = tree / PROBE_FILE
    if not path.exists() or f'"{PROBE_SCHEMA}"' not in path.read_text():
        raise AlertError(f"{sha[:10]} has no {PROBE_SCHEMA} kernel probe ({PROBE_FILE}, with per-call counts): "
                         "compare with a base that has one")


def probe(tree: Path, args: list[str], out: Path, timeout_s: float) -> tuple[dict | None, str]:
    """Run ``tree``'s kernel probe with ``tree``'s own mfbench: (its report, or None, and why not). Its
    progress goes on to stderr as it comes."""
    import threading

    env = {**os.environ, "PYTHONPATH": tree_pythonpath(tree)}
    cmd = [sys.executable, "-m", "mfbench.shells.kernelprobe", *args, "--out", str(out)]
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
    found = {set_key(s["provider"], s["direction"], s["seq"], s.get("width")): s for s in sets or []}
    for key in wanted:
        entry = found.get(key) or {"status": "failed", "reason": why or "the probe gave no value for this set",
                                   "method": "", "samples_s": []}
        if entry["status"] == "ok" and not entry["samples_s"]:
            entry = {**entry, "status": "failed", "reason": "no samples"}
        fields = ("status", "reason", "method", "samples_s", "eager_s", "counts", "counts_reason")
        getattr(records[key], side).append({k: entry.get(k) for k in fields})
        if entry.get("dtype"):
            records[key].dtype = entry["dtype"]


def run_rounds(trees: dict[str, Path], base: str, head: str, probe_args: list[str], keys: list[str], rule: Rule,
               work: Path, timeout_s: float) -> tuple[dict[str, SetRecord], int, str]:
    """(every set's record, the rounds run, the device the probes named)."""
    records: dict[str, SetRecord] = {}
    for key in keys:
        records[key] = SetRecord(*parse_key(key))
    wanted, done, device = list(keys), 0, ""
    for r in range(rule.max_rounds):
        order = [(base, "base"), (head, "head")] if r % 2 == 0 else [(head, "head"), (base, "base")]
        for sha, side in order:
            print(f"round {r + 1} (at least {rule.min_rounds}, at most {rule.max_rounds}): {side} {sha[:10]}, "
                  f"{len(wanted)} set(s)", file=sys.stderr, flush=True)
            out = work / f"probe-{side}-{r}.json"
            counts = ["--counts"] if r == 0 else []  # deterministic: once per commit
            report, why = probe(trees[sha], [*probe_args, *counts, "--only", ",".join(wanted)], out, timeout_s)
            device = device or (report or {}).get("device", "")
            record(records, side, report and report["sets"], why, wanted)
        for key in wanted:
            rec = records[key]
            b, h = rec.base[-1], rec.head[-1]
            if b["status"] == h["status"] == "ok":
                rec.log_ratios.append(paired_log_ratio(b["samples_s"], h["samples_s"]))
                if b.get("eager_s") and h.get("eager_s"):
                    rec.eager_log_ratios.append(paired_log_ratio(b["eager_s"], h["eager_s"]))
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
    check_repository()
    base, (head, uncommitted) = commit_of(opts.base), resolve_head(opts.head)
    files = changed_files(base, head, providers.source_globs())  # plugins registered since import included
    js = opts.json_report or opts.report.with_suffix(".json")
    report = {"schema": REPORT_SCHEMA, "base": base, "head": head, "head_ref": opts.head,
              "head_uncommitted": uncommitted, "files": files, "rule": asdict(opts.rule), "device": "",
              "providers": [], "rounds": 0, "seconds": 0.0, "sets": [],
              "accuracy": {"checked": False, "exit_code": 0, "output": ""}}
    if uncommitted:
        print(f"measuring the working tree as it is ({len(uncommitted)} uncommitted file(s)) as head, the temporary "
              f"commit {head[:10]} on top of {opts.head}", file=sys.stderr)
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
            add_worktree(tree, sha)
            check_probe(tree, sha)
        sets = parse_sets(opts.seqs) if opts.seqs else default_sets(device)
        keys = wanted_sets(names, opts.directions.split(","), sets)
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
        remove_worktrees(list(trees.values()))
        shutil.rmtree(work, ignore_errors=True)
    rows = summary(records, opts.rule)
    verdict = overall(rows, report["accuracy"]["exit_code"], opts.rule)
    report.update(device=measured_on, providers=names, rounds=rounds, seconds=time.monotonic() - started,
                  sets=rows, verdict=verdict, exit_code=0 if verdict == "pass" else 1)
    write_reports(report, opts.report, js)
    print(markdown(report))
    print(f"alert: {verdict}; reports in {opts.report} and {js}", file=sys.stderr)
    return report["exit_code"]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def writable(path: Path) -> None:
    """Raise unless a report can be written at ``path`` (checked before anything is measured)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder if not path.exists() else path, os.W_OK):
        raise AlertError(f"cannot write the report {path}: " + ("it is a directory" if path.is_dir() else
                                                                 "not writable"))


def checked_options(args: argparse.Namespace) -> Options:
    """The options, every one checked before a worktree or a probe exists."""
    from mfbench.core.model import ModelConfig

    rounds = []
    for flag, value in (("--min-rounds", args.min_rounds), ("--max-rounds", args.max_rounds)):
        try:
            rounds.append(int(value))
        except ValueError:
            raise AlertError(f"{flag} takes a whole number, got {value!r}") from None
    if not 1 <= rounds[0] <= rounds[1]:
        raise AlertError(f"rounds: need 1 <= --min-rounds ({rounds[0]}) <= --max-rounds ({rounds[1]})")
    for flag, value in (("--factor", args.factor), ("--eager-factor", args.eager_factor)):
        if not value > 1:
            raise AlertError(f"{flag} must be above 1, got {value:g}")
    names = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    try:
        for name in names or []:
            providers.get(name)
        directions = [d.strip() for d in args.directions.split(",") if d.strip()]
        if not directions or not set(directions) <= set(DIRECTIONS):
            raise ValueError(f"--directions (or MFBENCH_ALERT_DIRECTIONS) takes {', '.join(DIRECTIONS)}, "
                             f"got {args.directions!r}")
        try:
            sets = parse_sets(args.seqs) if args.seqs is not None else []
        except ValueError as exc:
            raise ValueError(f"--seqs (or MFBENCH_ALERT_SEQS): {exc}") from None
        for width in {None, *(w for _, w in sets)}:
            ModelConfig.preset(args.preset, **({"d_model": width} if width else {}))
        if args.device is not None:
            _check_device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise AlertError(str(exc)) from None
    if args.accuracy_sequences is not None and args.accuracy_sequences < 1:
        raise AlertError(f"--accuracy-sequences takes a positive number, got {args.accuracy_sequences}")
    for path in (args.report, args.json or args.report.with_suffix(".json")):
        writable(path)
    rule = Rule(args.factor, min_rounds=rounds[0], max_rounds=rounds[1], fail_on=args.fail_on,
                eager_factor=args.eager_factor, counts=args.counts)
    return Options(args.base, args.head, rule, names, ",".join(directions), args.seqs, args.preset, args.device,
                   args.report, args.json, not args.no_accuracy, args.accuracy_sequences, probes_dir=args.probes_dir)


def _check_device(name: str) -> None:
    import torch

    device = torch.device(name)  # raises RuntimeError on a name torch does not know
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is visible to torch")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device takes cpu or cuda, got {name!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other usage error of the alert
        raise AlertError(message)


def _parser() -> argparse.ArgumentParser:
    env = settings()
    parser = _Parser(prog="python -m mfbench.shells.alert", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--base", required=True, help="the commit to compare with (e.g. the merge base)")
    add("--head", default="HEAD", help="default HEAD: with uncommitted changes, the working tree as it is")
    add("--factor", type=float, default=1.1, help="slowdown ratio that counts (default 1.1)")
    add("--fail-on", choices=("regressed", "slower"), default="regressed",
        help="slower: a certain slowdown below --factor fails too (default: regressed only)")
    add("--eager-factor", type=float, default=1.25, help="the eager call's threshold (default 1.25)")
    add("--counts", choices=("fail", "report"), default="fail",
        help="an increase of a per-call count (kernels, syncs, bytes, ops): fail (default) or only report it")
    add("--min-rounds", default=env.alert_rounds, help="base/head process pairs at least (default $MFBENCH_ALERT_ROUNDS or 2)")
    add("--max-rounds", default=env.alert_max_rounds,
        help="at most, while a set is not clear of the threshold (default $MFBENCH_ALERT_MAX_ROUNDS or 6)")
    add("--providers", default=env.alert_providers,
        help="comma-separated (default $MFBENCH_ALERT_PROVIDERS, else those the changed files touch)")
    add("--directions", default=env.alert_directions)
    add("--seqs", default=env.alert_seqs, help="token counts, TOKENS@WIDTH for a decode set (default "
        "$MFBENCH_ALERT_SEQS, else 1@2048,8@2048,2048,8192,32768 on a GPU, 1@2048,8@2048,128,512 on a CPU)")
    add("--preset", default=env.alert_preset)
    add("--device", default=env.alert_device)
    add("--report", type=Path, default=Path("alert-report.md"))
    add("--json", type=Path, default=None, help="the JSON report (default: --report with .json)")
    add("--no-accuracy", action="store_true", default=not env.alert_accuracy,
        help="skip the snapshot's accuracy check (or MFBENCH_ALERT_ACCURACY=0)")
    add("--probes-dir", type=Path, default=None, help="keep every probe run's samples (JSON) here")
    add("--accuracy-sequences", type=int, default=env.alert_accuracy_sequences,
        help="evaluation sequences for the accuracy check (default: the snapshot's own)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        wrong = [p for p in settings().problems if p.startswith("MFBENCH_ALERT_")]
        if wrong:
            raise AlertError(wrong[0])
        args = _parser().parse_args(argv)
        opts = checked_options(args)
        return alert(opts)
    except AlertError as exc:
        print(f"mfbench alert: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
