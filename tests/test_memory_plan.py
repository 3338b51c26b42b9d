"""The memory planner: its estimate against real training on the CPU, its parameter counts against real models,
what autograd really saves against its per-layer count (fp32 and bf16), its checkpointing decision and its error."""

import pytest
import torch

from benchmarks.memory_calibration import SHAPES, llama_config, measure_in_subprocess, packed_row
from trainables.memory_plan import (GB, MemoryPlanError, ModelShape, estimate_peak, layer_saved_bytes_per_token,
                                    plan)

# Llama 3.2 3B's shape (no download needed: parameter counts and estimates use only the config)
LLAMA_3B = dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                num_attention_heads=24, num_key_value_heads=8, tie_word_embeddings=True)


def llama_3b() -> ModelShape:
    from transformers import LlamaConfig

    return ModelShape.from_config(LlamaConfig(**LLAMA_3B))


# (a) Each case trains in a fresh process: the peak resident-set growth from before the model is built, with glibc
# told to give freed blocks straight back so that the resident set follows live tensors (see memory_calibration).
# Two processes run at a time with one thread each (this machine has two cores), the long ones first, and 16k tokens
# train one optimizer step, which keeps the file within two minutes: a second step adds only AdamW's moments, which
# the estimate counts (`python -m benchmarks.memory_calibration --sweep` trains two steps).
CALIBRATION = [("embedded", 16384, True, 1), ("embedded", 16384, False, 1),
               ("wide", 2048, False, 2), ("wide", 2048, True, 2),
               ("embedded", 2048, False, 2), ("embedded", 2048, True, 2)]


@pytest.fixture(scope="module")
def measured() -> dict:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {case: pool.submit(measure_in_subprocess, *case[:3], steps=case[3], threads=1) for case in CALIBRATION}
        return {case: run.result() for case, run in runs.items()}


@pytest.mark.parametrize("case", CALIBRATION, ids=lambda c: f"{c[0]}-{c[1]}-checkpointing_{'on' if c[2] else 'off'}")
def test_estimate_is_within_15_percent_of_the_measured_peak_on_the_cpu(measured, case):
    row = measured[case]
    assert row["peak_was_reset"]
    assert 0.85 <= row["estimate_bytes"] / row["measured_bytes"] <= 1.15, row


def test_sdpa_keeps_a_t_by_t_mask_per_layer_unless_checkpointed():
    """The 16k measurement is dominated by sdpa's per-layer T x T masks: without them the estimate would be far off,
    and checkpointing keeps one layer's mask at a time instead of every layer's."""
    shape = ModelShape.from_config(llama_config("embedded"))
    off = estimate_peak(shape, weight_bytes=4, lora_r=16, tokens=16384, gradient_checkpointing=False,
                        device_type="cpu")
    on = estimate_peak(shape, weight_bytes=4, lora_r=16, tokens=16384, gradient_checkpointing=True, device_type="cpu")
    layer_mask = 4 * 16384 ** 2
    assert off.parts["attention_masks"] == 16384 ** 2 + shape.layers * layer_mask  # the boolean one, then per layer
    assert on.parts["attention_masks"] == 16384 ** 2 and on.peak_phase == "decoder layer"
    assert off.total_bytes - on.total_bytes > (shape.layers - 1) * layer_mask


# (c) parameter counts against the real models, built on the meta device (no memory, no download)
@pytest.mark.parametrize("family, overrides", [
    ("llama", SHAPES["embedded"]), ("llama", SHAPES["wide"]), ("llama", LLAMA_3B),
    ("llama", dict(SHAPES["embedded"], head_dim=96, tie_word_embeddings=True)),
    ("qwen2", dict(SHAPES["embedded"])),  # biases on q, k, v
    ("qwen3", dict(SHAPES["embedded"], head_dim=48)),  # per-head q/k norms, head_dim not hidden/heads
    ("mistral", dict(SHAPES["embedded"])),
])
def test_parameter_counts_match_the_real_model(family, overrides):
    import transformers

    names = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}[family]
    config = getattr(transformers, f"{names}Config")(**overrides)
    with torch.device("meta"):
        model = getattr(transformers, f"{names}ForCausalLM")(config)
    real = sum(p.numel() for p in model.parameters())  # tied lm_head is counted once
    assert ModelShape.from_config(config).base_params() == real


