"""One Memory Layer (d -> d, d from the preset) against the nn.Linear it replaces (provider 'dense')."""

from mfbench.shells.suite import PARAM_NAMES, PARAMS, TIMER, Prepared, measure_all


class _Timed:
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 900
    # Bounded sampling (asv's defaults allow 20 s and two rounds per parameter set): the default GPU
    # matrix has to fit `nox -s bench` into 10 minutes. The runner's own do_bench median is tracked too.
    repeat = (2, 10, 0.5)
    rounds = 1
    warmup_time = 0.1
    timer = TIMER
    benchmark, direction = "layer", "forward"

    def setup(self, device, provider, seq, dtype):
        self.case = Prepared(self.benchmark, self.direction, device, provider, seq, dtype)
        self.case.prepare_call()  # build, compile, autotune, warm up: none of it is timed

    def time_call(self, *params):
        """One call and a device sync, host included: what a user's loop pays. On a GPU the host's issue
        time can be most of it, so kernel alerts decide on the kernels' own time (track_kernel_time here,
        CUDA-graph replays in mfbench.shells.alert), not on this."""
        self.case.call()


class _Metrics:
    """The runner's measurement of the same call (do_bench median, kernel time, FLOPs, bytes, energy), made
    once per parameter set, all of a class's sets in one process (``setup_cache``); asv only tracks the
    numbers.

    asv shares a ``setup_cache`` result between classes whose ``setup_cache`` is the same source line, so
    every concrete class below defines its own: one line that calls ``measure``.
    """

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 900
    benchmark, direction = "layer", "forward"

    def measure(self):
        return measure_all(self.benchmark, self.direction, self.params)

    def setup(self, measured, device, provider, seq, dtype):
        self.case = Prepared(self.benchmark, self.direction, device, provider, seq, dtype, probe=False,
                             measured=measured)

    def track_median_time(self, *params):
        return self.case.metric("time")

    track_median_time.unit = "seconds"

    def track_kernel_time(self, *params):
        """The kernels' own time per call (CUPTI busy time), the host left out: steady where time_call is the
        host's. NaN off a GPU."""
        return self.case.metric("kernel_time")

    track_kernel_time.unit = "seconds"

    def track_flops(self, *params):
        return self.case.metric("flops_analytic")

    track_flops.unit = "FLOP"

    def track_energy_per_token(self, *params):
        return self.case.metric("energy_per_token")

    track_energy_per_token.unit = "J/token"

    def track_device_peak_memory(self, *params):
        return self.case.metric("peak_memory")

    track_device_peak_memory.unit = "bytes"


class _LayerMetrics(_Metrics):
    """Bytes are modelled for the Memory Layer alone, so bandwidth and roofline are tracked here only, each
    as the complement that is better lower: asv's regression feed only looks for increases."""

    def track_seconds_per_gb(self, *params):  # 1 / achieved bandwidth
        return 1e9 / self.case.metric("achieved_bandwidth")

    track_seconds_per_gb.unit = "s/GB"

    def track_roofline_gap(self, *params):  # 100 - % of the roofline
        return 100.0 - self.case.metric("pct_of_roofline")

    track_roofline_gap.unit = "%"


class LayerForward(_Timed):
    direction = "forward"

    def peakmem_call(self, *params):  # host memory of the process; the device's peak is a track_ metric
        self.case.call()


class LayerBackward(_Timed):
    direction = "backward"


class LayerForwardMetrics(_LayerMetrics):
    direction = "forward"

    def setup_cache(self):
        return self.measure()


class LayerBackwardMetrics(_LayerMetrics):
    direction = "backward"

    def setup_cache(self):
        return self.measure()
