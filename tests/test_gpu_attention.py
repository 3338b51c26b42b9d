"""Opt-in, on a CUDA GPU (LORA_SWEEP_GPU=1): the document-masked attentions that need CUDA, against sdpa.

    LORA_SWEEP_GPU=1 .venv/bin/python -m pytest -q tests/test_gpu_attention.py

varlen (torch.nn.attention.varlen) has no CPU kernel and FlexAttention no CPU backward in PyTorch 2.13, so these
run only here. For each: a packed micro-batch as ONE row must give every pair the loss and the LoRA gradients it
gets alone in a padded batch under sdpa (bf16: within bf16 rounding; FlexAttention in fp32 too: tight); no pair may
see another (changing one pair's tokens leaves the others' losses exactly as they were, where a control without the
pairs' boundaries moves them); the worker's own check passes on the product's model path; a short trial trains
under each as under sdpa and prints its choice; FlexAttention compiles at most twice per mode. Not yet run on a
GPU (written where none was lent); expect a few minutes, most of it FlexAttention compiling for each model shape.
The harness itself was checked on the CPU with eager in place of the GPU attentions, and varlen's plumbing with a
per-sequence sdpa in place of its kernel.
"""

import os

import numpy as np
import pytest
import torch

from trainables.data import TokenizedSplit
from trainables.lora_trial import _attention, _losses_and_gradients, build_lora_model
from trainables.packing import micro_batch

pytestmark = pytest.mark.skipif(
    os.environ.get("LORA_SWEEP_GPU") != "1" or not torch.cuda.is_available(),
    reason="set LORA_SWEEP_GPU=1 on a machine with a CUDA GPU: varlen and FlexAttention's backward run on CUDA only")

DEVICE = torch.device("cuda")
LENGTHS = [300, 130, 517, 45, 200, 61]  # 1,253 tokens: pairs that straddle FlexAttention's 128-token blocks


def attentions() -> list[str]:
    from transformers.utils import is_flash_attn_2_available

    return ["varlen", "flex_attention"] + (["flash_attention_2"] if is_flash_attn_2_available() else [])


