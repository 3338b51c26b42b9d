"""Throughput as the GPU sees it: real (non-padding) tokens per second, and the model FLOPs utilization.

MFU follows the usual convention (PaLM, torchtitan): 6 N + 12 L d ctx FLOPs per trained token, where N counts
the weights of every linear layer except the LoRA adapters (the input embedding is a lookup, not a matmul),
L the layers, d the attention width (heads x head dim) and ctx the token-weighted sequence length
sum(len^2) / sum(len) of the trained pairs. A frozen base never computes its weight gradients, so a LoRA trial
does about 4 N of that 6 N: its MFU reads lower than the same step's hardware utilization. The denominator is
the card's dense bf16 peak from its datasheet.
"""

from dataclasses import dataclass

import torch

# Dense bf16 tensor-core peak FLOP/s by card name (datasheet values, approximate: boost clocks, no sparsity).
# Checked in order; the first entry whose every substring appears in torch.cuda.get_device_name() wins.
PEAK_BF16_FLOPS = [
    (("H100", "PCIE"), 756e12),
    (("H100", "NVL"), 835e12),
    (("H100",), 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    (("H200",), 989e12),
    (("GH200",), 989e12),
    (("B200",), 2250e12),
    (("A100",), 312e12),
    (("L40S",), 362e12),
    (("L4",), 121e12),
    (("A10G",), 125e12),
    (("4090",), 165e12),
]


def peak_bf16_flops(card: str) -> float | None:
    name = card.upper()
    for needles, flops in PEAK_BF16_FLOPS:
        if all(n in name for n in needles):
            return flops
    return None


def flops_per_token(matmul_params: int, layers: int, attention_width: int, ctx: float) -> float:
    """6 N + 12 L d ctx: forward and backward of every matmul weight, and of attention's QK^T and AV."""
    return 6.0 * matmul_params + 12.0 * layers * attention_width * ctx


def matmul_params(model) -> int:
    """Weights of every linear layer of the base model (the LoRA adapters left out)."""
    return sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and "lora_" not in name)


@dataclass(frozen=True)
class Throughput:
    matmul_params: int
    layers: int
    attention_width: int
    peak_flops: float | None  # None off a known GPU: no MFU

    @classmethod
    def of(cls, model, device: torch.device) -> "Throughput":
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        peak = peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        return cls(matmul_params(model), config.num_hidden_layers, config.num_attention_heads * head_dim, peak)

    def mfu(self, tokens_per_s: float, ctx: float) -> float | None:
        if not self.peak_flops:
            return None
        return tokens_per_s * flops_per_token(self.matmul_params, self.layers, self.attention_width, ctx) / self.peak_flops
