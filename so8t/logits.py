"""Probabilities from logits, defined once: ``log_softmax(z / T)`` and ``softmax(z / T)`` along the last axis.

Shared by calibration (label scores), scoring, and the logits comparisons of bake-in and GGUF fidelity.
"""

from __future__ import annotations

import numpy as np

from so8t.errors import ConfigError

__all__ = ["log_softmax", "softmax"]


def log_softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable ``log softmax(z / T)`` along the last axis.

    Args:
        z: Logits, shape ``(n, k)``.
        temperature: ``T > 0``.

    Returns:
        Log-probabilities, same shape as ``z``.

    Raises:
        ConfigError: Non-positive or non-finite temperature.
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"temperature {temperature} is invalid: it must be finite and > 0")
    u = np.asarray(z, dtype=np.float64) / temperature
    u = u - u.max(axis=-1, keepdims=True)
    return u - np.log(np.exp(u).sum(axis=-1, keepdims=True))


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable ``softmax(z / T)`` along the last axis (see :func:`log_softmax`)."""
    return np.exp(log_softmax(z, temperature))
