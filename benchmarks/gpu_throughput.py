"""LoRA training throughput and MFU on one GPU, for a 1B-class Llama built from a config (no download).

Run on an H100 (or any CUDA card) from the repository root:

    .venv/bin/python benchmarks/gpu_throughput.py --model 1b --attn sdpa --packing --seq_len 2048 --batch_size 8
    .venv/bin/python benchmarks/gpu_throughput.py --model 1b --attn flash_attention_2 --packing   # needs flash-attn
    .venv/bin/python benchmarks/gpu_throughput.py --model 1b --no-packing                         # padded baseline
    .venv/bin/python benchmarks/gpu_throughput.py --model 1b --gradient_checkpointing --batch_size 16
    .venv/bin/python benchmarks/gpu_throughput.py --model 1b --full_finetune                      # ceiling reference
    .venv/bin/python benchmarks/gpu_throughput.py --model 1b --check_packing                      # + correctness check

CPU smoke test (a few-M-parameter model, seconds):

    .venv/bin/python benchmarks/gpu_throughput.py --model tiny --steps 3 --warmup 1 --seq_len 256 --batch_size 2 \
        --threads 1 --check_packing
    .venv/bin/python benchmarks/gpu_throughput.py --model 1b --dry_run   # params and FLOPs/token on the meta device

The model: `--model 1b` is the TinyLlama-1.1B shape (hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632,
vocab 32000), `LlamaForCausalLM(config)` with random weights, created directly on the GPU in bf16. The training
step is the product's trial step (trainables/lora_trial.py): peft LoRA r=alpha, all-linear, no dropout, AdamW over
the trainable parameters, loss on labels. `--full_finetune` trains every weight instead (a ceiling reference).

The data: synthetic "pairs" of random token ids with lengths drawn uniformly from [--min_pair_len, --max_pair_len]
(default 64 .. seq_len/2, seeded), so padding waste is real. Padded mode: each step is `batch_size` pairs
right-padded to the longest, with attention_mask and labels -100 on padding (like trainables.data.collate).
Packed mode: pairs poured into `batch_size` rows of exactly seq_len tokens (a pair that does not fit is split; the
rest starts the next row), `position_ids` restart at 0 for every segment and there is no attention_mask; the
first token of every segment has label -100 so nothing is predicted across a boundary. transformers 5 turns such
position_ids into a block-diagonal causal mask for sdpa/eager (masking_utils.find_packed_sequence_indices). For
flash_attention_2 the rows are flattened into one row of batch_size*seq_len tokens (transformers only detects
packing for flash at batch size 1) and cu_seq_lens/max_length are passed explicitly, so the varlen kernel runs
without a per-layer device sync. `--check_packing` verifies on a small model that a packed row's loss and logits
equal those of its pairs run one at a time (and that a packed row *without* position_ids does not, as a control).

What the JSON printed at the end means (one object, the last line of stdout):
  card             torch.cuda.get_device_name() or "cpu"; every figure below is for this card.
  tokens_per_s     real (non-pad) input tokens trained per second, over the timed steps (after --warmup).
  step_s           mean wall time of one optimizer step (forward+backward+AdamW), CUDA-synchronized;
                   step_s_median alongside.
  peak_mem_gb      torch.cuda.max_memory_allocated() over the whole run (weights, optimizer, activations).
  mfu_6n           "model FLOPs utilization" as usually quoted: (6*N + 12*n_layers*d_attn*ctx) FLOPs per real token
                   times tokens_per_s, over the card's peak dense bf16 FLOP/s. N = base matmul parameters (every
                   nn.Linear incl. lm_head, excluding the input embedding lookup and the LoRA adapters), as in
                   torchtitan/PaLM. For LoRA this credits weight-gradient FLOPs that a frozen base never computes.
  mfu_hw           the FLOPs this step really executes for real tokens: frozen base 4*N (forward 2N + activation
                   gradients 2N, no weight gradients) + LoRA 6*N_lora + attention 12*n_layers*d_attn*ctx, plus the
                   recomputed forward (2*N + 2*N_lora + 4*n_layers*d_attn*ctx) under gradient checkpointing.
                   Full fine-tune: 6*N + attention (+ recompute). Work spent on padding is never counted, so
                   padding waste shows up as lower MFU.
  ctx              token-weighted mean segment length, sum(L_i^2)/sum(L_i) over the timed steps' pairs/segments,
                   so 12*n_layers*d_attn*ctx per token sums to exactly 12*n_layers*d_attn*L_i^2 per sequence
                   (causal masking not halved: the PaLM convention).
  peak_tflops_bf16 dense (non-sparse) bf16 peak from a table of approximate datasheet values by card name, or
                   --peak_tflops. On CPU the MFU figures are null.
Target: mfu_6n >= 0.35 on an H100 for the LoRA run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------------- card peaks
# The product's own table of dense bf16 peaks (trainables/throughput.py): trials report MFU against the same.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainables.throughput import peak_bf16_flops  # noqa: E402


# ---------------------------------------------------------------------------------------------------- FLOP math
# Per real (non-pad) token, for a decoder with N base matmul parameters, N_lora LoRA parameters, n_layers layers,
# attention width d_attn = n_heads*head_dim and token-weighted context ctx:
#   a matmul with P weights costs 2P FLOPs forward, 2P for the input gradient and 2P for the weight gradient;
#   attention (QK^T and AV) costs 4*n_layers*d_attn*ctx forward and twice that backward (no weights): 12*... total.
#   model (6N):  6*N + 12*n_layers*d_attn*ctx                                   (conventional MFU numerator)
#   hardware:    LoRA: 4*N + 6*N_lora + 12*n_layers*d_attn*ctx                  (frozen base: no weight grads)
#                full: 6*N + 12*n_layers*d_attn*ctx
#                gradient checkpointing adds one more forward: 2*N (+2*N_lora) + 4*n_layers*d_attn*ctx

FORMULA_6N = ("6*N + 12*n_layers*d_attn*ctx per real token; N = base matmul params (all nn.Linear incl. lm_head, "
              "excl. input embedding and LoRA), ctx = sum(L^2)/sum(L) over sequences/segments, causal not halved")


def attention_flops_per_token(n_layers: int, d_attn: int, ctx: float) -> float:
    """Forward + backward FLOPs of QK^T and AV per token, full (non-causal-halved) PaLM convention."""
    return 12.0 * n_layers * d_attn * ctx


def flops_per_token_6n(n_base: int, n_layers: int, d_attn: int, ctx: float) -> float:
    return 6.0 * n_base + attention_flops_per_token(n_layers, d_attn, ctx)


def flops_per_token_hw(n_base: int, n_lora: int, n_layers: int, d_attn: int, ctx: float, full_finetune: bool,
                       gradient_checkpointing: bool) -> float:
    attention = attention_flops_per_token(n_layers, d_attn, ctx)
    if full_finetune:
        flops = 6.0 * n_base + attention
        recompute = 2.0 * n_base + attention / 3
    else:
        flops = 4.0 * n_base + 6.0 * n_lora + attention
        recompute = 2.0 * (n_base + n_lora) + attention / 3
    return flops + (recompute if gradient_checkpointing else 0.0)


def formula_hw(full_finetune: bool, gradient_checkpointing: bool) -> str:
    base = "6*N" if full_finetune else "4*N + 6*N_lora"
    recompute = " + 2*N" + ("" if full_finetune else " + 2*N_lora") + " + 4*n_layers*d_attn*ctx (GC recompute)"
    return (base + " + 12*n_layers*d_attn*ctx" + (recompute if gradient_checkpointing else "")
            + " per real token" + ("" if full_finetune else "; frozen base: forward 2N + activation grads 2N"))


def token_weighted_ctx(segment_lengths: list[int]) -> float:
    """sum(L^2)/sum(L): the per-token context that makes 12*n_layers*d_attn*ctx per token exact per sequence."""
    total = sum(segment_lengths)
    return sum(l * l for l in segment_lengths) / total if total else 0.0


# ---------------------------------------------------------------------------------------------------- model

def llama_config(model: str, seq_len: int, attn: str):
    from transformers import LlamaConfig

    shapes = {
        # TinyLlama-1.1B shape: 1,100,048,384 parameters.
        "1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                   intermediate_size=5632, vocab_size=32000),
        # A few million parameters, same architecture, for CPU smoke tests.
        "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=704, vocab_size=4096),
    }[model]
    return LlamaConfig(**shapes, max_position_embeddings=max(2048, seq_len), rms_norm_eps=1e-5, rope_theta=10000.0,
                       tie_word_embeddings=False, hidden_act="silu", use_cache=False, bos_token_id=1,
                       eos_token_id=2, attn_implementation=attn)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(config, device: torch.device | str, dtype: torch.dtype, lora_r: int | None,
                gradient_checkpointing: bool, lora_fp32: bool = True):
    """LlamaForCausalLM(config) created directly on `device` in `dtype` (random init), LoRA-wrapped unless
    lora_r is None. lora_fp32=True is peft's default (adapters upcast to fp32), which is what the product runs."""
    from transformers import LlamaForCausalLM

    with torch.device(device), default_dtype(dtype):
        model = LlamaForCausalLM(config)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_r is None:
        return model
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: give checkpointed blocks an input that needs grad
    lora = LoraConfig(r=lora_r, lora_alpha=lora_r, lora_dropout=0.0, target_modules="all-linear", bias="none",
                      task_type="CAUSAL_LM")
    with torch.device(device):
        return get_peft_model(model, lora, autocast_adapter_dtype=lora_fp32)


