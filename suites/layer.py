"""One Memory Layer (d -> d, d from the preset) against the nn.Linear it replaces."""

from mfbench.suite import PARAM_NAMES, PARAMS, Prepared


class _Layer:
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 900
    direction = "forward"

    def setup(self, device, provider, seq, dtype):
        self.case = Prepared("layer", self.direction, device, provider, seq, dtype)
        self.case.prepare_call()

    def time_call(self, *params):
        self.case.call()

    def peakmem_call(self, *params):
        self.case.call()

    def track_median_time(self, *params):
        return self.case.metric("time")

    track_median_time.unit = "seconds"

    def track_flops(self, *params):
        return self.case.metric("flops_analytic")

    track_flops.unit = "FLOP"

    def track_bandwidth(self, *params):
        return self.case.metric("achieved_bandwidth") / 1e9

    track_bandwidth.unit = "GB/s"

    def track_pct_of_roofline(self, *params):
        return self.case.metric("pct_of_roofline")

    track_pct_of_roofline.unit = "%"

    def track_energy_per_token(self, *params):
        return self.case.metric("energy_per_token")

    track_energy_per_token.unit = "J/token"

    def track_peak_memory(self, *params):
        return self.case.metric("peak_memory")

    track_peak_memory.unit = "bytes"


class LayerForward(_Layer):
    direction = "forward"


class LayerBackward(_Layer):
    direction = "backward"
