"""The fewest bytes and operations a Memory Layer (or its dense twin) must move and do, and the floor
time those imply on a machine's measured ceilings.

Lookup providers: the table rows the tokens pick, x and y once each through device memory, plus the gather
itself on chip (tokens x K rows of width out, read from on-chip memory). A table's rows are read at most
once: fewer tokens than a table's 2^tau rows (decoding: B tokens a step) read at most tokens rows of each
table, more read the whole table. The hash reads x, already counted; a kernel that hashes and gathers in
one launch keeps the codes on chip, so they are not device-memory bytes. Backward: tables, x and dL/dy read once, dL/dx
and the table gradient written once; on chip, each token's rows are read (input gradient) and written
(table gradient). The dense layer: weight, x and y once each, and 2 FLOPs per multiply-add.
"""

from __future__ import annotations

from dataclasses import dataclass

from mfbench.cost import flops
from mfbench.instruments.ceilings import Ceilings

DIRECTIONS = ("forward", "backward")


@dataclass(frozen=True)
class Traffic:
    hbm_bytes: int
    onchip_bytes: int
    flops: int  # 2 per multiply-add

    @property
    def intensity(self) -> float:
        """FLOPs per byte of device memory traffic, the roofline's x axis."""
        return self.flops / self.hbm_bytes


def layer_traffic(tokens: int, in_features: int, out_features: int, tau: int, elem_bytes: int,
                  direction: str = "forward", dense: bool = False) -> Traffic:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    x, y = tokens * in_features * elem_bytes, tokens * out_features * elem_bytes
    backward = direction == "backward"
    if dense:
        w = in_features * out_features * elem_bytes
        mac = flops.linear(tokens, in_features, out_features).flops("2mac")
        if backward:  # dL/dx = dL/dy W and dL/dW = dL/dy^T x
            return Traffic(2 * w + 2 * x + y, 0, 2 * mac)
        return Traffic(w + x + y, 0, mac)
    k = in_features // tau
    tables = k * 2**tau * out_features * elem_bytes
    rows = k * min(tokens, 2**tau) * out_features * elem_bytes
    gather = tokens * k * out_features * elem_bytes
    ops = flops.memory_layer(tokens, in_features, out_features, tau).flops("2mac")
    if backward:
        return Traffic(2 * tables + 2 * x + y, 2 * gather, 2 * ops)
    return Traffic(rows + x + y, gather, ops)


def decode_step_traffic(architecture: str, cfg, batch: int, cache: int, elem_bytes: int) -> Traffic:
    """One generation step of a whole LM (``core.model``), ``batch`` sequences of one new token each after
    ``cache`` past ones: every block's layers (``layer_traffic`` at ``batch`` tokens), the key/value cache
    read (and the new position written), the token embeddings and the dense LM head."""
    d, tau, k = cfg.d_model, cfg.tau, cfg.num_chunks
    if architecture == "memoryformer":
        wide = (tau + 2) * k
        shapes = ((d, 3 * d, tau), (d, wide, tau), (wide, d, tau + 2))
    elif architecture == "dense":
        shapes = ((d, 3 * d, tau), (d, d, tau), (d, 4 * d, tau), (4 * d, d, tau))
    else:
        raise ValueError(f"unknown architecture {architecture!r}; choose 'memoryformer' or 'dense'")
    layers = [layer_traffic(batch, i, o, t, elem_bytes, dense=architecture == "dense") for i, o, t in shapes]
    kv = 2 * batch * (cache + 1) * d * elem_bytes
    head = layer_traffic(batch, d, cfg.vocab_size, tau, elem_bytes, dense=True)
    ops = flops.model(architecture, 1, cfg, past=cache).flops("2mac") * batch
    per_block = sum(t.hbm_bytes for t in layers) + kv
    return Traffic(cfg.n_layer * per_block + batch * d * elem_bytes + head.hbm_bytes,
                   cfg.n_layer * sum(t.onchip_bytes for t in layers), ops)


def floor_seconds(traffic: Traffic, ceilings: Ceilings) -> tuple[float, str]:
    """(floor time, which ceiling sets it): the largest of bytes/copy bandwidth ("hbm" on a GPU, "dram" on a
    CPU: the device memory of the machine measured), on-chip bytes/on-chip bandwidth (where known) and
    FLOPs/matmul rate."""
    memory = "dram" if ceilings.device.startswith("cpu") else "hbm"
    terms = {memory: traffic.hbm_bytes / ceilings.copy_bytes_per_s,
             "compute": traffic.flops / ceilings.matmul_flops_per_s}
    if ceilings.onchip_bytes_per_s:
        terms["onchip"] = traffic.onchip_bytes / ceilings.onchip_bytes_per_s
    bound = max(terms, key=terms.get)
    return terms[bound], bound
