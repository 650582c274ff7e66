"""Hyperparameter sweeps (jobs/tune.py)."""
