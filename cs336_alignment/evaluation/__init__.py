"""Measuring a policy against the world: evaluation, preference pairs, style split, metrics."""
