"""Runtimes behind one small interface (see base.py)."""
