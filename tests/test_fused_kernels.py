"""--fused_kernels: which trials get Liger's fused RMSNorm, RoPE and SwiGLU, decided purely; the kernels themselves
are Triton (CUDA only), so applying them is covered by the opt-in GPU benchmark (benchmarks/gpu_throughput.py)."""

import pytest
import torch

from trainables import fused_kernels
from trainables.fused_kernels import MEASURED_FASTER, choose


def test_auto_is_off_until_a_card_is_measured_faster():
    assert choose("auto", "cpu", None, installed=True) == (False, "fused kernels off: CPU")
    assert choose("auto", "cuda", "NVIDIA H100 80GB HBM3", installed=True)[0] is ("NVIDIA H100 80GB HBM3" in
                                                                                  MEASURED_FASTER)
    assert choose("off", "cuda", "any", installed=True) == (False, "fused kernels off (--fused_kernels off)")


def test_liger_is_refused_in_one_line_where_it_cannot_run():
    with pytest.raises(ValueError, match="needs a CUDA GPU") as cpu:
        choose("liger", "cpu", None, installed=True)
    with pytest.raises(ValueError, match="pip install liger-kernel") as missing:
        choose("liger", "cuda", "NVIDIA H100 80GB HBM3", installed=False)
    assert "\n" not in str(cpu.value) + str(missing.value)
    assert choose("liger", "cuda", "NVIDIA H100 80GB HBM3", installed=True)[0] is True


def test_the_loss_is_never_fused_it_must_stay_per_pair():
    assert fused_kernels.LIGER_KWARGS["fused_linear_cross_entropy"] is False
    assert fused_kernels.LIGER_KWARGS["cross_entropy"] is False


def test_apply_leaves_a_cpu_model_untouched(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, trust_remote_code=False)
    before = {name: type(m) for name, m in model.named_modules()}
    assert fused_kernels.apply(model, "auto", torch.device("cpu")) == "fused kernels off: CPU"
    assert {name: type(m) for name, m in model.named_modules()} == before
