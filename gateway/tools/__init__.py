"""Operator tools run from the command line (tuning, load generation)."""
