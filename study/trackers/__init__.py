"""Experiment trackers (MLflow, Weights & Biases): the runs a study logs (backends.py) and the
driver's callbacks that log them as trials end (callbacks.py)."""
