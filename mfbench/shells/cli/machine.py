"""The commands about the machine and the model on paper: ``info`` (this machine's fingerprint) and
``flops`` (the paper's Table 1 recomputed)."""

from __future__ import annotations

import argparse

import pandas as pd

from mfbench.core import providers
from mfbench.cost import flops
from mfbench.instruments.fingerprint import fingerprint, git_commit
from mfbench.shells.cli import common


def cmd_info(args: argparse.Namespace) -> int:
    info = fingerprint(common.default_device())
    commit, dirty = git_commit()
    info.update(commit=commit + ("+dirty" if dirty else ""))
    if info["gpu"] is None:
        info["gpu"] = "none visible to torch"
    for key, value in info.items():
        print(f"{key:>15}: {value if value is not None else '-'}")
    print(f"{'providers':>15}: " + ", ".join(providers.names()))
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    table = flops.table1(args.seq)
    shown = pd.DataFrame({
        "model": table["model"],
        "d": table["d"],
        "K": table["K"].astype("string").fillna("-"),
        "w/o attn (G)": (table["flops_wo_attn"] / 1e9).round(2),
        "paper w/o attn": table["paper_flops_wo_attn"] / 1e9,
        "total (G)": (table["flops_total"] / 1e9).round(2),
        "paper total": table["paper_flops_total"] / 1e9,
        "exact total (G)": (table["flops_total_exact"] / 1e9).round(2),
        "agrees": table["agrees_with_print"].map({True: "yes", False: "NO"}),
    })
    print(f"Per block, s={args.seq}, paper convention ({flops.CONVENTIONS['paper']}).")
    if args.seq != 2048:
        print("The paper's printed figures are for s=2048; the 'agrees' column compares against them.")
    common.print_frame(shown)
    for row in table[~table["agrees_with_print"]].itertuples():
        print(f"note: {row.model}: {row.note} (formula {row.flops_wo_attn / 1e9:.3f}G w/o attn, "
              f"printed {row.paper_flops_wo_attn / 1e9:.1f}G)")
    return 0
