"""Over a bf16 base the LoRA matmuls run in bf16 from fp32 master weights (BENCHMARKS.md §5: 1.38x on a 3B
model at 16k tokens on an H200); over an fp32 base nothing changes. CPU autocast stands in for the GPU's."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from trainables.lora_trial import backward_micro_batch, build_lora_model
from trainables.packing import packed_micro_batch


def lora_model(model_dir, dtype):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, trust_remote_code=False, dtype=dtype)
    model = build_lora_model(base, r=8, alpha=16, dropout=0.0, checkpointed_layers=0)
    for name, param in model.named_parameters():  # lora_B starts at zero: give the adapters something to do
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    return model


def step(model, batch, pairs, bf16_adapters):
    """One backward pass; the dtypes the adapters computed in, the loss and the adapters' gradients."""
    seen = set()
    hooks = [module.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for name, module in model.named_modules() if name.endswith("lora_A.default")]
    model.zero_grad(set_to_none=True)
    loss = backward_micro_batch(model, batch, pairs, bf16_adapters=bf16_adapters) / pairs
    for hook in hooks:
        hook.remove()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return seen, loss, grads


@pytest.fixture(scope="module")
def batch(sweep_data):
    rows = [[0, 1, 2], [3, 4]]
    return packed_micro_batch(sweep_data.train, rows), 5


def test_over_a_bf16_base_the_adapters_multiply_in_bf16_and_keep_fp32_weights_and_gradients(model_dir, batch):
    model = lora_model(model_dir, torch.bfloat16)
    micro_batch, pairs = batch
    fast_dtypes, fast_loss, fast_grads = step(model, micro_batch, pairs, bf16_adapters=True)
    slow_dtypes, slow_loss, slow_grads = step(model, micro_batch, pairs, bf16_adapters=False)
    assert fast_dtypes == {torch.bfloat16} and slow_dtypes == {torch.float32}
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in fast_grads.values())
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    # the same loss and the same descent direction, to bf16's precision
    assert abs(fast_loss - slow_loss) / slow_loss < 0.01
    fast = torch.cat([g.flatten() for g in fast_grads.values()])
    slow = torch.cat([g.flatten() for g in slow_grads.values()])
    assert torch.nn.functional.cosine_similarity(fast, slow, dim=0) > 0.98


def test_over_an_fp32_base_nothing_changes(model_dir, batch):
    model = lora_model(model_dir, torch.float32)
    micro_batch, pairs = batch
    dtypes_on, loss_on, grads_on = step(model, micro_batch, pairs, bf16_adapters=True)
    dtypes_off, loss_off, grads_off = step(model, micro_batch, pairs, bf16_adapters=False)
    assert dtypes_on == dtypes_off == {torch.float32}
    assert loss_on == loss_off
    assert all(np.array_equal(grads_on[n].numpy(), grads_off[n].numpy()) for n in grads_on)
