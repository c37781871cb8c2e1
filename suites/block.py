"""A MemoryFormer block against the dense (Pythia) block; provider 'dense' is the dense block."""

from mfbench.suite import DEVICES, DTYPE_PARAMS, PROVIDERS, SEQS

from .layer import _Metrics, _Timed

SHORT = (DEVICES, PROVIDERS, [s for s in SEQS if 512 <= s <= 8192] or SEQS[:1], DTYPE_PARAMS)


class BlockForward(_Timed):
    params, benchmark, direction = SHORT, "block", "forward"


class BlockBackward(_Timed):
    params, benchmark, direction = SHORT, "block", "backward"


class BlockForwardMetrics(_Metrics):
    params, benchmark, direction = SHORT, "block", "forward"


class BlockBackwardMetrics(_Metrics):
    params, benchmark, direction = SHORT, "block", "backward"