@pytest.mark.parametrize("overrides", [SHAPES["embedded"], dict(SHAPES["embedded"], head_dim=48)])
def test_lora_parameter_count_matches_peft_all_linear(overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainables.lora_trial import build_lora_model

    config = LlamaConfig(**overrides)
    model = build_lora_model(LlamaForCausalLM(config), r=8, alpha=16, dropout=0.0, gradient_checkpointing=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert ModelShape.from_config(config).lora_params(8) == trainable


def test_a_3b_llama_in_bf16_weighs_about_6_4_gb():
    shape = llama_3b()
    assert 3.1e9 < shape.base_params() < 3.3e9
    assert 6.2 * GB < 2 * shape.base_params() < 6.6 * GB


# What autograd keeps for the backward pass, counted from its own saved tensors (deduplicated by storage), equals
# the planner's per-layer count: in fp32 as on the CPU, and in bf16 (weights and activations bf16, LoRA fp32,
# RMSNorm and LoRA inputs upcast), as on a GPU.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family, rows", [("llama", 1), ("qwen3", 1), ("llama", 2)])
def test_saved_activations_match_the_per_layer_count(dtype, attn, family, rows):
    import transformers

    from trainables.evaluation import per_pair_means, token_losses
    from trainables.lora_trial import build_lora_model

    tokens, r = 1024, 8
    names = {"llama": "Llama", "qwen3": "Qwen3"}[family]
    config = getattr(transformers, f"{names}Config")(
        vocab_size=512, hidden_size=128, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=48, attn_implementation=attn)
    torch.manual_seed(0)
    base = getattr(transformers, f"{names}ForCausalLM")(config).to(dtype)
    model = build_lora_model(base, r=r, alpha=2 * r, dropout=0.0, gradient_checkpointing=False)
    batch, _ = packed_row(tokens, config.vocab_size, rows=rows)
    width = batch["input_ids"].shape[1]
    assert (batch["position_ids"][:, 1:] == 0).any(dim=1).all()  # every row packs pairs: it needs a mask
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, tuple[int, tuple]] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = (storage.nbytes(), tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        per_pair_means(token_losses(model, batch), batch).sum()
    square = sum(n for n, shape in saved.values() if shape[-2:] == (width, width))
    linear = sum(n for n, _ in saved.values()) - square

    shape = ModelShape.from_config(config)
    a, h = torch.finfo(dtype).bits // 8, shape.hidden
    expected = (shape.layers * layer_saved_bytes_per_token(shape, a, r, attn)
                - (4 * h + 4)               # the first layer's input norm: nothing before it needs a gradient
                + 2 * a * shape.head_dim    # RoPE's cos and sin
                + (4 * h + 4) + a * h       # the final norm, the final hidden states the loss slices
                + 3 * 8) * tokens           # targets, segments, the loss's indices (int64)
    assert linear == pytest.approx(expected, rel=0.005)
    # sdpa: its additive mask in dtype; eager: fp32 softmax output per head (and, in bf16, its bf16 copy)
    per_layer_square = a if attn == "sdpa" else (4 if a == 4 else 4 + 2) * shape.heads
    assert square == shape.layers * per_layer_square * tokens * width


# (b) the decision and the error
def test_auto_turns_checkpointing_on_exactly_when_needed():
    shape = llama_3b()
    common = dict(weight_bytes=2, lora_r=64, tokens=16384, attn_implementation="sdpa", device_type="cuda")
    without = estimate_peak(shape, gradient_checkpointing=False, **common).total_bytes
    with_ = estimate_peak(shape, gradient_checkpointing=True, **common).total_bytes
    assert with_ < without
    assert plan(shape, budget_bytes=without, **common).gradient_checkpointing is False
    assert plan(shape, budget_bytes=without - 1, **common).gradient_checkpointing is True
    assert plan(shape, budget_bytes=with_, **common).estimate.total_bytes == with_
    assert plan(shape, budget_bytes=without, gradient_checkpointing="on", **common).gradient_checkpointing is True
    short = dict(common, tokens=1024)  # short rows fit without: auto leaves checkpointing off
    assert plan(shape, budget_bytes=80 * 10 ** 9, **short).gradient_checkpointing is False


def test_a_trial_that_cannot_fit_raises_one_line_naming_the_numbers():
    shape = llama_3b()
    common = dict(weight_bytes=2, lora_r=64, tokens=16384, attn_implementation="sdpa", device_type="cuda")
    with pytest.raises(MemoryPlanError) as raised:
        plan(shape, budget_bytes=12 * 10 ** 9, **common)
    message = str(raised.value)
    estimate = estimate_peak(shape, gradient_checkpointing=True, **common)
    assert "\n" not in message
    for needed in (f"{estimate.total_bytes / GB:.1f} GB", "weights 6.4 GB", "budget of 12.0 GB", "cuda",
                   "with gradient checkpointing", "--micro_batch_tokens (now 16384)", "--max_length",
                   "largest r is 64", "GPU with more memory"):
        assert needed in message, (needed, message)
    assert "--gradient_checkpointing on" not in message  # it was on already

    with pytest.raises(MemoryPlanError, match=r"without gradient checkpointing.*--gradient_checkpointing on"):
        plan(shape, budget_bytes=80 * 10 ** 9, gradient_checkpointing="off", **common)


def test_flash_attention_is_suggested_when_it_would_fit():
    shape = llama_3b()
    common = dict(weight_bytes=2, lora_r=64, tokens=32768, device_type="cuda", gradient_checkpointing="on")
    flash = estimate_peak(shape, weight_bytes=2, lora_r=64, tokens=32768, gradient_checkpointing=True,
                          attn_implementation="flash_attention_2").total_bytes
    with pytest.raises(MemoryPlanError, match="flash_attention_2"):
        plan(shape, budget_bytes=flash, attn_implementation="sdpa", **common)
    assert plan(shape, budget_bytes=flash, attn_implementation="flash_attention_2", **common).gradient_checkpointing


# (d) the known fact about GPUs: at 16k tokens a 3B model does not fit on one 80 GB GPU without checkpointing
@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_a_3b_llama_at_16k_tokens_needs_checkpointing_on_an_80_gb_gpu(attn):
    shape = llama_3b()
    common = dict(weight_bytes=2, lora_r=64, tokens=16384, attn_implementation=attn, device_type="cuda")
    assert estimate_peak(shape, gradient_checkpointing=False, **common).total_bytes > 80 * GB
    on = estimate_peak(shape, gradient_checkpointing=True, **common)
    assert on.total_bytes < 80 * GB
    assert plan(shape, budget_bytes=80 * 10 ** 9, **common).gradient_checkpointing is True
    assert on.describe().startswith("weights 6.4 GB + LoRA/optimizer 1.6 GB + activations ")
