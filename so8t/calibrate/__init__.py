"""Calibration: scoring a GGUF, the score cache, metrics, temperature and thresholds, the promotion gate, held-out evaluation."""
