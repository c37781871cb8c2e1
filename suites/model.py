"""Whole language models, MemoryFormer vs dense: a forward pass and one AdamW training step."""

from mfbench.shells.suite import MODEL_PARAMS

from .layer import _Metrics, _Timed


class ModelForward(_Timed):
    params, benchmark, direction = MODEL_PARAMS, "model", "forward"


class ModelForwardMetrics(_Metrics):
    params, benchmark, direction = MODEL_PARAMS, "model", "forward"

    def setup_cache(self):
        return self.measure()


class TrainStep(_Timed):
    """One optimiser step: forward, backward, AdamW update."""

    params, benchmark, direction = MODEL_PARAMS, "model", "train"