def pairs_split(seed: int = 0) -> TokenizedSplit:
    tokens = np.random.default_rng(seed).integers(3, 500, size=sum(LENGTHS)).astype(np.int32)
    prompts = np.array([n // 4 for n in LENGTHS], dtype=np.int32)  # a quarter of each pair is its prompt
    return TokenizedSplit(tokens, np.concatenate([[0], np.cumsum(LENGTHS)]), prompts)


def lora_model(family: str, attention: str, dtype: torch.dtype):
    """A tiny decoder with LoRA on every linear layer, on the GPU, with B drawn (not 0) so both A and B get
    gradients. llama: 4 query heads over 2 kv heads; llama6: 6 query heads (not a power of two: transformers'
    FlexAttention repeats k and v); mistral: a 32-token sliding window, shorter than most pairs."""
    import transformers

    from trainables.model_loading import resolve_attention

    resolve_attention(attention, DEVICE)  # refuses what cannot run here; registers varlen
    common = dict(vocab_size=512, intermediate_size=512, num_hidden_layers=2, num_key_value_heads=2, head_dim=64,
                  max_position_embeddings=4096, attn_implementation=attention)
    config = {"llama": lambda: transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, **common),
              "llama6": lambda: transformers.LlamaConfig(hidden_size=384, num_attention_heads=6, **common),
              "mistral": lambda: transformers.MistralConfig(hidden_size=256, num_attention_heads=4, sliding_window=32,
                                                            **common)}[family]()
    model_class = transformers.MistralForCausalLM if family == "mistral" else transformers.LlamaForCausalLM
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = build_lora_model(model_class(config).to(dtype), r=8, alpha=16, dropout=0.0, checkpointed_layers=0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    return model


def one_row_against_alone_under_sdpa(model, split: TokenizedSplit) -> tuple[float, float]:
    """(largest per-pair loss difference, largest LoRA gradient difference relative to the largest gradient):
    the whole split as one packed row under the model's attention, against each pair alone (padded) under sdpa."""
    packed = micro_batch(split, [np.arange(len(split))], True)
    assert packed["input_ids"].shape == (1, sum(LENGTHS))
    losses, grads = _losses_and_gradients(model, packed, DEVICE)
    with _attention(model, "sdpa"):
        alone, alone_grads = _losses_and_gradients(model, micro_batch(split, [[i] for i in range(len(split))],
                                                                      False), DEVICE)
    scale = max(g.abs().max().item() for g in alone_grads)
    grad_error = max((g - a).abs().max().item() for g, a in zip(grads, alone_grads)) / scale
    return float(np.abs(losses - alone).max()), grad_error


@pytest.mark.parametrize("family", ["llama", "llama6", "mistral"])
@pytest.mark.parametrize("attention", attentions())
def test_a_packed_row_gives_each_pair_its_loss_and_gradients_under_sdpa_in_bf16(attention, family):
    model = lora_model(family, attention, torch.bfloat16)
    loss_error, grad_error = one_row_against_alone_under_sdpa(model, pairs_split())
    print(f"{attention} {family} bf16: loss max diff {loss_error:.2e}, LoRA grad max diff {grad_error:.2%} of max")
    assert loss_error < 2e-2 and grad_error < 5e-2


@pytest.mark.parametrize("attention", attentions())
def test_a_padded_batch_scores_as_under_sdpa(attention):
    """--packing off: right-padded rows, each pair alone (varlen ends each pair where its padding starts)."""
    model = lora_model("llama", attention, torch.bfloat16)
    padded = micro_batch(pairs_split(), [[i] for i in range(len(LENGTHS))], False)
    losses = _losses_and_gradients(model, padded, DEVICE)[0]
    with _attention(model, "sdpa"):
        alone = _losses_and_gradients(model, padded, DEVICE)[0]
    assert np.abs(losses - alone).max() < 2e-2, (losses, alone)


def test_flex_attention_in_fp32_matches_sdpa_tightly():
    model = lora_model("llama", "flex_attention", torch.float32)
    loss_error, grad_error = one_row_against_alone_under_sdpa(model, pairs_split())
    print(f"flex_attention fp32: loss max diff {loss_error:.2e}, LoRA grad max diff {grad_error:.2e} of max")
    assert loss_error < 1e-4 and grad_error < 1e-3


@pytest.mark.parametrize("attention", attentions())
def test_no_pair_sees_another(attention):
    """Other tokens in the first pair leave every other pair's loss exactly as it was; the control (the same row
    with no boundaries: transformers hands an attention registered without a mask function none) moves them."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    model = lora_model("llama", attention, torch.bfloat16)
    split, changed = pairs_split(), pairs_split()
    changed.tokens[1:LENGTHS[0]] = (changed.tokens[1:LENGTHS[0]] + 7) % 500  # the first pair, not its first token
    row = [np.arange(len(split))]
    before = _losses_and_gradients(model, micro_batch(split, row, True), DEVICE)[0][1:]
    after = _losses_and_gradients(model, micro_batch(changed, row, True), DEVICE)[0][1:]
    assert np.abs(after - before).max() <= 1e-6, (before, after)
    AttentionInterface.register("boundless_for_test", sdpa_attention_forward)
    with _attention(model, "boundless_for_test"):
        leaked = (_losses_and_gradients(model, micro_batch(changed, row, True), DEVICE)[0][1:]
                  - _losses_and_gradients(model, micro_batch(split, row, True), DEVICE)[0][1:])
    assert np.abs(leaked).max() > 1e-4  # the test can see a leak


@pytest.mark.parametrize("attention", attentions())
def test_the_workers_check_passes_on_the_products_model_path(attention, model_dir, sweep_data):
    from trainables.lora_trial import (TrainingSettings, TrialSettings, check_packing_is_kept_apart,
                                       load_lora_model)

    settings = TrialSettings(model_dir=str(model_dir), training=TrainingSettings(attn_implementation=attention))
    model = load_lora_model(settings, 8, 16, DEVICE)
    assert model.config._attn_implementation == attention
    check_packing_is_kept_apart(model, sweep_data.eval, DEVICE)
    assert model.config._attn_implementation == attention  # sdpa was the reference only


def test_a_short_trial_trains_under_each_as_under_sdpa_and_says_which(model_dir, sweep_data, capsys):
    from trainables.lora_trial import TrainingSettings, TrialSettings, train_lora

    curves = {}
    for attention in ["sdpa", *attentions()]:
        training = TrainingSettings(num_epochs=1, batch_size=8, accumulation_steps=1, micro_batch_tokens=2048,
                                    eval_steps=4, attn_implementation=attention)
        reports = []
        train_lora({"learning_rate": 1e-3, "r": 8, "alpha": 16}, TrialSettings(str(model_dir), training),
                   sweep_data, lambda metrics, folder: reports.append(metrics))
        curves[attention] = [r["eval_loss"] for r in reports if "eval_loss" in r]
        assert f"attention: {attention} (as --attn_implementation asks)" in capsys.readouterr().out
    print(curves)
    assert len(curves["sdpa"]) >= 2 and curves["sdpa"][-1] < curves["sdpa"][0]
    for attention in attentions():  # bf16 steps drift apart a little; the same pairs, the same learning
        assert np.allclose(curves[attention], curves["sdpa"], rtol=3e-2), (attention, curves)


def test_flex_attention_compiles_at_most_twice_per_mode_whatever_the_row_length():
    """The first row length compiles; a second makes dynamo treat the length as dynamic; no third compile."""
    from torch._dynamo.utils import counters

    model = lora_model("llama", "flex_attention", torch.bfloat16)
    graphs = []
    for seed, cut in enumerate([6, 5, 4, 3, 6]):  # rows of 1,253, 1,192, 992, 947 and 1,253 tokens
        split = pairs_split(seed)
        _losses_and_gradients(model, micro_batch(split, [np.arange(cut)], True), DEVICE)
        graphs.append(counters["stats"]["unique_graphs"])
    print("dynamo graphs after each row:", graphs)
    assert graphs[1] == graphs[2] == graphs[3] == graphs[4]


def test_auto_picks_flash_attention_2_where_installed_else_varlen_on_a_bf16_gpu():
    from transformers.utils import is_flash_attn_2_available

    from trainables.attention import attention_here

    choice = attention_here("auto", DEVICE)
    print(choice.line())
    assert choice.name == ("flash_attention_2" if is_flash_attn_2_available() else "varlen")
