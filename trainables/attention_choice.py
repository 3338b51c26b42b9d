"""Which attention a trial runs, and why, decided from facts about the device and libraries (pure: no torch, so
the driver's memory planner decides as a worker would). trainables.attention gathers the facts and runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

VARLEN = "varlen"
FLEX = "flex_attention"
FLASH = "flash_attention_2"
# the implementations that take the pairs' boundaries and skip the blocks between pairs
ONE_ROW_ATTENTIONS = frozenset({FLASH, VARLEN, FLEX})


def skips_masked_blocks(attention: str) -> bool:
    """Whether `attention` skips the blocks that keep packed pairs apart: then a micro-batch is one long row, and no
    T x T mask exists. The one place this is decided (rows, the memory planner, the benchmark)."""
    return attention in ONE_ROW_ATTENTIONS


@dataclass(frozen=True)
class AttentionFacts:
    """What decides which attention can run: the device and the libraries. `choose_attention` decides from them."""
    device_type: str        # "cuda", "cpu", ...
    torch_version: str
    # the flash-attn package runs here (a worker asks transformers); None: unknown (a driver without the package:
    # it may be on the GPU workers only). auto counts unknown as absent; an explicit flash_attention_2 passes
    flash_attn: bool | None
    varlen_module: bool     # torch.nn.attention.varlen with GQA and windows (PyTorch 2.10 shipped it; 2.13 has both)
    flash_kernels: bool     # this GPU runs PyTorch's own flash kernels: compute capability 8.0 or later, bf16
    flex_kernels: bool      # FlexAttention compiles for this GPU (triton installed)


@dataclass(frozen=True)
class AttentionChoice:
    name: str  # a transformers attn_implementation
    why: str

    def line(self) -> str:
        """e.g. 'attention: varlen (auto: torch.nn.attention.varlen on CUDA; flash-attn not installed)'"""
        return f"attention: {self.name} ({self.why})"


def _why_not(name: str, facts: AttentionFacts) -> str | None:
    """Why `name` cannot run given `facts`, in words; None if it can."""
    cuda = facts.device_type == "cuda"
    if name == FLASH:
        return "flash-attn needs a CUDA GPU" if not cuda else "flash-attn not installed" if facts.flash_attn is False \
            else None
    if name == VARLEN:
        if not cuda:
            return "torch.nn.attention.varlen needs a CUDA GPU"
        if not facts.varlen_module:
            return f"PyTorch {facts.torch_version} has no torch.nn.attention.varlen with GQA and windows"
        return None if facts.flash_kernels else "this GPU cannot run PyTorch's flash kernels (compute capability " \
                                                "8.0 or later, bf16)"
    if name == FLEX:
        if not cuda:
            return f"PyTorch {facts.torch_version} has no FlexAttention backward on the {facts.device_type.upper()}"
        return None if facts.flex_kernels else "FlexAttention needs triton to compile for the GPU"
    return None  # sdpa and eager run everywhere


def choose_attention(requested: str, facts: AttentionFacts) -> AttentionChoice:
    """auto: flash_attention_2, varlen, flex_attention, sdpa, the first that can run (all are exact: each pair sees
    only itself). An explicit choice that cannot run is refused in one line (ValueError)."""
    if requested != "auto":
        reason = _why_not(requested, facts)
        if reason is not None:
            raise ValueError(f"--attn_implementation {requested} cannot run here: {reason}; use auto or sdpa")
        return AttentionChoice(requested, "as --attn_implementation asks")
    if facts.device_type != "cuda":
        return AttentionChoice("sdpa", f"auto on the {facts.device_type.upper()}: flash-attn, varlen and "
                                       f"FlexAttention's backward need CUDA")
    passed = []
    for name in (FLASH, VARLEN, FLEX):
        reason = "flash-attn not installed" if name == FLASH and not facts.flash_attn else _why_not(name, facts)
        if reason is None:
            how = {FLASH: "the flash-attn package on CUDA", VARLEN: "torch.nn.attention.varlen on CUDA",
                   FLEX: "FlexAttention with a document block mask on CUDA"}[name]
            return AttentionChoice(name, "; ".join([f"auto: {how}", *passed]))
        passed.append(reason)
    return AttentionChoice("sdpa", "; ".join(["auto: a dense block-diagonal mask", *passed]))
