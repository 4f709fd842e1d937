"""Calibration and validation data: batches, text windows, the causal-LM loss."""
