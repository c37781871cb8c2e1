"""A MemoryFormer block against the dense (Pythia) block; provider 'dense' is the dense block."""

from mfbench.suite import DEVICES, DTYPE_PARAMS, PARAM_NAMES, PROVIDERS, SEQS, Prepared

SHORT_SEQS = [s for s in SEQS if s <= 8192]


class _Block:
    params = (DEVICES, PROVIDERS, SHORT_SEQS, DTYPE_PARAMS)
    param_names = PARAM_NAMES
    timeout = 900
    benchmark = "block"
    direction = "forward"

    def setup(self, device, provider, seq, dtype):
        self.case = Prepared(self.benchmark, self.direction, device, provider, seq, dtype)
        self.case.prepare_call()

    def time_call(self, *params):
        self.case.call()

    def peakmem_call(self, *params):
        self.case.call()

    def track_flops(self, *params):
        return self.case.metric("flops_analytic")

    track_flops.unit = "FLOP"

    def track_energy_per_token(self, *params):
        return self.case.metric("energy_per_token")

    track_energy_per_token.unit = "J/token"


class BlockForward(_Block):
    direction = "forward"


class BlockBackward(_Block):
    direction = "backward"
