"""Which attention a trial runs and why; the pairs' boundaries that varlen and FlexAttention are fed; FlexAttention
on the CPU (forward: PyTorch 2.13 has no FlexAttention backward there) against sdpa on the real tiny model; and the
worker's check, which must catch an attention that lets packed pairs see each other. The CUDA paths (varlen, flex
with gradients) are in tests/test_gpu_attention.py."""

import re

import numpy as np
import pytest
import torch

from trainables.attention import (AttentionFacts, choose_attention, cumulative_lengths, document_ids, document_starts,
                                  planning_facts, skips_masked_blocks)
from trainables.data import TokenizedSplit
from trainables.lora_trial import (TrainingSettings, TrialSettings, check_packing_is_kept_apart, eval_layout,
                                   micro_batch_shape, row_tokens)
from trainables.packing import micro_batch

GPU = dict(device_type="cuda", torch_version="2.13.0", flash_attn=False, varlen_module=True, flash_kernels=True,
           flex_kernels=True)


def facts(**changes) -> AttentionFacts:
    return AttentionFacts(**{**GPU, **changes})


def test_auto_picks_flash_then_varlen_then_flex_then_sdpa_and_says_why():
    assert choose_attention("auto", facts(flash_attn=True)).name == "flash_attention_2"
    varlen = choose_attention("auto", facts())
    assert varlen.line() == "attention: varlen (auto: torch.nn.attention.varlen on CUDA; flash-attn not installed)"
    flex = choose_attention("auto", facts(varlen_module=False))
    assert flex.name == "flex_attention" and "PyTorch 2.13.0 has no torch.nn.attention.varlen" in flex.why
    old_card = choose_attention("auto", facts(flash_kernels=False))  # e.g. a T4: no bf16, no flash kernels
    assert old_card.name == "flex_attention" and "compute capability 8.0" in old_card.why
    dense = choose_attention("auto", facts(varlen_module=False, flex_kernels=False))
    assert dense.name == "sdpa" and "triton" in dense.why and dense.why.startswith("auto: a dense block-diagonal")
    cpu = choose_attention("auto", facts(device_type="cpu"))
    assert cpu.line() == ("attention: sdpa (auto on the CPU: flash-attn, varlen and FlexAttention's backward "
                          "need CUDA)")
    assert choose_attention("eager", facts(device_type="cpu")).line() == \
        "attention: eager (as --attn_implementation asks)"


@pytest.mark.parametrize("requested, where, reason", [
    ("varlen", facts(device_type="cpu"), "torch.nn.attention.varlen needs a CUDA GPU"),
    ("varlen", facts(varlen_module=False), "has no torch.nn.attention.varlen with GQA and windows"),
    ("varlen", facts(flash_kernels=False), "compute capability 8.0 or later"),
    ("flex_attention", facts(device_type="cpu"), "no FlexAttention backward on the CPU"),
    ("flex_attention", facts(flex_kernels=False), "needs triton"),
    ("flash_attention_2", facts(), "flash-attn not installed"),
])
def test_an_explicit_choice_that_cannot_run_is_refused_in_one_line(requested, where, reason):
    refused = f"--attn_implementation {requested} cannot run here: .*{re.escape(reason)}"
    with pytest.raises(ValueError, match=refused) as e:
        choose_attention(requested, where)
    assert "\n" not in str(e.value) and str(e.value).endswith("use auto or sdpa")


def test_the_driver_plans_for_what_its_workers_pick():
    assert choose_attention("auto", planning_facts("cpu", False)).name == "sdpa"  # make run: unchanged
    # this environment (PyTorch 2.13) has torch.nn.attention.varlen: a bf16 card's workers pick it
    assert choose_attention("auto", planning_facts("cuda", True)).name == "varlen"
    assert choose_attention("auto", planning_facts("cuda", False)).name == "flex_attention"  # e.g. a T4 cluster
    # flash-attn is often on the GPU workers only: unknown on a driver without it, so asking for it passes there
    # (its workers refuse it if it is missing), and auto plans for varlen: the same tensors, the same rows
    assert choose_attention("flash_attention_2", facts(flash_attn=None)).name == "flash_attention_2"
    assert choose_attention("auto", facts(flash_attn=None)).name == "varlen"
    with pytest.raises(ValueError, match="varlen needs a CUDA GPU"):
        choose_attention("varlen", planning_facts("cpu", False))


