"""The score cache: content-keyed, checksummed ``(n, 3)`` score arrays under ``cache_root()/scores``.

A re-calibration of the same model on the same data reads its scores here instead of running the
model again. The key covers everything that changes scores: the model file and the records'
contents, the decision prompt, label spellings, scoring mode, scorer and llama.cpp versions and
the batch size, not how the scoring was split over workers (:mod:`so8t.shards`): a sharded run
writes the entry a sequential run would, byte for byte (:func:`npz_bytes`). Each entry is an
``.npz`` plus a ``.json`` written last as the commit marker; a corrupt or mismatched entry is
ignored (and re-scored), never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from so8t.atomic import atomic_write_bytes
from so8t.base_models import cache_root
from so8t.decision import DEFAULT_DECISION_PROMPT, LABELS, DecisionPrompt

logger = logging.getLogger(__name__)


def cache_key(model_sha: str, records_sha: str, chat_template: str | None, label_texts: Sequence[str],
              mode: str, *, n_batch: int, scorer_version: int, prompt: DecisionPrompt = DEFAULT_DECISION_PROMPT) -> str:
    """The cache key of one scoring job (32 hex characters)."""
    import llama_cpp

    payload = {
        "model_sha256": model_sha,
        "records_sha256": records_sha,
        "chat_template_override": chat_template,
        "decision_system": prompt.system,
        "decision_user_template": prompt.user_template,
        "labels": list(LABELS),
        "label_texts": list(label_texts),
        "mode": mode,
        "scorer_version": scorer_version,
        "llama_cpp_version": llama_cpp.__version__,
        "n_batch": n_batch,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def score_cache_dir() -> Path:
    """``cache_root()/scores``."""
    return cache_root() / "scores"


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An ``.npz`` of ``arrays`` whose bytes depend on the arrays alone (``np.load`` reads it as any other).

    ``np.savez`` stamps each member with the current time, so the same scores saved twice differ; here
    every member has one fixed date and is stored uncompressed, in the order given.
    """
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


def save_cached(key: str, z: np.ndarray, y: np.ndarray, info: dict[str, Any]) -> None:
    """Store scores under ``key``: the arrays, then the metadata (the commit marker)."""
    d = score_cache_dir()
    npz = npz_bytes(z=z, y=y)
    meta = info | {"npz_sha256": hashlib.sha256(npz).hexdigest()}
    try:
        atomic_write_bytes(d / f"{key}.npz", npz)
        atomic_write_bytes(d / f"{key}.json", (json.dumps(meta, indent=2) + "\n").encode())
    except OSError as e:  # the scores are right; only the reuse is lost
        logger.warning("could not cache the scores in %s (%s): the next run scores again; set SO8T_CACHE to a "
                       "writable directory", d, e.strerror or e)
        return
    logger.info("cached scores: %s", d / f"{key}.json")


def load_cached(key: str, n: int) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The cached ``(n, 3)`` scores and metadata of ``key``, or None (missing, corrupt, wrong shape)."""
    d = score_cache_dir()
    meta_path, npz_path = d / f"{key}.json", d / f"{key}.npz"
    if not meta_path.is_file() or not npz_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        raw = npz_path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != meta["npz_sha256"]:
            logger.warning("score cache %s is corrupt (checksum mismatch): re-scoring", npz_path)
            return None
        with np.load(io.BytesIO(raw)) as arrays:
            z = arrays["z"].astype(np.float64)
    except (OSError, ValueError, KeyError) as e:
        logger.warning("score cache %s unreadable (%s): re-scoring", meta_path, e)
        return None
    if z.shape != (n, len(LABELS)):
        logger.warning("score cache %s has shape %s, expected (%d, 3): re-scoring", npz_path, z.shape, n)
        return None
    return z, meta
