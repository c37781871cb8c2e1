"""Measurement windows: each module measures one quantity and returns a small result object."""