def test_only_attentions_that_skip_masked_blocks_make_a_micro_batch_one_row():
    lengths = np.array([100, 700, 300, 50])
    training = TrainingSettings(micro_batch_tokens=2048)
    for attention in ("flash_attention_2", "varlen", "flex_attention"):
        assert skips_masked_blocks(attention)
        assert row_tokens(training, lengths, attention) == 2048
        assert micro_batch_shape(training, lengths, attention) == (1, 2048)
    for attention in ("sdpa", "eager"):  # they compute a row's whole T x T: rows as long as the longest pair
        assert not skips_masked_blocks(attention)
        assert micro_batch_shape(training, lengths, attention) == (2, 700)
    settings = TrialSettings(model_dir="unused", training=training)
    split = TokenizedSplit(np.arange(1150) % 50, np.concatenate([[0], np.cumsum(lengths)]), np.ones(4, np.int32))
    assert eval_layout(settings, split, "varlen")["row_tokens"] == 2048
    assert eval_layout(settings, split, "sdpa")["row_tokens"] == 700


def packed_split(lengths) -> TokenizedSplit:
    tokens = np.random.default_rng(0).integers(3, 700, size=sum(lengths)).astype(np.int32)
    return TokenizedSplit(tokens, np.concatenate([[0], np.cumsum(lengths)]), np.full(len(lengths), 2, np.int32))


def test_cumulative_lengths_come_from_the_restarting_position_ids_of_a_packed_micro_batch():
    # the product's own packed micro-batch: two rows, the second shorter and topped up with padding
    batch = micro_batch(packed_split([5, 3, 4, 2]), [np.array([0, 1]), np.array([2, 3])], packing=True)
    starts = document_starts(batch["position_ids"])
    cu, longest = cumulative_lengths(starts)
    # row 1: pairs of 5 and 3; row 2: pairs of 4 and 2, then 2 tokens of padding, a sequence of its own
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 5, 8, 12, 14, 16] and longest == 5
    ids = document_ids(starts)
    assert ids.tolist() == [[0] * 5 + [1] * 3, [2] * 4 + [3] * 2 + [4] * 2]
    # each pair is exactly one sequence: the segments the loss reads agree with the boundaries
    real = batch["segments"] >= 0
    assert torch.equal(ids[real], batch["segments"][real])


def test_a_padded_batch_ends_each_pair_where_its_padding_starts():
    batch = micro_batch(packed_split([5, 3]), [np.array([0]), np.array([1])], packing=False)
    positions = torch.arange(5).expand(2, 5)  # what transformers passes a padded batch: one row of positions
    cu, longest = cumulative_lengths(document_starts(positions, batch["attention_mask"].bool()))
    assert cu.tolist() == [0, 5, 8, 10] and longest == 5  # the pair of 3, then its 2 tokens of padding


def test_transformers_flex_block_mask_keeps_pairs_apart_and_skips_the_blocks_between_them():
    from torch.nn.attention.flex_attention import create_mask
    from transformers import LlamaConfig
    from transformers.masking_utils import create_causal_mask

    lengths = [300, 260, 180, 400, 140]  # 1,280 tokens: 10 x 10 blocks of 128
    batch = micro_batch(packed_split(lengths), [np.arange(len(lengths))], packing=True)
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, vocab_size=700)
    config._attn_implementation = "flex_attention"
    width = batch["input_ids"].shape[1]
    block_mask = create_causal_mask(config=config, inputs_embeds=torch.zeros(1, width, 64), attention_mask=None,
                                    cache=None, position_ids=batch["position_ids"])
    ids = document_ids(document_starts(batch["position_ids"]))[0]
    same_pair_and_causal = (ids[:, None] == ids[None, :]) & torch.ones(width, width, dtype=torch.bool).tril()
    assert torch.equal(create_mask(block_mask.mask_mod, 1, 1, width, width)[0, 0], same_pair_and_causal)
    # FlexAttention visits exactly the 128 x 128 blocks where some token sees another of its own pair: 24 of the
    # 100, where a plain causal mask (what sdpa's dense mask computes) visits 55
    needed = same_pair_and_causal.view(10, 128, 10, 128).any(dim=3).any(dim=1)
    assert torch.equal(block_mask.to_dense()[0, 0].bool(), needed)
    assert int(needed.sum()) == 24


