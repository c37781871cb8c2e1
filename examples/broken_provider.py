"""Deliberately broken providers, loaded from a file: ``mfbench run --provider-module
examples/broken_provider.py`` (or MFBENCH_PROVIDER_MODULES for the asv suites). Each must be reported
failed, with its reason, and never pass an accuracy check; the rest of the run goes on."""

import time

import torch

import mfbench
from mfbench.core.lookup import reference_lookup


def raises(layer, x):
    raise RuntimeError("this kernel is broken on purpose")


def wrong_row(layer, x):
    """every lookup reads the neighbouring row: as fast as the reference, and wrong"""
    return reference_lookup(x, layer.tables.roll(1, dims=1), layer.spec, layer.max_chunk_bytes)


def wrong_dtype(layer, x):
    """the right values in float64, whatever the input's dtype"""
    return reference_lookup(x.double(), layer.tables.double(), layer.spec)


def slow(layer, x):
    """right, and far over its budget"""
    time.sleep(0.2)
    return reference_lookup(x, layer.tables, layer.spec)


mfbench.register_provider("broken_raises", raises, description="raises on every call")
mfbench.register_provider("broken_wrong", wrong_row, description="reads the neighbouring row")
mfbench.register_provider("broken_dtype", wrong_dtype, description="answers in float64")
mfbench.register_provider("broken_slow", slow, description="sleeps 0.2 s a call", budget_s=0.05)
