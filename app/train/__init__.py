"""Training one model (jobs/train.py)."""