@pytest.fixture(scope="module")
def lora_model(model_dir):
    from trainables.lora_trial import build_lora_model
    from trainables.model_loading import load_causal_lm

    torch.manual_seed(0)
    model = build_lora_model(load_causal_lm(model_dir, torch.float32, "sdpa"), 8, 16, 0.0, 0)
    with torch.no_grad():  # B = 0 as initialised would leave A's gradients zero: give both something to check
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    return model


def test_flex_attention_scores_a_packed_row_as_sdpa_scores_each_pair_on_the_cpu(lora_model, sweep_data):
    from trainables.evaluation import pair_losses
    from trainables.lora_trial import _attention

    torch.set_num_threads(1)
    split, device = sweep_data.eval, torch.device("cpu")
    with torch.no_grad(), _attention(lora_model, "flex_attention"):
        packed = pair_losses(lora_model, split, device, packing=True, row_tokens=split.num_tokens,
                             micro_batch_tokens=split.num_tokens)  # the whole held-out set as one row
    alone = pair_losses(lora_model, split, device, batch_size=len(split), packing=False)  # sdpa, padded
    assert len(packed) == len(split) > 20
    assert np.abs(np.array(packed) - np.array(alone)).max() < 1e-5  # fp32: 1.4e-6 measured


def test_the_worker_check_passes_sdpa_and_catches_an_attention_that_lets_pairs_see_each_other(lora_model,
                                                                                             sweep_data):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from trainables.lora_trial import _attention

    device = torch.device("cpu")
    check_packing_is_kept_apart(lora_model, sweep_data.eval, device)  # sdpa: losses and LoRA gradients agree
    assert all(p.grad is None for p in lora_model.parameters())  # the check leaves nothing to the first step
    # a real transformers attention registered without a mask function: transformers then hands it no mask, so
    # a packed row is one causal sequence and later pairs see earlier ones (what varlen's mask function prevents)
    AttentionInterface.register("leaky_for_test", sdpa_attention_forward)
    with _attention(lora_model, "leaky_for_test"), pytest.raises(ValueError) as e:
        check_packing_is_kept_apart(lora_model, sweep_data.eval, device)
    message = str(e.value)
    assert "with leaky_for_test attention does not keep packed pairs apart as sdpa does" in message
    assert "LoRA gradients off by" in message and message.endswith("--attn_implementation sdpa (or --packing off)")
    assert lora_model.config._attn_implementation == "sdpa"  # put back


def test_the_drivers_memory_plan_names_the_attention_it_assumed_and_refuses_one_that_cannot_run(
        model_dir, sweep_data, capsys):
    from orchestrator.config import ConfigError, SweepConfig
    from orchestrator.memory_budget import Budget, plan_trial_memory
    from orchestrator.search_space import load_search_space

    space = load_search_space("default")
    settings = TrialSettings(model_dir=str(model_dir), training=TrainingSettings(micro_batch_tokens=4096))
    gpu = Budget("cuda", 80 * 10**9, "the smallest GPU here: a test card, 80.0 GB", bf16=True)
    plan_trial_memory(SweepConfig(), settings, space, sweep_data, gpu)
    line = capsys.readouterr().out
    # this environment's PyTorch has torch.nn.attention.varlen: one row of the whole budget, no T x T mask
    assert ("1 x 4096 tokens a micro-batch under varlen attention (auto: torch.nn.attention.varlen on CUDA; "
            "flash-attn not installed)") in line
    assert "attention masks" not in line
    cpu = Budget("cpu", 8 * 10**9, "this machine: 8.0 GB free, shared by 1 trial(s) at once")
    plan_trial_memory(SweepConfig(), settings, space, sweep_data, cpu)
    assert "a micro-batch under sdpa attention (auto on the CPU: " in capsys.readouterr().out
    explicit = TrialSettings(model_dir=str(model_dir), training=TrainingSettings(attn_implementation="varlen"))
    with pytest.raises(ConfigError, match="^--attn_implementation varlen cannot run here: torch.nn.attention.varlen "
                                          "needs a CUDA GPU; use auto or sdpa$"):
        plan_trial_memory(SweepConfig(), explicit, space, sweep_data, cpu)
