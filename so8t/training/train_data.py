"""Training data through 🤗 ``datasets``: checked line by line, stored once as Arrow, tokenised by a cached ``map``.

:func:`load_training_data` is what ``so8t train`` reads its ``--dataset`` files with:

1. every file is checked in one streaming pass (:func:`so8t.training.data.iter_jsonl`: the same one-line
   ``file:line: field 'x': problem`` errors as everywhere else, before anything is written or
   loaded) and hashed on the way;
2. the validated records are written to an Arrow table in the cache (``Dataset.from_generator``,
   keyed by the files' sha256), which is memory-mapped, not held in RAM;
3. the table is tokenised by ``Dataset.map`` (:func:`so8t.training.data.encode_record`, the same encoding
   as the in-memory path), cached under a fingerprint of the data, the tokenizer, the decision
   prompt, ``max_length``, ``label_loss`` and :data:`ENCODING_VERSION`: a second run on the same
   inputs skips tokenisation.

A 1 GB file therefore costs one pass of reading and no more memory than the columns the batch
sampler needs (lengths, kinds, labels: a few bytes per record). Measured in BENCHMARKS.md
(*Data loading*). The cache lives in ``$SO8T_CACHE/datasets`` (``~/.cache/so8t/datasets``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from so8t.training.data import (
    EncodeStats,
    InstructionRecord,
    LabelledRecord,
    Record,
    TextRecord,
    encode_record,
    iter_jsonl,
    loss_tokens,
    record_kind,
)
from so8t.decision import DecisionPrompt
from so8t.errors import DataError

logger = logging.getLogger(__name__)

#: Bumped whenever :func:`so8t.training.data.encode_record` changes what it produces: old caches are then ignored.
ENCODING_VERSION = 1

_FIELDS = ("kind", "text", "label", "instruction", "output", "thinking")
_KINDS = {"labelled": LabelledRecord, "instruction": InstructionRecord, "text": TextRecord}
TRAIN_COLUMNS = ("input_ids", "labels", "attention_mask")


@dataclass(frozen=True)
class CheckedFile:
    """A dataset file that passed validation: its sha256 and how many records of each kind it holds."""

    path: Path
    sha256: str
    records: int
    kinds: dict[str, int]


def check_file(path: str | Path) -> CheckedFile:
    """Validate every line of a JSONL file in one streaming pass and hash it.

    Raises:
        DataError: the first bad line (``file:line: ...``), a missing file, or a file without records.
    """
    p = Path(path)
    digest = hashlib.sha256()
    kinds: dict[str, int] = {}
    n = 0
    for _, rec in iter_jsonl(p, digest):
        n += 1
        k = record_kind(rec)
        kinds[k] = kinds.get(k, 0) + 1
    if n == 0:
        raise DataError(f"{p}: no records (empty file): a dataset needs at least one JSON line")
    return CheckedFile(p, digest.hexdigest(), n, kinds)


def dataset_files(spec: str) -> list[Path]:
    """The files of a comma-separated ``--dataset`` value."""
    return [Path(part.strip()) for part in spec.split(",") if part.strip()]


def _rows(paths: list[str], sha256s: list[str]) -> Iterator[dict[str, Any]]:
    """Validated records as flat rows (``sha256s`` only keys the cache; the files were checked already)."""
    del sha256s
    for path in paths:
        for _, rec in iter_jsonl(path):
            row = dict.fromkeys(_FIELDS)
            row.update(rec.model_dump(include=set(_FIELDS)))
            row["kind"] = record_kind(rec)
            yield row


def _record(row: dict[str, Any]) -> Record:
    cls = _KINDS[row["kind"]]
    return cls.model_construct(**{k: row[k] for k in cls.model_fields if k in row and row[k] is not None})


def _encode_row(row: dict[str, Any], tokenizer: Any, max_length: int, prompt: DecisionPrompt | None,
                label_loss: str) -> dict[str, Any]:
    ex, truncated = encode_record(_record(row), tokenizer, max_length, prompt, label_loss)  # type: ignore[arg-type]
    return {**ex, "length": len(ex["input_ids"]), "loss_tokens": loss_tokens(ex["labels"]), "truncated": truncated}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what decides a tokenizer's output: its full serialisation, chat template and special tokens."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode("utf-8") if backend is not None else repr(tokenizer.get_vocab()).encode("utf-8"))
    h.update(json.dumps([getattr(tokenizer, "chat_template", None), tokenizer.bos_token_id, tokenizer.eos_token_id,
                         tokenizer.pad_token_id, type(tokenizer).__name__], sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


@dataclass
class TrainingData:
    """The tokenised training set (Arrow, memory-mapped) and the per-record columns the batch sampler needs."""

    dataset: Any  # datasets.Dataset with TRAIN_COLUMNS only
    kinds: list[str]
    lengths: list[int]
    labels: list[str | None]
    files: list[CheckedFile]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.lengths)


def load_training_data(spec: str, tokenizer: Any, max_length: int, prompt: DecisionPrompt | None = None,
                       label_loss: Literal["answer", "label_token"] = "answer", cache_dir: str | Path | None = None,
                       progress: bool = True, checked: list[CheckedFile] | None = None) -> tuple[TrainingData, EncodeStats]:
    """Check, store and tokenise the ``--dataset`` files (see the module docstring).

    Args:
        spec: Comma-separated JSONL paths.
        tokenizer: The base model's tokenizer.
        max_length: Longest example in tokens (longer ones are cut as :func:`so8t.training.data.encode_record` does).
        prompt: The decision prompt for label records.
        label_loss: ``answer`` or ``label_token``.
        cache_dir: Where Arrow tables live (default ``$SO8T_CACHE/datasets``).
        progress: Show ``datasets``' progress bars.
        checked: The files' :func:`check_file` results when the caller has them already (saves a pass).

    Raises:
        DataError: a bad file (one line: file, line, field), before anything is cached.
    """
    import datasets

    from so8t.base_models import cache_dir as so8t_cache_dir

    paths = dataset_files(spec)
    if not paths:
        raise DataError("--dataset names no file")
    if checked is None or [c.path for c in checked] != paths:
        checked = [check_file(p) for p in paths]  # every error surfaces here, before datasets sees a byte
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
    else:
        cache = so8t_cache_dir("datasets")
    if not progress:
        datasets.disable_progress_bars()
    try:
        features = datasets.Features({k: datasets.Value("string") for k in _FIELDS})
        raw = datasets.Dataset.from_generator(
            _rows, features=features, cache_dir=str(cache),
            gen_kwargs={"paths": [str(c.path.resolve()) for c in checked], "sha256s": [c.sha256 for c in checked]})
        key = hashlib.sha256(json.dumps({
            "data": [c.sha256 for c in checked], "tokenizer": tokenizer_fingerprint(tokenizer),
            "prompt": prompt.model_dump(mode="json") if prompt is not None else None,
            "max_length": max_length, "label_loss": label_loss, "version": ENCODING_VERSION,
        }, sort_keys=True).encode("utf-8")).hexdigest()[:32]
        encoded = raw.map(_encode_row, fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "prompt": prompt,
                                                  "label_loss": label_loss},
                          remove_columns=[c for c in _FIELDS if c not in ("kind", "label")],
                          new_fingerprint=key, desc="tokenizing")
    finally:
        if not progress:
            datasets.enable_progress_bars()
    stats = EncodeStats()
    cols = encoded.select_columns(["kind", "label", "length", "loss_tokens", "truncated"]).to_dict()
    for kind, n, n_loss, cut in zip(cols["kind"], cols["length"], cols["loss_tokens"], cols["truncated"]):
        stats.add(kind, n, n_loss, cut)
    stats.warn(max_length)
    data = TrainingData(dataset=encoded.select_columns(list(TRAIN_COLUMNS)), kinds=cols["kind"], lengths=cols["length"],
                        labels=cols["label"], files=checked, fingerprint=key)
    return data, stats
