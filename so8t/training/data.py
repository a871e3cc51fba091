"""Training data: strict JSONL readers, chat-template rendering, assistant-only labels.

Three record kinds, detected per line by their keys:

- ``{"instruction", "output"}`` (optional ``"thinking"``): a chat turn; the assistant answer is
  ``<think>{thinking}</think>{output}`` when thinking is present.
- ``{"text"}``: plain language modelling.
- ``{"text", "label"}`` with label in ALLOW / ESCALATE / DENY: the decision prompt of
  :mod:`so8t.decision`, answered with the label (the same prompt calibration reads).

Loss falls only on assistant tokens (all tokens for ``{"text"}``); the end-of-turn / EOS token is
part of the answer, so it is learned. Truncation to ``max_length`` is counted and reported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from so8t.decision import LABELS, DecisionPrompt, decision_messages
from so8t.errors import DataError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class InstructionRecord(BaseModel):
    """An instruction and its answer, optionally with the reasoning that leads to it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    instruction: str = Field(min_length=1, description="The user's request.")
    output: str = Field(min_length=1, description="The assistant's answer.")
    thinking: str | None = Field(default=None, description="Reasoning, rendered as <think>...</think> before the answer.")


class TextRecord(BaseModel):
    """Plain text for language modelling."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    text: str = Field(min_length=1, description="The text.")


class LabelledRecord(BaseModel):
    """A request and its safety decision, optionally with where it came from (for per-source reports)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    text: str = Field(min_length=1, description="The request under review.")
    label: Literal["ALLOW", "ESCALATE", "DENY"] = Field(description="The correct decision.")
    source: str | None = Field(default=None, min_length=1, max_length=100, description="Data source (e.g. advbench).")
    category: str | None = Field(default=None, min_length=1, max_length=200, description="Category within the source.")
    lang: str | None = Field(default=None, min_length=2, max_length=16, description="Language code (en, ja, ...).")
    framing: str | None = Field(default=None, min_length=1, max_length=100,
                                description="How the request is framed (plain, skilled, jailbreak).")


Record = Union[InstructionRecord, TextRecord, LabelledRecord]


def _kind_of(obj: dict[str, Any]) -> type[BaseModel]:
    if "instruction" in obj or "output" in obj or "thinking" in obj:
        return InstructionRecord
    if "label" in obj:
        return LabelledRecord
    return TextRecord


