"""A MemoryFormer block against the dense (Pythia) block; provider 'dense' is the dense block."""

from mfbench.shells.suite import BLOCK_PARAMS

from .layer import _Metrics, _Timed


class BlockForward(_Timed):
    params, benchmark, direction = BLOCK_PARAMS, "block", "forward"


class BlockBackward(_Timed):
    params, benchmark, direction = BLOCK_PARAMS, "block", "backward"


class BlockForwardMetrics(_Metrics):
    params, benchmark, direction = BLOCK_PARAMS, "block", "forward"

    def setup_cache(self):
        return self.measure()


class BlockBackwardMetrics(_Metrics):
    params, benchmark, direction = BLOCK_PARAMS, "block", "backward"

    def setup_cache(self):
        return self.measure()
