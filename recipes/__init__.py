"""Datasets, losses, metrics, the training engine and ``python -m recipes`` (issue 4: not built yet)."""
