"""Decoding, B tokens a step: one Memory Layer (d -> d, d from the preset) and one generation step of the
preset's model after a 512-token key/value cache, MemoryFormer against dense (provider 'dense')."""

from mfbench.shells.suite import DECODE_PARAM_NAMES, DECODE_PARAMS

from .layer import _Metrics, _Timed


class _DecodeMetrics(_Metrics):
    params, param_names = DECODE_PARAMS, DECODE_PARAM_NAMES

    def track_graph_time(self, *params):
        """The step replayed from a CUDA graph, as decoders deploy it (NaN off a GPU)."""
        return self.case.metric("graph_time")

    track_graph_time.unit = "seconds"

    def track_parameter_bytes(self, *params):
        """What the step's module holds: the tables are 2^tau / tau times the dense weights."""
        return self.case.metric("parameter_bytes")

    track_parameter_bytes.unit = "bytes"


class DecodeLayer(_Timed):
    params, param_names, benchmark, direction = DECODE_PARAMS, DECODE_PARAM_NAMES, "decode-layer", "forward"


class DecodeLayerMetrics(_DecodeMetrics):
    benchmark, direction = "decode-layer", "forward"

    def setup_cache(self):
        return self.measure()


class DecodeStep(_Timed):
    params, param_names, benchmark, direction = DECODE_PARAMS, DECODE_PARAM_NAMES, "decode-model", "forward"


class DecodeStepMetrics(_DecodeMetrics):
    benchmark, direction = "decode-model", "forward"

    def setup_cache(self):
        return self.measure()
