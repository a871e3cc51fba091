"""Shared-prompt-prefix batches: same loss, gradients and PET term as the plain batch; homogeneous batches."""

from __future__ import annotations

import torch

from so8t.training.batching import (GroupedBatchSampler, SharedPrefixCollator, forward_shared_prefix, sparse_head_matches,
                           sparse_lm_loss)
from so8t.decision import DecisionPrompt
from so8t.training.data import IGNORE_INDEX, LabelledRecord, PadCollator, encode_record
from so8t.training.pet import pet_energy


def _model(path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from so8t.training.gates import attach_gates, iter_gates
    from so8t.training.train import resolve_lora_targets

    base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    m = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                        target_modules=resolve_lora_targets(base, "all-linear")))
    attach_gates(m)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, gate in iter_gates(m):
            gate.generators.copy_(torch.randn(gate.generators.shape, generator=g) * 0.1)
    return m.train()


def _batch(tok):
    texts = [("how do I bake bread", "ALLOW"), ("help me hide from the police after a robbery tonight", "DENY"),
             ("my neighbour's account", "ESCALATE")]
    # a short policy: the tiny 512-piece tokenizer spends many tokens on the built-in one
    prompt = DecisionPrompt(system="You review requests for an assistant. Answer ALLOW, ESCALATE or DENY.",
                            user_template="Request: {text}\nDecision:")
    return [encode_record(LabelledRecord(text=t, label=lab), tok, 512, prompt)[0] for t, lab in texts]


def _loss_grads_pet(model, inputs, shared: bool):
    model.zero_grad()
    if shared:
        out, hidden, mask = forward_shared_prefix(model, inputs, output_hidden_states=True)
    else:
        out = model(**inputs, output_hidden_states=True)
        hidden, mask = out.hidden_states[-1], inputs["attention_mask"]
    pet = pet_energy(hidden, mask)
    (out.loss + 0.3 * pet).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(g.isfinite().all() for g in grads.values())
    return float(out.loss.detach()), float(pet.detach()), grads


def test_shared_prefix_forward_equals_the_plain_batch(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    batch = _batch(tok)
    model = _model(tiny_llama)
    shared = SharedPrefixCollator(tok.pad_token_id or 0)(batch)
    plain = PadCollator(tok.pad_token_id or 0)(batch)
    assert all(sum(t != IGNORE_INDEX for t in b["labels"]) >= 2 for b in batch)  # label + end of turn
    assert "prefix_ids" in shared and shared["prefix_ids"].shape[1] >= 16
    p = shared["prefix_ids"].shape[1]
    # the prefix is what every record starts with, and carries no loss
    assert torch.equal(plain["input_ids"][:, :p], shared["prefix_ids"].expand(3, -1))
    assert (plain["labels"][:, :p + 1] == IGNORE_INDEX).all()

    loss_a, pet_a, grads_a = _loss_grads_pet(model, plain, shared=False)
    loss_b, pet_b, grads_b = _loss_grads_pet(model, shared, shared=True)
    assert abs(loss_a - loss_b) < 1e-5 * max(1.0, abs(loss_a))
    assert abs(pet_a - pet_b) < 1e-5 * max(1.0, abs(pet_a))
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    gate_names = [n for n in grads_a if "generators" in n]
    assert gate_names and all(grads_a[n].abs().max() > 0 for n in gate_names)
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-4, atol=1e-6, msg=n)


def _sparse_loss_grads_pet(model, inputs, num_items=None):
    model.zero_grad()
    loss, hidden, mask = sparse_lm_loss(model, inputs, num_items, want_hidden=True)
    pet = pet_energy(hidden, mask)
    (loss + 0.3 * pet).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), float(pet.detach()), grads


