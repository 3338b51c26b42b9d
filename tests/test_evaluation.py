import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import trainables.evaluation as evaluation
from trainables.evaluation import eval_loss, pair_losses, per_pair_means, token_losses
from trainables.packing import packed_micro_batch


def validator_loss(model, ids, prompt_len):
    """SUBNET.md, verbatim: labels are ids with the prompt set to -100; the loss is model(...).loss."""
    ids = torch.tensor([ids.tolist()])
    labels = ids.clone()
    labels[:, :prompt_len] = -100
    return model(ids, labels=labels).loss.item()


@pytest.fixture(scope="module")
def model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()


@pytest.fixture(scope="module")
def alone(model, sweep_data):
    with torch.no_grad():
        return [validator_loss(model, *sweep_data.eval.pair(i)) for i in range(len(sweep_data.eval))]


def test_padded_and_packed_eval_match_the_validators_per_pair_loss(model, sweep_data, alone):
    split = sweep_data.eval
    padded = pair_losses(model, split, torch.device("cpu"), batch_size=5, packing=False)
    packed = pair_losses(model, split, torch.device("cpu"), packing=True, row_tokens=100, micro_batch_tokens=400)
    one_row = pair_losses(model, split, torch.device("cpu"), packing=True, row_tokens=1024, micro_batch_tokens=1024)
    assert all(np.allclose(losses, alone, atol=1e-4) for losses in (padded, packed, one_row))
    # packing really shared rows and micro-batches: fewer forward passes than pairs
    micro_batches = evaluation.eval_micro_batches(split, True, 100, 400, 5)
    assert len(micro_batches) < len(split) / 4 and max(len(rows) for rows in micro_batches) == 4
    # the average of per-pair means, not a mean over all tokens
    assert math.isclose(eval_loss(model, split, torch.device("cpu"), packing=True, row_tokens=100,
                                  micro_batch_tokens=400), sum(alone) / len(alone), rel_tol=1e-5)


def test_a_packed_row_without_restarting_positions_is_not_the_pairs_alone(model, sweep_data, alone):
    """The control: the same row with position ids 0..n (one long sequence) lets pairs attend to earlier ones."""
    batch = packed_micro_batch(sweep_data.eval, [range(4)])
    with torch.no_grad():
        ok = per_pair_means(token_losses(model, batch), batch)
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
        mixed = per_pair_means(token_losses(model, batch), batch)
    assert np.allclose(ok.tolist(), alone[:4], atol=1e-4)
    assert not np.allclose(mixed[1:].tolist(), alone[1:4], atol=1e-3)  # the first pair sees nothing before it


def test_the_chunked_loss_is_the_full_logits_loss_with_its_gradients(model_dir, sweep_data, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).train()
    batch = packed_micro_batch(sweep_data.train, [range(3), range(3, 6)])
    monkeypatch.setattr(evaluation, "LOSS_CHUNK_TOKENS", 50)  # several slices in one row
    chunked = per_pair_means(token_losses(model, batch), batch).mean()
    chunked.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    monkeypatch.setattr(evaluation, "CHUNKED_LOSS_MODEL_TYPES", frozenset())
    full = per_pair_means(token_losses(model, batch), batch).mean()
    full.backward()
    assert math.isclose(chunked.item(), full.item(), rel_tol=1e-6)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, model.parameters()))


def test_per_pair_mean_is_not_a_token_mean():
    losses = torch.tensor([[0.0, 1.0, 1.0, 1.0, 4.0, 0.0]])
    batch = {"targets": torch.tensor([[-100, 5, 5, 5, 5, -100]]), "segments": torch.tensor([[0, 0, 0, 0, 1, 1]])}
    assert per_pair_means(losses, batch).tolist() == [1.0, 4.0]  # a token mean would be 1.75
