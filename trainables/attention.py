"""Which attention a trial runs, and why; and PyTorch's own variable-length attention as a transformers attention.

A packed micro-batch holds many pairs, each attending only to itself (its position ids restart at 0). sdpa and
eager are fed a dense T x T block-diagonal mask and compute every tile of it, the masked ones included, so a trial
under them cuts its micro-batch into rows as long as the longest pair. Three implementations are given the pairs'
boundaries instead and skip the masked blocks, so a micro-batch is ONE long row (`skips_masked_blocks`):

- flash_attention_2: the flash-attn package (CUDA), fed the boundaries from the restarting position ids;
- varlen: `torch.nn.attention.varlen.varlen_attn` (PyTorch 2.10 or later, its own flash kernels, CUDA, bf16),
  registered here as a transformers attention implementation and fed the cumulative sequence lengths of the row;
- flex_attention: transformers' FlexAttention, whose block mask transformers builds from the restarting position
  ids (a document mask: blocks that cross pairs are skipped). It compiles on first use: once for the first shape,
  once more when a second shape makes dynamo treat the length as dynamic, then never again (measured on the CPU).
  Rows are not padded to one fixed width to save that second compile: the last micro-batch of each step would
  then compute up to a whole micro-batch of padding.

`--attn_implementation auto` picks the first of these that can run, then sdpa (`choose_attention`, pure; the facts
it decides on are gathered by `attention_facts` on a worker and `planning_facts` on the driver). PyTorch 2.13 has no
varlen kernel and no FlexAttention backward on the CPU, so on the CPU auto is sdpa, as before.
"""

from __future__ import annotations

import importlib.util
import inspect

import torch

from trainables.attention_choice import (VARLEN, AttentionChoice, AttentionFacts, choose_attention,  # noqa: F401
                                         skips_masked_blocks)

def _has_varlen() -> bool:
    """torch.nn.attention.varlen.varlen_attn, taking k and v at the kv heads (enable_gqa) and a sliding window."""
    if not _has_module("torch.nn.attention.varlen"):
        return False
    from torch.nn.attention.varlen import varlen_attn

    return {"enable_gqa", "window_size"} <= set(inspect.signature(varlen_attn).parameters)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def attention_facts(device: torch.device) -> AttentionFacts:
    """The facts on this worker, for the device it trains on."""
    cuda = device.type == "cuda"
    flash_attn = False
    if cuda:
        from transformers.utils import is_flash_attn_2_available

        flash_attn = is_flash_attn_2_available()
    flash_kernels = (cuda and torch.backends.cuda.is_flash_attention_available()
                     and torch.cuda.get_device_capability(device) >= (8, 0))
    return AttentionFacts(device.type, torch.__version__.split("+")[0], flash_attn,
                          _has_varlen(), flash_kernels,
                          cuda and _has_module("triton"))


def planning_facts(device_type: str, bf16: bool) -> AttentionFacts:
    """What the driver knows of its workers before any starts: the kind of card (nvidia-smi: `bf16` means compute
    capability 8.0 or later on every GPU) and this environment's PyTorch, which the workers share. flash-attn only
    where found here (else unknown): it is often installed on GPU workers alone. For memory it makes no difference:
    flash_attention_2 and varlen keep the same tensors and make the same one-row micro-batches. Triton is taken to
    be on the GPU workers (CUDA builds of PyTorch bring it), whatever the driver has."""
    cuda = device_type == "cuda"
    flash_attn = (True if _has_module("flash_attn") else None) if cuda else False
    return AttentionFacts(device_type, torch.__version__.split("+")[0], flash_attn,
                          _has_varlen(), cuda and bf16, cuda)


def attention_here(requested: str, device: torch.device) -> AttentionChoice:
    return choose_attention(requested, attention_facts(device))


# ------------------------------------------------------------------------------------------- document boundaries

def document_starts(position_ids: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[rows, T] bool: where a new sequence starts. A row's first token always does; so does every token whose
    position does not follow the one before (packed pairs restart at 0), and, in a padded batch, the first token of
    the padding (so real tokens never see it, and it sees only itself)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    if padding_mask is not None:
        starts[:, 1:] |= padding_mask[:, 1:] != padding_mask[:, :-1]
    return starts


def document_ids(starts: torch.Tensor) -> torch.Tensor:
    """[rows, T]: which sequence each token belongs to, numbered across the rows from 0."""
    return starts.reshape(-1).cumsum(0).view(starts.shape) - 1


def cumulative_lengths(starts: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(int32 [sequences + 1] offsets of the sequences in the flattened rows, the longest one's length): what
    varlen kernels take. Reading the longest synchronises with the GPU once, as transformers' flash path does."""
    flat = starts.reshape(-1)
    begins = flat.nonzero().view(-1)
    cu = torch.cat([begins, begins.new_tensor([flat.numel()])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


# ------------------------------------------------------------------------------------------- varlen in transformers

def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             sliding_window: int | None = None, softcap: float | None = None,
                             s_aux: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                             **kwargs) -> tuple[torch.Tensor, None]:
    """A transformers attention function (query [B, H, T, D], key/value [B, H_kv, T, D]) over
    torch.nn.attention.varlen: the rows are flattened into one sequence of B x T tokens cut at the document starts,
    so no token attends across a pair's boundary and no masked block is computed."""
    from torch.nn.attention.varlen import varlen_attn

    if dropout > 0 or softcap is not None or s_aux is not None:
        raise ValueError("varlen attention has no dropout, softcap or attention sinks: use --attn_implementation "
                         "sdpa or flex_attention for this model")
    if query.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"varlen attention runs flash kernels, in bf16 or fp16 only; this model computes in "
                         f"{query.dtype}: use --attn_implementation sdpa")
    rows, heads, width, head_dim = query.shape
    kv_heads = key.shape[1]
    if position_ids is None:
        position_ids = torch.arange(width, device=query.device)
    # a padded batch shares one row of positions; a packed one has its own per row
    position_ids = position_ids.reshape(-1, width).expand(rows, width)
    padding = attention_mask[:, -width:] if attention_mask is not None else None
    cu, longest = cumulative_lengths(document_starts(position_ids, padding))
    # causal, and within a sliding window where the model has one (transformers: keys in (q - window, q])
    window = (-1, 0) if sliding_window is None else (sliding_window - 1, 0)
    out = varlen_attn(query.transpose(1, 2).reshape(rows * width, heads, head_dim),
                      key.transpose(1, 2).reshape(rows * width, kv_heads, head_dim),
                      value.transpose(1, 2).reshape(rows * width, kv_heads, head_dim),
                      cu, cu, longest, longest, scale=scaling, window_size=window, enable_gqa=kv_heads != heads)
    return out.view(rows, width, heads, head_dim), None


def _padding_mask_only(batch_size: int, q_length: int, kv_length: int, attention_mask: torch.Tensor | None = None,
                       **kwargs) -> torch.Tensor | None:
    """varlen's mask in transformers' mask interface: the 2D padding mask (None where nothing is padding). Causality
    and the pairs' boundaries come from the position ids in the attention function itself."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask[:, -kv_length:]


def ensure_registered(attention: str) -> None:
    """Make `attention` known to transformers before a model is built with it (varlen is ours; the rest are its)."""
    if attention != VARLEN:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    # without a mask function of its own transformers would hand a custom attention no padding mask at all
    AttentionMaskInterface.register(VARLEN, _padding_mask_only)
