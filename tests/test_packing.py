"""Packing: which pairs make each step, how they share rows, and that packed training learns what padded does."""

import dataclasses

import numpy as np
import pytest
import torch

from trainables.data import TokenizedSplit
from trainables.lora_trial import TrainingSettings, TrialSettings, step_plan, train_lora
from trainables.packing import micro_batch, plan_steps, steps_of_epoch


def test_each_epoch_is_a_seeded_shuffle_cut_into_steps_of_the_token_budget():
    lengths = np.array([5, 50, 7, 300, 12, 40, 9, 90, 3, 60])
    plan = plan_steps(lengths, tokens_per_step=100, epochs=2, seed=1, packing=True, micro_batch_tokens=256,
                      batch_size=4, row_tokens=128)
    assert as_lists(plan) == as_lists(plan_steps(lengths, 100, 2, 1, True, 256, 4, 128))  # resumes see the same
    seen = [i for step in plan.steps for mb in step for row in mb for i in row.tolist()]
    epochs = [seen[:10], seen[10:]]
    assert len(seen) == 20 and [sorted(e) for e in epochs] == [list(range(10))] * 2 and epochs[0] != epochs[1]
    for step in plan.steps:
        for mb in step:
            assert len(mb) <= 2  # 256 tokens a micro-batch hold two rows of 128
            for row in mb:  # every row within the budget, unless one pair alone is longer
                assert lengths[row].sum() <= 128 or len(row) == 1
    steps = steps_of_epoch(np.random.default_rng([1, 0]).permutation(10), lengths, 100)
    # every step but the last reaches the budget, and would not without its last pair
    for step in steps[:-1]:
        assert lengths[step].sum() >= 100 > lengths[step[:-1]].sum()


def as_lists(plan) -> list:
    return [[[row.tolist() for row in mb] for mb in step] for step in plan.steps]


def step_pairs(step) -> list[int]:
    return sorted(i for mb in step for row in mb for i in row.tolist())


def test_the_layout_never_changes_which_pairs_make_a_step():
    lengths = np.arange(1, 41)
    packed = plan_steps(lengths, 200, 1, 0, True, 400, 3, row_tokens=400)    # flash-attention: one long row
    rows = plan_steps(lengths, 200, 1, 0, True, 400, 3, row_tokens=40)       # sdpa: rows of the longest pair
    padded = plan_steps(lengths, 200, 1, 0, False, 400, 3, row_tokens=40)
    assert [step_pairs(s) for s in packed.steps] == [step_pairs(s) for s in rows.steps] == \
        [step_pairs(s) for s in padded.steps]
    assert all(len(mb) <= 3 and all(len(row) == 1 for row in mb) for s in padded.steps for mb in s)
    assert all(len(s) == 1 and len(s[0]) == 1 for s in packed.steps)  # each step's pairs fill one row
    assert all(len(mb) <= 10 for s in rows.steps for mb in s)  # 400 tokens a micro-batch: 10 rows of 40


def test_a_packed_row_keeps_pairs_apart_and_scores_only_responses(sweep_data):
    split = sweep_data.train
    batch = micro_batch(split, [[3, 0, 7], [5]], packing=True)
    offsets = np.cumsum([0] + [split.pair(i)[0].size for i in (3, 0, 7)])
    for k, i in enumerate((3, 0, 7)):
        ids, prompt_len = split.pair(i)
        row = slice(offsets[k], offsets[k + 1])
        assert batch["input_ids"][0, row].tolist() == ids.tolist()
        assert batch["position_ids"][0, row].tolist() == list(range(len(ids)))
        assert (batch["segments"][0, row] == k).all()
        targets = batch["targets"][0, row]
        # position t predicts token t+1 where that is a response token; the pair's last position predicts nothing
        assert targets[prompt_len - 1:-1].tolist() == ids[prompt_len:].tolist()
        assert (targets[:prompt_len - 1] == -100).all() and targets[-1] == -100
    assert "attention_mask" not in batch
    # the shorter second row is filled with padding that is a sequence of its own, with no target and no pair
    n = split.pair(5)[0].size
    assert batch["input_ids"].shape == (2, offsets[-1]) and (batch["segments"][1, :n] == 3).all()
    pad = slice(n, offsets[-1])
    assert (batch["segments"][1, pad] == -1).all() and (batch["targets"][1, pad] == -100).all()
    assert batch["position_ids"][1, pad].tolist() == list(range(offsets[-1] - n))


