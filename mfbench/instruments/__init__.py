"""Measurement windows: each module measures one quantity (time, energy, memory, counters, the machine's
state and ceilings, its fingerprint) and returns a small result object."""
