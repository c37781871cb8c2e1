"""mfbench: what MemoryFormer costs in time, bytes, joules and accuracy on real hardware."""

__version__ = "0.1.0"
