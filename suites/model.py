"""Whole language models: a forward pass and one AdamW training step, MemoryFormer vs dense."""

from mfbench.suite import Prepared
from suites.block import _Block


class ModelForward(_Block):
    benchmark = "model"
    direction = "forward"


class TrainStep:
    params = ModelForward.params
    param_names = ModelForward.param_names
    timeout = 900

    def setup(self, device, provider, seq, dtype):
        self.case = Prepared("model", "train", device, provider, seq, dtype)
        self.case.prepare_call()

    def time_step(self, *params):
        self.case.call()

    def peakmem_step(self, *params):
        self.case.call()