def param_counts(model) -> dict[str, int]:
    """Total, trainable, base matmul (every non-LoRA nn.Linear weight) and LoRA parameter counts."""
    base_matmul = sum(m.weight.numel() for name, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and "lora_" not in name)
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    return {"params_total": sum(p.numel() for p in model.parameters()),
            "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "params_matmul_base": base_matmul, "params_lora": lora}


# ---------------------------------------------------------------------------------------------------- data

@dataclass
class Batch:
    inputs: dict            # forward kwargs (tensors on the CPU until moved)
    real_tokens: int        # non-pad input tokens
    slots: int              # input positions incl. padding
    segments: list[int]     # lengths of the independent sequences in the batch


def synthetic_pairs(seed: int, vocab_size: int, min_len: int, max_len: int) -> Iterator[np.ndarray]:
    """Endless random token-id sequences with lengths uniform in [min_len, max_len]; ids avoid 0..2 (pad/bos/eos)."""
    rng = np.random.default_rng(seed)
    while True:
        length = int(rng.integers(min_len, max_len + 1))
        yield rng.integers(3, vocab_size, size=length, dtype=np.int64)


def padded_batch(pairs: list[np.ndarray], pad_id: int = 0) -> Batch:
    width = max(len(p) for p in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for row, ids in enumerate(pairs):
        ids = torch.from_numpy(ids)
        input_ids[row, :len(ids)] = ids
        attention_mask[row, :len(ids)] = 1
        labels[row, :len(ids)] = ids
    lengths = [len(p) for p in pairs]
    return Batch({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels},
                 sum(lengths), len(pairs) * width, lengths)


def padded_batches(pairs: Iterator[np.ndarray], batch_size: int) -> Iterator[Batch]:
    while True:
        yield padded_batch([next(pairs) for _ in range(batch_size)])


def pack_rows(pairs: Iterator[np.ndarray], batch_size: int, seq_len: int, carry: list[np.ndarray]) -> list[list]:
    """Pour pairs into `batch_size` rows of exactly seq_len tokens; a pair that does not fit is split and its rest
    is left in `carry` (consumed first by the next call). Returns rows as lists of segments."""
    rows = []
    for _ in range(batch_size):
        row, room = [], seq_len
        while room:
            pair = carry.pop() if carry else next(pairs)
            if len(pair) > room:
                carry.append(pair[room:])
                pair = pair[:room]
            row.append(pair)
            room -= len(pair)
        rows.append(row)
    return rows


def packed_batch(rows: list[list[np.ndarray]], flatten: bool) -> Batch:
    """Rows of segments -> input_ids, position_ids restarting at 0 per segment, labels with -100 on each segment's
    first token (its target would come from the previous segment), no attention_mask. flatten=True makes one row
    of all tokens plus explicit cu_seq_lens/max_length (the flash-attention varlen layout)."""
    segments = [seg for row in rows for seg in row]
    lengths = [len(s) for s in segments]
    ids = [np.concatenate(row) for row in rows]
    pos = [np.concatenate([np.arange(len(s)) for s in row]) for row in rows]
    if flatten:
        ids, pos = [np.concatenate(ids)], [np.concatenate(pos)]
    input_ids = torch.from_numpy(np.stack(ids))
    position_ids = torch.from_numpy(np.stack(pos))
    labels = input_ids.masked_fill(position_ids == 0, -100)
    inputs = {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}
    if flatten:
        cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
        inputs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
    total = sum(lengths)
    return Batch(inputs, total, total, lengths)


def packed_batches(pairs: Iterator[np.ndarray], batch_size: int, seq_len: int, flatten: bool) -> Iterator[Batch]:
    carry: list[np.ndarray] = []
    while True:
        yield packed_batch(pack_rows(pairs, batch_size, seq_len, carry), flatten)


def to_device(inputs: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


# ---------------------------------------------------------------------------------------------------- packing check

def check_packing(attn: str, device: torch.device, seed: int = 0) -> dict:
    """A packed row must give the same loss (and logits) as its pairs run one at a time; so must a padded batch.
    Control: the same row without position_ids (plain causal over the whole row) must differ."""
    lowp = attn == "flash_attention_2"  # flash kernels need 16-bit inputs
    dtype = torch.bfloat16 if lowp else torch.float32
    torch.manual_seed(seed)
    model = build_model(llama_config("tiny", 256, attn), device, dtype, None, False).eval()
    rng = np.random.default_rng(seed)
    pairs = [rng.integers(3, model.config.vocab_size, size=n, dtype=np.int64) for n in (61, 7, 130, 33)]

    def run(batch: Batch):
        out = model(**to_device(batch.inputs, device))
        return out.loss.float().item(), out.logits.float()

    with torch.no_grad():
        separate = [run(padded_batch([p])) for p in pairs]
        targets = [len(p) - 1 for p in pairs]
        expected = sum(loss * n for (loss, _), n in zip(separate, targets)) / sum(targets)
        packed = packed_batch([pairs], flatten=lowp)
        packed_loss, packed_logits = run(packed)
        separate_logits = torch.cat([logits[0] for _, logits in separate])
        logits_diff = (packed_logits.reshape(-1, packed_logits.shape[-1]) - separate_logits).abs().max().item()
        padded_loss, _ = run(padded_batch(pairs))
        control = dict(packed.inputs)
        for key in ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
            control.pop(key, None)
        control_loss, _ = run(Batch(control, 0, 0, []))
    loss_tol, logits_tol = (2e-2, 1e-1) if lowp else (1e-4, 1e-3)
    ok = (abs(packed_loss - expected) < loss_tol and logits_diff < logits_tol
          and abs(padded_loss - expected) < loss_tol and abs(control_loss - expected) > loss_tol)
    return {"ok": ok, "attn": attn, "dtype": str(dtype).removeprefix("torch."), "pair_lengths": [len(p) for p in pairs],
            "loss_separate_token_weighted": expected, "loss_packed": packed_loss, "loss_padded": padded_loss,
            "max_abs_logits_diff_packed_vs_separate": logits_diff,
            "loss_packed_without_position_ids_control": control_loss, "tolerance_loss": loss_tol}


# ---------------------------------------------------------------------------------------------------- benchmark

def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(args, config) -> Iterator[Batch]:
    pairs = synthetic_pairs(args.seed, config.vocab_size, args.min_pair_len, args.max_pair_len)
    if args.packing:
        return packed_batches(pairs, args.batch_size, args.seq_len, flatten=args.attn == "flash_attention_2")
    return padded_batches(pairs, args.batch_size)


def flops_summary(args, config, counts: dict, segments: list[int], tokens: int) -> dict:
    """Total and per-token FLOPs of `tokens` real tokens whose sequences have the given segment lengths."""
    n_layers, d_attn = config.num_hidden_layers, config.num_attention_heads * config.head_dim
    ctx = token_weighted_ctx(segments)
    n_base, n_lora = counts["params_matmul_base"], counts["params_lora"]
    per_token_6n = flops_per_token_6n(n_base, n_layers, d_attn, ctx)
    per_token_hw = flops_per_token_hw(n_base, n_lora, n_layers, d_attn, ctx, args.full_finetune,
                                      args.gradient_checkpointing)
    return {"ctx": ctx, "flops_per_token_6n": per_token_6n, "flops_per_token_hw": per_token_hw,
            "flops_6n": per_token_6n * tokens, "flops_hw": per_token_hw * tokens,
            "flops_formula_6n": FORMULA_6N,
            "flops_formula_hw": formula_hw(args.full_finetune, args.gradient_checkpointing)}


def versions() -> dict:
    import peft
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "peft": peft.__version__}
    try:
        import flash_attn
        out["flash_attn"] = flash_attn.__version__
    except ImportError:
        out["flash_attn"] = None
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
    return out


def dry_run(args, config) -> dict:
    """Build on the meta device (no memory): parameter counts and FLOPs/token for this data shape."""
    model = build_model(config, "meta", torch.bfloat16, None if args.full_finetune else args.lora_r,
                        False, args.lora_dtype == "fp32")
    counts = param_counts(model)
    batches = make_batches(args, config)
    sample = [next(batches) for _ in range(args.warmup + args.steps)][args.warmup:]
    segments = [n for b in sample for n in b.segments]
    tokens = sum(b.real_tokens for b in sample)
    flops = flops_summary(args, config, counts, segments, tokens)
    return {"dry_run": True, **counts, **{k: v for k, v in flops.items() if k not in ("flops_6n", "flops_hw")},
            "real_tokens_per_step": tokens / len(sample),
            "padding_efficiency": tokens / sum(b.slots for b in sample)}


def run(args) -> dict:
    device = pick_device(args.device)
    config = llama_config(args.model, args.seq_len, args.attn)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"card": card, "device": str(device), **versions(), "config": vars(args).copy(),
              "model_shape": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers",
                              "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                              "vocab_size")}}
    if args.dry_run:
        return {**result, **dry_run(args, config)}
    if args.model == "1b" and device.type == "cpu":
        raise SystemExit("--model 1b on CPU is not a meaningful benchmark: use --model tiny, or --dry_run")
    if args.attn == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available
        if device.type != "cuda" or not is_flash_attn_2_available():
            raise SystemExit("--attn flash_attention_2 needs CUDA and the flash-attn package (pip install flash-attn)")

    if args.check_packing:
        result["packing_check"] = check_packing(args.attn, device, args.seed)

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(args.seed)
    model = build_model(config, device, dtype, None if args.full_finetune else args.lora_r,
                        args.gradient_checkpointing, args.lora_dtype == "fp32")
    model.train()
    counts = param_counts(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    batches = make_batches(args, config)
    batches = [next(batches) for _ in range(args.warmup + args.steps)]
    inputs = [to_device(b.inputs, device) for b in batches]  # on the device before timing

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = [], []
    for i, batch in enumerate(inputs):
        sync(device)
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
        losses.append(loss.detach())

    timed = batches[args.warmup:]
    elapsed = sum(times[args.warmup:])
    tokens = sum(b.real_tokens for b in timed)
    flops = flops_summary(args, config, counts, [n for b in timed for n in b.segments], tokens)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (peak_bf16_flops(card) if device.type == "cuda" else None)
    losses = [l.float().item() for l in losses]
    result.update(counts)
    result.update({
        "attn_implementation": model.config._attn_implementation,
        "dtype": str(dtype).removeprefix("torch."),
        "lora_dtype": None if args.full_finetune else str(next(
            p.dtype for n, p in model.named_parameters() if "lora_" in n)).removeprefix("torch."),
        "tokens_per_s": tokens / elapsed,
        "step_s": elapsed / len(timed),
        "step_s_median": statistics.median(times[args.warmup:]),
        "real_tokens_per_step": tokens / len(timed),
        "padding_efficiency": tokens / sum(b.slots for b in timed),
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "peak_tflops_bf16": peak / 1e12 if peak else None,
        "peak_tflops_source": ("--peak_tflops" if args.peak_tflops else
                               "approximate datasheet table" if peak else None),
        "mfu_6n": flops["flops_6n"] / elapsed / peak if peak else None,
        "mfu_hw": flops["flops_hw"] / elapsed / peak if peak else None,
        "achieved_tflops_6n": flops["flops_6n"] / elapsed / 1e12,
        "achieved_tflops_hw": flops["flops_hw"] / elapsed / 1e12,
        **{k: v for k, v in flops.items() if k not in ("flops_6n", "flops_hw")},
        "loss_first": losses[0], "loss_last": losses[-1],
        "finite_losses": all(math.isfinite(l) for l in losses),
    })
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["1b", "tiny"], default="1b")
    p.add_argument("--attn", choices=["sdpa", "flash_attention_2", "eager"], default="sdpa")
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--batch_size", type=int, default=None, help="rows (packed) or pairs (padded) per step; "
                   "default 8 for 1b, 2 for tiny")
    p.add_argument("--min_pair_len", type=int, default=64)
    p.add_argument("--max_pair_len", type=int, default=None, help="default seq_len // 2")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--lora_r", type=int, default=64)
    p.add_argument("--lora_dtype", choices=["fp32", "bf16"], default="fp32",
                   help="fp32: peft's default upcast of adapters (what the product runs); bf16: keep base dtype")
    p.add_argument("--full_finetune", action="store_true", help="no LoRA: train every weight (ceiling reference)")
    p.add_argument("--peak_tflops", type=float, default=None, help="override the card's peak dense bf16 TFLOP/s")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check_packing", action="store_true",
                   help="first verify packed loss == per-pair loss on a small model (same attention, same device)")
    p.add_argument("--dry_run", action="store_true", help="meta device only: param counts and FLOPs/token, exit")
    args = p.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 8 if args.model == "1b" else 2
    if args.max_pair_len is None:
        args.max_pair_len = args.seq_len // 2
    args.min_pair_len = min(args.min_pair_len, args.max_pair_len)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    print(json.dumps(result))
    return 0 if result.get("packing_check", {"ok": True})["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