def settings(model_dir, **training) -> TrialSettings:
    return TrialSettings(model_dir=str(model_dir), training=TrainingSettings(
        num_epochs=2, batch_size=8, accumulation_steps=1, eval_steps=4, **training))


def losses(settings_, data, hp=None) -> list[float]:
    reports = []
    train_lora(hp or {"learning_rate": 1e-3, "r": 8, "alpha": 16}, settings_, data, lambda m, f: reports.append(m))
    return [r["eval_loss"] for r in reports]


def slots(settings_, split) -> int:
    packing = settings_.training.packing == "on"
    return sum(micro_batch(split, rows, packing)["input_ids"].numel()
               for step in step_plan(settings_, split).steps for rows in step)


def test_packed_and_padded_training_learn_the_same_curve_and_packing_computes_fewer_tokens(model_dir, sweep_data):
    packed, padded = settings(model_dir, packing="on"), settings(model_dir, packing="off")
    packed_curve, padded_curve = losses(packed, sweep_data), losses(padded, sweep_data)
    assert len(packed_curve) == len(padded_curve) >= 3
    assert packed_curve[-1] < 0.9 * packed_curve[0]  # it learns
    assert np.allclose(packed_curve, padded_curve, rtol=2e-3)  # the same steps of the same pairs, the same loss
    # packed rows (as long as the longest pair, for sdpa) compute less padding than padded batches
    real = 2 * sweep_data.train.num_tokens
    assert real <= slots(packed, sweep_data.train) < slots(padded, sweep_data.train)


@pytest.mark.slow
def test_a_tiny_model_trains_16k_token_pairs_on_the_cpu_with_checkpointing(model_dir):
    rng = np.random.default_rng(0)
    lengths = [16384, 1000]
    tokens = rng.integers(3, 700, size=sum(lengths)).astype(np.int32)
    split = TokenizedSplit(tokens, np.concatenate([[0], np.cumsum(lengths)]), np.array([100, 10], dtype=np.int32))
    data = dataclasses.replace(_data(split), eval=_subset_last(split))
    s = dataclasses.replace(settings(model_dir, packing="on", tokens_per_step=16384, micro_batch_tokens=16384,
                                     eval_batch_size=1), checkpointed_layers=2)  # both of its layers
    s = dataclasses.replace(s, training=dataclasses.replace(s.training, num_epochs=1, eval_steps=1))
    torch.set_num_threads(2)
    curve = losses(s, data)
    assert len(curve) == 2 and all(np.isfinite(curve))  # a step of the 16k pair, one of the other


def _data(split):
    from trainables.data import SweepData

    return SweepData(train=split, eval=split)


def _subset_last(split: TokenizedSplit) -> TokenizedSplit:
    ids, prompt_len = split.pair(len(split) - 1)
    return TokenizedSplit(ids, np.array([0, len(ids)]), np.array([prompt_len], dtype=np.int32))


@pytest.mark.parametrize("bad, message", [
    ({"packing": "maybe"}, "--packing must be one of on, off"),
    ({"gradient_checkpointing": "yes"}, "--gradient_checkpointing must be one of auto, on, off"),
    ({"attn_implementation": "flash"},
     "--attn_implementation must be one of auto, sdpa, flash_attention_2, varlen, flex_attention, eager"),
    ({"tokens_per_step": -1}, "--tokens_per_step must be 0"),
])
def test_bad_training_layout_flags_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainingSettings(**bad).check()