def _describe(err: dict[str, Any], obj: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "record"
    typ = err["type"]
    if typ == "missing":
        return f"field '{loc}': missing (required)"
    if typ == "extra_forbidden":
        return (f"field '{loc}': unknown field (allowed: instruction/output/thinking, text, "
                "text/label with optional source/category/lang/framing)")
    if loc == "label" and typ in ("literal_error", "string_type"):
        return f"field 'label': {obj.get('label')!r} is not one of {', '.join(LABELS)}"
    return f"field '{loc}': {err['msg']}"


#: Longest accepted JSONL line (one record). A request to review is at most a few pages; a 20 MB line
#: is a mistake that would otherwise cost minutes of tokenisation before anything fails.
MAX_RECORD_BYTES = 1 << 20


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def read_jsonl(path: str | Path) -> list[Record]:
    """Read and validate a JSONL dataset.

    Args:
        path: The file.

    Returns:
        The records, in file order.

    UTF-8 only (a byte-order mark at the start is accepted); a key given twice in one record, or a
    line over :data:`MAX_RECORD_BYTES`, is refused.

    Raises:
        DataError: ``file:line: field 'x': problem`` for the first bad line; missing or empty file.
    """
    p = Path(path)
    records = [r for _, r in iter_jsonl(p)]
    if not records:
        raise DataError(f"{p}: no records (empty file): a dataset needs at least one JSON line")
    return records


def iter_json_objects(path: str | Path, digest: Any = None, what: str = "dataset") -> Iterator[tuple[int, dict]]:
    """``(line number, JSON object)`` for each non-blank line of a JSONL file, one at a time.

    The rules every JSONL input shares: lines of at most :data:`MAX_RECORD_BYTES`, UTF-8 (a BOM on the
    first line is dropped), one JSON object per line, no key given twice. ``digest``, a ``hashlib``
    object, is fed every byte of the file as it is read; ``what`` names the file in messages.

    Raises:
        DataError: ``FILE:LINE: rule`` for the first line that breaks one (an empty file yields nothing).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {what} file not found")
    try:
        fh = p.open("rb")
    except OSError as e:
        raise DataError(f"{p}: cannot read the {what}: {e.strerror}") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if digest is not None:
                digest.update(raw)
            if len(raw) > MAX_RECORD_BYTES:
                raise DataError(f"{p}:{lineno}: the line is {len(raw)} bytes, over the limit of {MAX_RECORD_BYTES} "
                                "per record: split the text or drop the record")
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark (Windows editors write one): not part of the data
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{p}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of "
                                "the line): save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line, object_pairs_hook=_unique_keys)
            except _DuplicateKey as e:
                raise DataError(f"{p}:{lineno}: field '{e.key}': given twice (JSON would silently keep the last)") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{lineno}: malformed JSON at column {e.colno}: {e.msg}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def iter_jsonl(path: str | Path, digest: Any = None) -> Iterator[tuple[int, Record]]:
    """``(line number, record)`` for each non-blank line, validated as :func:`read_jsonl` does, one at a time
    (a file of any size streams through).

    ``digest``, a ``hashlib`` object, is fed every byte of the file as it is read.

    Raises:
        DataError: as :func:`read_jsonl` (an empty file yields nothing).
    """
    p = Path(path)
    for lineno, obj in iter_json_objects(p, digest):
        kind = _kind_of(obj)
        try:
            yield lineno, kind.model_validate(obj)
        except ValidationError as e:
            raise DataError(f"{p}:{lineno}: {_describe(e.errors()[0], obj)}") from None


def record_messages(record: Record, prompt: DecisionPrompt | None = None) -> tuple[list[dict[str, str]], str] | None:
    """Prompt messages and assistant answer for chat records; ``None`` for plain text.

    Labelled records are rendered with ``prompt`` (default: the built-in decision prompt).
    """
    if isinstance(record, InstructionRecord):
        answer = record.output if record.thinking is None else f"<think>{record.thinking}</think>{record.output}"
        return [{"role": "user", "content": record.instruction}], answer
    if isinstance(record, LabelledRecord):
        return decision_messages(record.text, prompt), record.label
    return None


@dataclass
class EncodeStats:
    """What tokenisation did to a dataset: counts, truncation, tokens without loss."""

    examples: int = 0
    truncated: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    no_loss_examples: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, tokens: int, loss_tokens: int, truncated: bool) -> None:
        """Count one encoded example."""
        self.examples += 1
        self.truncated += int(truncated)
        self.tokens += tokens
        self.loss_tokens += loss_tokens
        self.no_loss_examples += int(loss_tokens == 0)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def warn(self, max_length: int) -> None:
        """Log what truncation cost, if anything."""
        if self.truncated:
            logger.warning("%d of %d examples truncated to max_length=%d", self.truncated, self.examples, max_length)
        if self.no_loss_examples:
            logger.warning("%d example(s) lost every answer token to truncation: raise --max_length", self.no_loss_examples)

    def summary(self, max_length: int) -> str:
        return (
            f"{self.examples} examples ({', '.join(f'{k}: {v}' for k, v in sorted(self.kinds.items()))}), "
            f"{self.tokens} tokens, {self.loss_tokens} with loss; {self.truncated} truncated to max_length={max_length}"
            + (f", {self.no_loss_examples} left without any answer token" if self.no_loss_examples else "")
        )


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_record(record: Record, tokenizer: Any, max_length: int, prompt: DecisionPrompt | None = None,
                  label_loss: Literal["answer", "label_token"] = "answer") -> tuple[dict[str, list[int]], bool]:
    """Tokenise one record into ``input_ids``/``labels``/``attention_mask``.

    The prompt part is rendered with ``add_generation_prompt=True``; the answer part is the rest of
    the fully rendered conversation, so it ends with the template's end-of-turn token. An EOS is
    appended when the template leaves none, so stopping is always learned.

    ``label_loss="label_token"`` keeps the loss of a ``{"text","label"}`` record on the label's first
    token only: the token whose logit calibration reads.

    A label record longer than ``max_length`` loses the middle of its request (the head and the tail
    are kept, joined by " … "), not its label: cutting the end would leave an example with no loss
    that still costs a full-length forward pass.

    Returns:
        The encoded example and whether it was truncated.

    Raises:
        DataError: chat records with a tokenizer that has no chat template.
    """
    ex = _encode_record(record, tokenizer, prompt, label_loss)
    excess = len(ex["input_ids"]) - max_length
    if excess <= 0:
        return ex, False
    if isinstance(record, LabelledRecord):
        text_ids = _token_ids(tokenizer, record.text)
        for margin in (4, 8, 16, 32):  # re-tokenising at the cut may add a token or two
            keep = len(text_ids) - excess - margin
            if keep < 2:
                break
            head = tokenizer.decode(text_ids[: keep - keep // 2])
            tail = tokenizer.decode(text_ids[len(text_ids) - keep // 2:])
            short = _encode_record(record.model_copy(update={"text": f"{head} … {tail}"}), tokenizer, prompt, label_loss)
            if len(short["input_ids"]) <= max_length:
                return short, True
    # the end goes (reported as a no-loss example when nothing of the answer is left)
    return {k: v[:max_length] for k, v in ex.items()}, True


def _encode_record(record: Record, tokenizer: Any, prompt: DecisionPrompt | None,
                   label_loss: Literal["answer", "label_token"]) -> dict[str, list[int]]:
    """:func:`encode_record` without any length limit."""
    eos = tokenizer.eos_token_id
    chat = record_messages(record, prompt)
    if chat is None:
        prompt_ids: list[int] = []
        bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
        answer_ids = bos + _token_ids(tokenizer, record.text) + ([eos] if eos is not None else [])
        labels_from = len(bos)
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("the base model's tokenizer has no chat_template: instruction and label records need one")
        messages, answer = chat
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": answer}], tokenize=False
        )
        if not full.startswith(prompt):
            raise DataError("chat template renders the prompt differently inside the full conversation: cannot mask the answer")
        prompt_ids = _token_ids(tokenizer, prompt)
        answer_ids = _token_ids(tokenizer, full[len(prompt):])
        if eos is not None and eos not in answer_ids:
            answer_ids.append(eos)
        labels_from = 0
    ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + [IGNORE_INDEX] * labels_from + answer_ids[labels_from:]
    if label_loss == "label_token" and isinstance(record, LabelledRecord):
        labels = labels[:len(prompt_ids) + 1] + [IGNORE_INDEX] * (len(labels) - len(prompt_ids) - 1)
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


class EncodedDataset(torch.utils.data.Dataset):
    """A list of encoded examples (a torch Dataset for Trainer) and the kind of record each came from."""

    def __init__(self, examples: list[dict[str, list[int]]], kinds: list[str] | None = None):
        self.examples = examples
        self.kinds = kinds if kinds is not None else ["unknown"] * len(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]


def encode_dataset(records: list[Record], tokenizer: Any, max_length: int, prompt: DecisionPrompt | None = None,
                   label_loss: Literal["answer", "label_token"] = "answer") -> tuple[EncodedDataset, EncodeStats]:
    """Encode every record (see :func:`encode_record`); report truncation instead of hiding it."""
    stats = EncodeStats()
    out, kinds = [], []
    for r in records:
        ex, truncated = encode_record(r, tokenizer, max_length, prompt, label_loss)
        kind = record_kind(r)
        stats.add(kind, len(ex["input_ids"]), loss_tokens(ex["labels"]), truncated)
        out.append(ex)
        kinds.append(kind)
    stats.warn(max_length)
    return EncodedDataset(out, kinds), stats


def record_kind(record: Record) -> str:
    """``instruction``, ``text`` or ``labelled``."""
    return type(record).__name__.removesuffix("Record").lower()


def loss_tokens(labels: list[int]) -> int:
    """How many positions carry loss."""
    return sum(1 for t in labels if t != IGNORE_INDEX)


class PadCollator:
    """Right-pads a batch; padded labels are ignored and padded positions masked."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad, dtype=torch.long)  # (B, T)
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