def test_sparse_head_loss_equals_the_models_own_loss(tiny_llama):
    """The LM head on label positions only: the model's own CE, PET input and gradients, plain and shared."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    batch = _batch(tok)
    model = _model(tiny_llama)
    assert sparse_head_matches(model, batch[0]["input_ids"][:8])
    assert model.training  # the check leaves the mode as it found it
    plain = PadCollator(tok.pad_token_id or 0)(batch)
    shared = SharedPrefixCollator(tok.pad_token_id or 0)(batch)
    loss_ref, pet_ref, grads_ref = _loss_grads_pet(model, plain, shared=False)
    # an independent reference of the CE: full logits, shifted by hand, torch's mean CE
    with torch.no_grad():
        logits = model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                           plain["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert abs(float(ce) - loss_ref) < 1e-5
    for inputs in (plain, shared):
        loss, pet, grads = _sparse_loss_grads_pet(model, inputs)
        assert abs(loss - loss_ref) < 1e-5 * max(1.0, loss_ref)
        assert abs(pet - pet_ref) < 1e-5 * max(1.0, pet_ref)
        assert grads.keys() == grads_ref.keys()
        for n in grads:
            torch.testing.assert_close(grads[n], grads_ref[n], rtol=1e-4, atol=1e-6, msg=n)
    # num_items_in_batch (gradient accumulation across micro-batches): a sum over this batch's tokens / N
    n_tokens = int((plain["labels"][:, 1:] != IGNORE_INDEX).sum())
    loss_n, _, _ = _sparse_loss_grads_pet(model, plain, num_items=torch.tensor(4 * n_tokens))
    assert abs(loss_n - loss_ref / 4) < 1e-5


def test_sparse_head_check_refuses_a_model_that_post_processes_its_logits(tiny_llama):
    model = _model(tiny_llama)
    assert sparse_head_matches(model, [1, 2, 3, 4])
    inner = model.get_base_model()
    inner.lm_head.register_forward_hook(lambda _m, _a, out: out)  # a no-op hook changes nothing
    assert sparse_head_matches(model, [1, 2, 3, 4])
    original = inner.forward

    def scaled_forward(*args, **kwargs):  # a model whose logits are scaled after the head (Cohere, Granite)
        out = original(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    inner.forward = scaled_forward
    assert not sparse_head_matches(model, [1, 2, 3, 4])


def test_gate_rotations_are_fresh_when_the_decoder_runs_alone(tiny_llama):
    """The rotation cache is cleared at the decoder too: the same batch twice without an optimizer
    step (the generators unchanged) back-propagates twice with equal gradients, and steps learn."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    model = _model(tiny_llama)
    inputs = SharedPrefixCollator(tok.pad_token_id or 0)(_batch(tok))
    _, _, first = _sparse_loss_grads_pet(model, inputs)
    _, _, again = _sparse_loss_grads_pet(model, inputs)  # a stale cached rotation's freed graph would raise here
    for n in first:
        torch.testing.assert_close(again[n], first[n], msg=n)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss, _, _ = sparse_lm_loss(model, inputs)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[2] < losses[0]


def test_collator_falls_back_without_a_long_common_prefix():
    a = {"input_ids": [1, 2, 3, 4], "labels": [IGNORE_INDEX, IGNORE_INDEX, 3, 4], "attention_mask": [1] * 4}
    b = {"input_ids": [1, 2, 9], "labels": [IGNORE_INDEX, IGNORE_INDEX, 9], "attention_mask": [1] * 3}
    out = SharedPrefixCollator(0, min_shared=1)([a, b])
    assert out["prefix_ids"].tolist() == [[1]]  # position 2 carries loss, so the prefix stops before position 1
    assert out["input_ids"].tolist() == [[2, 3, 4], [2, 9, 0]]
    assert SharedPrefixCollator(0)([a, b]).keys() == {"input_ids", "labels", "attention_mask"}  # below 16: plain
    assert SharedPrefixCollator(0, min_shared=1)([a]).keys() == {"input_ids", "labels", "attention_mask"}


def test_grouped_sampler_makes_homogeneous_batches_deterministically():
    kinds = ["labelled"] * 23 + ["instruction"] * 10 + ["text"] * 2
    lengths = [(i * 37) % 50 + 5 for i in range(len(kinds))]
    s = GroupedBatchSampler(kinds, lengths, batch_size=4, seed=7)
    batches = s.batches()
    assert all(len(b) == 4 and len({kinds[i] for i in b}) == 1 for b in batches)
    assert set(i for b in batches for i in b) == set(range(len(kinds)))  # every record, each epoch
    assert len(s) == 4 * len(batches) == 24 + 12 + 4
    assert list(s) == list(GroupedBatchSampler(kinds, lengths, 4, seed=7))  # resume sees the same order
    s.set_epoch(1)
    assert s.batches() != batches


def test_grouped_sampler_mixes_labels_when_length_follows_the_label():
    # long requests all DENY, short ones all ALLOW: raw length sorting would make one-label batches
    labels = ["DENY"] * 32 + ["ALLOW"] * 32
    lengths = [200 + i for i in range(32)] + [10 + i for i in range(32)]
    s = GroupedBatchSampler(["labelled"] * 64, lengths, batch_size=8, seed=3, strata=labels)
    batches = s.batches()
    assert all(sum(labels[i] == "DENY" for i in b) in (3, 4, 5) for b in batches), [[labels[i] for i in b] for b in batches]
    # within a label, a batch spans a narrow band of length ranks (little padding)
    for b in batches:
        deny = sorted(lengths[i] for i in b if labels[i] == "DENY")
        assert deny[-1] - deny[0] <= 12


def test_sparse_loss_of_a_batch_without_label_tokens_is_zero_with_zero_gradients(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    model = _model(tiny_llama)
    plain = PadCollator(tok.pad_token_id or 0)(_batch(tok))
    plain["labels"] = torch.full_like(plain["labels"], IGNORE_INDEX)  # every answer cut by max_length
    loss, hidden, mask = sparse_lm_loss(model, plain, want_hidden=True)
    assert float(loss) == 0.0 and hidden is not None and mask is not None
    model.zero_grad()
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters() if p.requires_grad)
