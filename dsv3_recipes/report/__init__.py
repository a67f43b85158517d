"""Metrics of a run and the readers of its logs."""
