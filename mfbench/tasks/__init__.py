"""Accuracy tasks: synthetic probes made from a seed (``synthetic``) and local multiple-choice sets (``choice``)."""
