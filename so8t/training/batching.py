"""Training batches that evaluate the shared prompt prefix once.

Every ``{"text","label"}`` record is rendered with the same decision prompt: the chat template's
system turn (the policy, ~200 tokens for SmolLM2) and the start of the user turn are identical
token for token, and only the request (~20-60 tokens) and the label differ. Evaluating that prefix
once per batch instead of once per record is the training-side twin of what scoring does with
llama.cpp's KV cache.

- :class:`GroupedBatchSampler` orders the examples so that each batch holds one kind of record
  (label records together, chat records together) of similar length rank, every label in
  proportion; batches are shuffled.
- :class:`SharedPrefixCollator` finds the batch's longest common token prefix that carries no loss
  and returns it once (``prefix_ids``) with the per-record suffixes.
- :func:`forward_shared_prefix` runs the prefix with ``use_cache=True``, repeats its key/value cache
  for the batch and runs the suffixes on it. Loss, gradients and the PET term are those of the
  unshared batch (checked in ``tests/unit/test_batching.py``): the prefix's keys and values stay in
  the autograd graph, so LoRA and gate parameters get the prefix's share of every gradient.
- :func:`sparse_lm_loss` runs the decoder, then the LM head only on the positions whose next token
  carries loss. With the loss on the label token, that is one row per label record instead of one
  per prompt token: the head (576 x 49152 for SmolLM2) was ~20% of a training step's arithmetic.
  :func:`sparse_head_matches` checks once per run that the model's logits are its head applied to
  its last hidden state (no logit scaling or soft-capping the shortcut would skip).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch

from so8t.training.data import IGNORE_INDEX, PadCollator

#: A prefix shorter than this is not worth a second forward call.
MIN_SHARED_PREFIX = 16


class GroupedBatchSampler(torch.utils.data.Sampler[int]):
    """Indices ordered so that each run of ``batch_size`` has one group, similar lengths and mixed strata.

    Per epoch (seeded by ``seed + epoch``, so a resumed run sees the same order): each group's
    indices are shuffled and cut into mega-chunks of ``mega`` batches. Within a chunk, each stratum
    (for label records: the label) is sorted by length and every record gets its length quantile
    within its stratum; the chunk is ordered by that quantile and cut into batches. A batch thus
    holds records of similar length *rank* from every stratum in proportion: padding stays low, and
    batches are not made of one label, as they would be if sorted by raw length (long requests are
    mostly jailbreaks and Japanese context questions, short ones AdvBench or Dolly questions), which
    made the loss jump between all-DENY and all-ALLOW batches. Then the batches of all groups are
    shuffled together. The DataLoader cuts batches at fixed positions, so a group whose size is
    not a multiple of ``batch_size`` is filled up with its own first indices (a few records seen
    twice per epoch) rather than letting a batch straddle two groups.
    """

    def __init__(self, groups: Sequence[object], lengths: Sequence[int], batch_size: int, seed: int,
                 strata: Sequence[object] | None = None, mega: int = 16):
        if len(groups) != len(lengths) or (strata is not None and len(strata) != len(groups)):
            raise ValueError("groups, lengths and strata differ in length")
        self.groups, self.lengths = list(groups), list(lengths)
        self.strata = list(strata) if strata is not None else [0] * len(self.groups)
        self.batch_size, self.seed, self.mega, self.epoch = batch_size, seed, mega, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunk_order(self, chunk: list[int]) -> list[int]:
        quantile: dict[int, float] = {}
        for stratum in sorted(set(self.strata[i] for i in chunk), key=str):
            members = sorted((i for i in chunk if self.strata[i] == stratum), key=lambda i: self.lengths[i])
            for rank, i in enumerate(members):
                quantile[i] = (rank + 0.5) / len(members)
        return sorted(chunk, key=lambda i: (quantile[i], self.lengths[i]))

    def batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        out: list[list[int]] = []
        for key in sorted(set(self.groups), key=str):
            idx = [i for i, k in enumerate(self.groups) if k == key]
            idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
            short = (-len(idx)) % self.batch_size
            idx += (idx * math.ceil(short / max(len(idx), 1)))[:short]  # fill the tail from the same group
            span = self.batch_size * self.mega
            for s in range(0, len(idx), span):
                chunk = self._chunk_order(idx[s:s + span])
                out += [chunk[b:b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        return [out[j] for j in torch.randperm(len(out), generator=g).tolist()]

    def __iter__(self) -> Iterator[int]:
        return iter([i for b in self.batches() for i in b])

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches())


class SharedPrefixCollator:
    """Pads a batch; when its records share a loss-free token prefix, returns that prefix once.

    Output with a shared prefix: ``prefix_ids`` ``(1, P)``, and ``input_ids``, ``labels``,
    ``attention_mask`` ``(B, S)`` holding the suffixes (right-padded). Without one (a single
    record, or less than ``min_shared`` common tokens): the plain :class:`PadCollator` batch.
    The prefix stops before the first token that carries loss in any record and before the first
    suffix token whose own label would be predicted from the prefix, so the loss is unchanged.
    """

    def __init__(self, pad_token_id: int, min_shared: int = MIN_SHARED_PREFIX):
        self.plain = PadCollator(pad_token_id)
        self.min_shared = min_shared

    @staticmethod
    def shared_length(batch: Sequence[dict[str, list[int]]]) -> int:
        first = batch[0]["input_ids"]
        n = min(len(b["input_ids"]) for b in batch) - 1  # every record keeps at least one suffix token
        p = 0
        while p < n and all(b["input_ids"][p] == first[p] for b in batch):
            p += 1
        # labels at positions <= p must all be ignored: position p's label would be predicted by the prefix
        for b in batch:
            k = next((i for i, t in enumerate(b["labels"]) if t != IGNORE_INDEX), len(b["labels"]))
            p = min(p, k - 1)
        return max(p, 0)

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        p = self.shared_length(batch) if len(batch) > 1 else 0
        if p < self.min_shared:
            return self.plain(batch)
        out = self.plain([{k: v[p:] for k, v in b.items()} for b in batch])
        out["prefix_ids"] = torch.tensor([batch[0]["input_ids"][:p]], dtype=torch.long)
        return out


def _prefix_then_suffixes(net: torch.nn.Module, prefix: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                          prefix_kwargs: dict[str, Any], **suffix_kwargs: Any) -> tuple[Any, Any, torch.Tensor]:
    """Run ``net`` (a causal LM or its decoder) on the shared prefix once, repeat its key/value cache over
    the batch, then on every suffix at the positions after the prefix.

    Returns:
        The prefix's output, the suffixes' output and the attention mask of the full sequences ``(B, P + S)``.
    """
    b, s = ids.shape
    p = prefix.shape[1]
    pre = net(input_ids=prefix, use_cache=True, **prefix_kwargs)
    cache = getattr(pre, "past_key_values", None)
    cache = cache if cache is not None else pre.cache
    cache.batch_repeat_interleave(b)
    full_mask = torch.cat([mask.new_ones(b, p), mask], dim=1)  # (B, P + S)
    positions = torch.arange(p, p + s, device=ids.device).expand(b, s)
    out = net(input_ids=ids, attention_mask=full_mask, position_ids=positions, cache=cache, use_cache=True,
              **suffix_kwargs)
    return pre, out, full_mask


def forward_shared_prefix(model: torch.nn.Module, inputs: dict[str, torch.Tensor], output_hidden_states: bool = False,
                          **kwargs: Any) -> tuple[Any, torch.Tensor | None, torch.Tensor | None]:
    """Forward a :class:`SharedPrefixCollator` batch as if the prefix were part of every record.

    Returns:
        The suffix forward's outputs (its ``loss`` is the batch's CE), and, when
        ``output_hidden_states``, the final hidden states of the full sequences ``(B, P + S, D)`` with
        their attention mask (the PET term's input), else ``(None, None)``.
    """
    ids = inputs["input_ids"]
    b = ids.shape[0]
    pre, out, full_mask = _prefix_then_suffixes(
        model, inputs["prefix_ids"], ids, inputs["attention_mask"], {"output_hidden_states": output_hidden_states},
        labels=inputs.get("labels"), output_hidden_states=output_hidden_states, **kwargs)
    if not output_hidden_states:
        return out, None, None
    hidden = torch.cat([pre.hidden_states[-1].expand(b, -1, -1), out.hidden_states[-1]], dim=1)  # (B, P + S, D)
    return out, hidden, full_mask


def _decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper or the model
    return inner.get_decoder(), inner.get_output_embeddings()


def sparse_head_matches(model: torch.nn.Module, token_ids: Sequence[int], atol: float = 1e-4) -> bool:
    """Whether ``model``'s logits equal its output head applied to its decoder's last hidden state.

    True for plain causal LMs (Llama, Qwen, Mistral, SmolLM2); False where the model scales or
    soft-caps its logits after the head, or has no separate decoder and head: then
    :func:`sparse_lm_loss` must not be used.
    """
    try:
        decoder, head = _decoder_and_head(model)
    except (AttributeError, NotImplementedError):
        return False
    if decoder is None or head is None:
        return False
    ids = torch.tensor([list(token_ids)], dtype=torch.long, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()  # no dropout: both passes must see the same network
    try:
        with torch.no_grad():
            full = model(input_ids=ids, use_cache=False).logits.float()
            sparse = head(decoder(input_ids=ids, use_cache=False).last_hidden_state).float()
    finally:
        model.train(was_training)
    return full.shape == sparse.shape and bool(torch.allclose(full, sparse, atol=atol, rtol=1e-4))


def sparse_lm_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: Any = None,
                   want_hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The causal-LM cross-entropy of a batch, with the LM head applied only where a label is.

    Takes a plain padded batch or a :class:`SharedPrefixCollator` batch. The loss equals the
    model's own (``ForCausalLMLoss``: next-token CE in float32, summed and divided by
    ``num_items_in_batch`` when given, else averaged over the label tokens).

    Returns:
        ``(loss, hidden, mask)``: with ``want_hidden`` the final hidden states of the full
        sequences ``(B, P + S, D)`` and their attention mask (the PET term's input), else ``None``s.
    """
    decoder, head = _decoder_and_head(model)
    ids, mask, labels = inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"]
    b, s = ids.shape
    prefix = inputs.get("prefix_ids")
    if prefix is None:
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        full_hidden, full_mask = hidden, mask
    else:
        pre, out, full_mask = _prefix_then_suffixes(decoder, prefix, ids, mask, {})
        hidden = out.last_hidden_state
        full_hidden = torch.cat([pre.last_hidden_state.expand(b, -1, -1), hidden], dim=1) if want_hidden else None
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    if not bool(keep.any()):  # nothing to learn in this batch (all cut by max_length): zero loss, zero gradients
        zero = hidden.sum() * 0.0
        return zero, full_hidden if want_hidden else None, full_mask if want_hidden else None
    logits = head(hidden[:, :-1][keep]).float()  # (N, V): only the rows that predict a label token
    loss = torch.nn.functional.cross_entropy(logits, target[keep], reduction="sum")
    if num_items_in_batch is not None:
        denom = num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        loss = loss / denom
    else:
        loss = loss / keep.sum().clamp(min=1)
    if not want_hidden:
        return loss, None, None
    return loss, full_hidden, full_mask
