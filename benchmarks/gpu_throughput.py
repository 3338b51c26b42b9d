"""The product's LoRA training step on one GPU: real-token throughput, MFU and peak memory against the memory
planner's estimate, for Llama-shape models built from a config (random weights, no download). Issues 12 and 22.

Issue 22's matrix (ISSUE22_ROWS: 3B at 16k packed under sdpa, varlen and FlexAttention with the planner's partial
checkpointing, today's all-layers sdpa row as the baseline, Liger's fused kernels, 8B at 4k and 16k, and 2k rows),
one fresh process per row, each attention's first row checking that packed pairs stay apart; one JSON object at the
end, progress on stderr. Made to fit a 15-minute GPU lease: no row starts after --time_limit_s:

    .venv/bin/python benchmarks/gpu_throughput.py --matrix --time_limit_s 420 --out benchmarks/measured/gpu_matrix_issue22.json

The earlier grid (1B/3B x 2k/16k x packed/padded x all layers/none): --matrix --matrix_set issue12.

One configuration, and the opt-in GPU test:

    .venv/bin/python benchmarks/gpu_throughput.py --model 3b --seq_len 16384 --gradient_checkpointing --check_packing
    .venv/bin/python benchmarks/gpu_throughput.py --model 1b --seq_len 16384 --no-packing --gradient_checkpointing
    .venv/bin/python benchmarks/gpu_throughput.py --model 1b --attn flash_attention_2     # needs flash-attn
    LORA_SWEEP_GPU=1 .venv/bin/python -m pytest -q tests/test_gpu_benchmark.py

On the CPU (what tests/test_gpu_benchmark.py runs):

    .venv/bin/python benchmarks/gpu_throughput.py --model tiny --seq_len 1024 --steps 2 --warmup 1 --check_packing
    .venv/bin/python benchmarks/gpu_throughput.py --model 3b --seq_len 16384 --dry_run     # meta device: no memory
    .venv/bin/python benchmarks/gpu_throughput.py --matrix --dry_run --memory_gb 79.6       # the planner's verdicts

Models (`--model`), `LlamaForCausalLM(config)` created directly on the GPU in bf16 (fp32 on the CPU):
  1b    TinyLlama-1.1B shape: hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632, vocab 32000, untied;
        1,100,048,384 parameters.
  3b    Llama-3.2-3B shape: hidden 3072, 28 layers, 24 heads, 8 KV heads, MLP 8192, vocab 128256, tied embeddings,
        rope_theta 500000 (llama3 RoPE scaling); 3,212,749,824 parameters.
  tiny  the same architecture at a few million parameters, for the CPU.
LoRA is the product's: `build_lora_model` (r = alpha = --lora_r, 64 by default, every linear layer, fp32 adapters
over the bf16 base, no dropout, checkpointing of every decoder layer with --gradient_checkpointing).

The step is the product's: one micro-batch through `backward_micro_batch` (the validators' per-pair loss from the
last hidden states, in 2k-token slices of recomputed logits) and an AdamW step over the adapters, timed between two
CUDA synchronisations. `--warmup` steps are run first, untimed.

The data: synthetic pairs (random token ids, a prompt of 8-32 tokens masked from the loss) whose lengths follow a
long-tailed log-normal mix, median 384 tokens and sigma 1 (95th percentile ~2,000), clipped to [64, --seq_len].
  packed  (`--packing`, the product's default) each step is one micro-batch of at most --seq_len tokens, laid out
          as a trial lays it out: flash-attention 2, one `packed_micro_batch` row; sdpa and eager (which compute a
          row's whole T x T), rows as long as the step's longest pair, first-fit by the product's `pack_first_fit`.
          Only the shorter rows are topped up with padding (padding_efficiency near 1).
  padded  (`--no-packing`) each step is one `padded_micro_batch` of --batch_size consecutive pairs, right-padded to
          the longest; --batch_size defaults to the pairs a packed row holds on average (--seq_len / mean length),
          so both modes put the same real tokens through a forward pass and differ in the padding computed.

What the JSON printed last means (one object on the last line of stdout; --out writes it to a file too):
  card              torch.cuda.get_device_name(), or "cpu"; every figure is for that card.
  tokens_per_s      real (pair, not padding) input tokens trained per second over the timed steps.
  step_s            mean time of one step (forward + backward + AdamW); step_s_median beside it.
  mfu               flops_per_token x tokens_per_s / the card's dense bf16 peak (trainables.throughput's table, or
                    --peak_tflops); flops_formula says the convention: 6N + 12 L d ctx per real token, N = every
                    nn.Linear weight of the base (lm_head included, the input embedding and LoRA not), L layers,
                    d = heads x head_dim, ctx = sum(len^2) / sum(len) over the timed pairs. Padding earns nothing.
  mfu_hardware      the same with the FLOPs this step really computes (hardware_formula): a frozen base has no
                    weight gradients (4N, not 6N), the adapters cost 6 N_lora, the loss's logits are made again in
                    the backward pass (2 N_head), checkpointing runs the decoder layers' forward twice.
  peak_mem_gb       torch.cuda.max_memory_allocated() over every step, warm-up included (weights, adapters and their
                    AdamW state, activations), in GB of 1e9 bytes; peak_reserved_gb: what torch's allocator reserved.
  memory_estimate_gb  trainables.memory_plan.estimate_peak for this exact configuration (model shape, bf16, r, the
                    largest micro-batch's rows x width, checkpointing, attention); estimate_over_measured = it /
                    peak_mem_gb. Neither counts the CUDA context or the allocator's fragmentation.
  padding_efficiency  real tokens / computed positions (rows x width) over the timed steps.
On the CPU, peak_mem_gb, estimate_over_measured and both MFUs are null.
`--check_packing` first checks, on a tiny model with the same attention on the same device, that the product's
packed row gives every pair the loss it gets alone (and padded), and that the same row without restarting position
ids (the control) does not.

`--matrix` runs 1b and 3b x 2,048 and 16,384 tokens x packed and padded x checkpointing off and on, each row in a
fresh process (so peaks do not mix) with --warmup 2 --steps 5 unless given. A row the planner says will not fit the
card (its estimate over the card's memory less the product's 1.5 GiB CUDA reserve) is skipped, saying so; a row
that runs out of memory anyway is recorded as such. The summary and goal fields sum it up against the issue's goals:
>= 40% MFU for 3b at 16,384 packed tokens on an H100, and every estimate within 15% of the measured peak.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's packages are importable
    sys.path.insert(0, str(REPO))

from trainables.data import TokenizedSplit  # noqa: E402
from trainables.evaluation import per_pair_means, token_losses  # noqa: E402
from trainables.memory_plan import GB, MemoryEstimate, ModelShape, estimate_peak  # noqa: E402
from trainables.packing import pack_first_fit, packed_micro_batch, padded_micro_batch, real_tokens  # noqa: E402
from trainables.throughput import Throughput, flops_per_token  # noqa: E402

SCRIPT = Path(__file__).resolve()

SHAPES = {
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=704, vocab_size=4096, tie_word_embeddings=False),
    "1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,   # TinyLlama
               intermediate_size=5632, vocab_size=32000, tie_word_embeddings=False),
    "3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,   # Llama-3.2
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=131072,
               rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,   # Llama-3-8B
               intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=8192,
               rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
}

MEDIAN_PAIR_TOKENS, PAIR_SIGMA, MIN_PAIR_TOKENS, PROMPT_TOKENS = 384, 1.0, 64, (8, 32)

FLOPS_FORMULA = ("6*N + 12*L*d*ctx per real token (trainables.throughput.flops_per_token): N = weights of every "
                 "nn.Linear of the base incl. lm_head (not the input embedding, not LoRA), L layers, "
                 "d = heads*head_dim, ctx = sum(len^2)/sum(len) over the pairs; causal attention not halved")
HARDWARE_FORMULA = ("4*N + 6*N_lora + 12*L*d*ctx + 2*N_head per real token (frozen base: forward + activation "
                    "gradients only; the loss slices' logits made again in the backward pass); checkpointing adds "
                    "2*(N - N_head) + 2*N_lora + 4*L*d*ctx (each decoder layer's forward again)")

MATRIX_MODELS, MATRIX_SEQ_LENS = ("1b", "3b"), (2048, 16384)
GOAL_MFU, GOAL_MFU_8B, GOAL_ESTIMATE_ERROR = 0.45, 0.60, 0.15  # issue 22: 3B at 16k packed; 8B at 4k (6N)


# ---------------------------------------------------------------------------------------------------- FLOPs

def token_weighted_ctx(lengths) -> float:
    """sum(L^2) / sum(L): 12*L*d*ctx per token then sums to exactly 12*L*d*len^2 per pair, as the product counts."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return float((lengths ** 2).sum() / lengths.sum()) if lengths.sum() else 0.0


def hardware_flops_per_token(matmul_params: int, lora_params: int, head_params: int, layers: int,
                             attention_width: int, ctx: float, checkpointed_layers: int) -> float:
    """What the product's LoRA step computes per real token (HARDWARE_FORMULA): each checkpointed decoder layer
    runs its forward pass again, so the recompute is that share of the layers' forward work."""
    attention = 12.0 * layers * attention_width * ctx
    flops = 4.0 * matmul_params + 6.0 * lora_params + attention + 2.0 * head_params
    share = checkpointed_layers / layers if layers else 0.0
    return flops + share * (2.0 * (matmul_params - head_params) + 2.0 * lora_params + attention / 3)


# ---------------------------------------------------------------------------------------------------- model

def llama_config(model: str, seq_len: int, attn: str):
    from transformers import LlamaConfig

    shape = {"max_position_embeddings": max(2048, seq_len), **SHAPES[model]}
    return LlamaConfig(**shape, rms_norm_eps=1e-5, hidden_act="silu", use_cache=False, attn_implementation=attn)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(config, device, dtype: torch.dtype, lora_r: int | None, checkpointed_layers: int,
                fused: str = "off"):
    """LlamaForCausalLM(config), random weights created directly on `device` in `dtype`; with lora_r, wrapped by the
    product's build_lora_model (fp32 adapters on every linear layer, the first `checkpointed_layers` decoder layers
    checkpointed), after the product's fused kernels where `fused` asks (trainables.fused_kernels)."""
    from transformers import LlamaForCausalLM

    from trainables import fused_kernels
    from trainables.lora_trial import build_lora_model

    with torch.device(device), default_dtype(dtype):
        model = LlamaForCausalLM(config)
    if lora_r is None:
        return model
    if device.type != "meta":
        print(f"kernels: {fused_kernels.apply(model, fused, device)}", file=sys.stderr)
    with torch.device(device):
        return build_lora_model(model, lora_r, lora_r, 0.0, checkpointed_layers)


def checkpointed(args, config) -> int:
    """--checkpointed_layers, else every layer with --gradient_checkpointing, else none."""
    if args.checkpointed_layers is not None:
        return min(args.checkpointed_layers, config.num_hidden_layers)
    return config.num_hidden_layers if args.gradient_checkpointing else 0


def param_counts(model) -> dict[str, int]:
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"params_total": sum(p.numel() for p in model.parameters()),
            "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "params_lora": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n),
            "params_lm_head": causal_lm.lm_head.weight.numel()}


# ---------------------------------------------------------------------------------------------------- data

def pair_lengths(n: int, seq_len: int, seed: int) -> np.ndarray:
    """n seeded pair lengths of the long-tailed mix, clipped to [MIN_PAIR_TOKENS, seq_len]."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(math.log(MEDIAN_PAIR_TOKENS), PAIR_SIGMA, size=n)
    return np.clip(lengths, min(MIN_PAIR_TOKENS, seq_len), seq_len).astype(np.int64)


def default_batch_size(seq_len: int) -> int:
    """Padded pairs per micro-batch: as many as a packed row of seq_len tokens holds on average."""
    return max(1, round(seq_len / float(pair_lengths(100_000, seq_len, seed=12345).mean())))


def synthetic_split(lengths: np.ndarray, vocab_size: int, seed: int) -> TokenizedSplit:
    """Pairs of random ids (3..vocab: not pad/bos/eos) with a prompt of 8-32 tokens, always leaving a response."""
    rng = np.random.default_rng([seed, 1])
    prompts = np.minimum(rng.integers(PROMPT_TOKENS[0], PROMPT_TOKENS[1] + 1, size=len(lengths)), lengths - 1)
    return TokenizedSplit(tokens=rng.integers(3, vocab_size, size=int(lengths.sum()), dtype=np.int32),
                          offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                          prompt_lens=prompts.astype(np.int32))


def step_pairs(args, vocab_size: int) -> tuple[TokenizedSplit, list[np.ndarray]]:
    """The split and, for each step (warm-up included), the pairs of its one micro-batch."""
    n = args.warmup + args.steps
    drawn = pair_lengths(max(64, 4 * n * args.seq_len // MIN_PAIR_TOKENS), args.seq_len, args.seed)
    if args.packing:  # (n + 1) rows' worth of pairs, first-fit into rows; the first n rows
        count = int(np.searchsorted(np.cumsum(drawn), (n + 1) * args.seq_len)) + 1
    else:
        count = n * args.batch_size
    lengths = drawn[:count]
    split = synthetic_split(lengths, vocab_size, args.seed)
    if args.packing:
        rows = pack_first_fit(np.arange(len(lengths)), lengths, args.seq_len)[:n]
    else:
        rows = [np.arange(k * args.batch_size, (k + 1) * args.batch_size) for k in range(n)]
    assert len(rows) == n, "not enough pairs drawn"
    return split, rows


def micro_batches(args, split: TokenizedSplit, rows: list[np.ndarray], attn: str) -> list[dict[str, torch.Tensor]]:
    """Each step's pairs as the product lays them out: flash-attention 2, one row of --seq_len tokens; sdpa and
    eager (which compute a row's whole T x T), rows as long as the longest pair, together up to --seq_len tokens;
    padded, one pair a row."""
    from trainables.attention import skips_masked_blocks

    if not args.packing:
        return [padded_micro_batch(split, [[i] for i in pairs]) for pairs in rows]
    if skips_masked_blocks(attn):
        return [packed_micro_batch(split, [pairs]) for pairs in rows]
    lengths = np.diff(split.offsets)
    return [packed_micro_batch(split, pack_first_fit(pairs, lengths, int(lengths[pairs].max()))) for pairs in rows]


def memory_estimate(config, args, batches, weight_bytes: int, attn: str, device_type: str) -> MemoryEstimate:
    """The planner's estimate for the largest of these micro-batches (a padded one: rows x width, rows of width)."""
    shape = ModelShape.from_config(config)
    return max((estimate_peak(shape, weight_bytes=weight_bytes, lora_r=args.lora_r, tokens=b["input_ids"].numel(),
                              checkpointed_layers=checkpointed(args, config), attn_implementation=attn,
                              device_type=device_type, row_tokens=b["input_ids"].shape[1]) for b in batches),
               key=lambda estimate: estimate.total_bytes)


def data_summary(split: TokenizedSplit, rows: list[np.ndarray], batches: list[dict]) -> dict:
    """What these steps feed the model: real tokens, computed positions, pairs, and the attention's ctx."""
    lengths = np.diff(split.offsets)
    tokens = sum(real_tokens(b) for b in batches)
    return {"real_tokens": tokens, "real_tokens_per_step": tokens / len(batches),
            "padding_efficiency": tokens / sum(b["input_ids"].numel() for b in batches),
            "pairs_per_step": sum(len(r) for r in rows) / len(rows),
            "largest_micro_batch": list(max((b["input_ids"].shape for b in batches), key=lambda s: s.numel())),
            "ctx": token_weighted_ctx(np.concatenate([lengths[r] for r in rows]))}


# ---------------------------------------------------------------------------------------------------- packing check

def check_packing(attn: str, device: torch.device, seed: int = 0) -> dict:
    """The product's packed row must give every pair the loss it gets alone, and so must a padded micro-batch;
    the control, the same row without its restarting position ids (one causal sequence), must not."""
    lowp = attn in ("flash_attention_2", "varlen")  # flash kernels need 16-bit inputs
    dtype = torch.bfloat16 if lowp else torch.float32
    torch.manual_seed(seed)
    model = build_model(llama_config("tiny", 256, attn), device, dtype, None, 0).eval()
    lengths = np.array([61, 7, 130, 33])
    split = synthetic_split(lengths, model.config.vocab_size, seed)
    pairs = np.arange(len(lengths))

    def losses(batch: dict) -> list[float]:
        batch = {k: v.to(device) for k, v in batch.items()}
        return per_pair_means(token_losses(model, batch), batch).float().tolist()

    with torch.no_grad():
        alone = [losses(packed_micro_batch(split, [[i]]))[0] for i in pairs]
        packed_row = packed_micro_batch(split, [pairs])
        packed = losses(packed_row)
        padded = losses(padded_micro_batch(split, [[i] for i in pairs]))
        control = losses({k: v for k, v in packed_row.items() if k != "position_ids"})
    del model
    gc.collect()
    tolerance = 2e-2 if lowp else 1e-4
    diff = lambda xs: max(abs(x - y) for x, y in zip(xs, alone))  # noqa: E731
    ok = diff(packed) < tolerance and diff(padded) < tolerance and diff(control) > tolerance
    return {"ok": ok, "attn": attn, "dtype": str(dtype).removeprefix("torch."), "pair_lengths": lengths.tolist(),
            "loss_alone": alone, "loss_packed": packed, "loss_padded": padded,
            "loss_packed_without_position_ids_control": control, "tolerance": tolerance,
            "max_diff_packed": diff(packed), "max_diff_padded": diff(padded), "max_diff_control": diff(control)}


# ---------------------------------------------------------------------------------------------------- one run

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def resolved_attention(args, device: torch.device) -> str:
    from trainables.model_loading import resolve_attention

    if device.type == "meta":  # a dry run describes the GPU run: what auto picks on a bf16 card with this PyTorch
        from trainables.attention import choose_attention, ensure_registered, planning_facts

        attn = choose_attention(args.attn, planning_facts("cuda", True)).name
        ensure_registered(attn)  # a model built for varlen needs it known to transformers, even on the meta device
        return attn
    try:
        return resolve_attention(args.attn, device)
    except ValueError as error:
        raise SystemExit(str(error)) from None


def flops(throughput: Throughput, counts: dict, ctx: float, checkpointed_layers: int) -> dict:
    return {"flops_per_token": flops_per_token(throughput.matmul_params, throughput.layers,
                                               throughput.attention_width, ctx),
            "flops_formula": FLOPS_FORMULA,
            "hardware_flops_per_token": hardware_flops_per_token(
                throughput.matmul_params, counts["params_lora"], counts["params_lm_head"], throughput.layers,
                throughput.attention_width, ctx, checkpointed_layers),
            "hardware_formula": HARDWARE_FORMULA}


def run(args) -> dict:
    """One configuration: build, train warmup + steps micro-batches, measure."""
    from trainables.model_loading import training_dtype
    from trainables.out_of_memory import is_out_of_memory, out_of_memory_reason

    device = torch.device("meta") if args.dry_run else (
        torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else
        torch.device(args.device))
    attn = resolved_attention(args, device)
    config = llama_config(args.model, args.seq_len, attn)
    on_gpu = device.type in ("cuda", "meta")  # the dry run describes the GPU run
    dtype = torch.bfloat16 if device.type == "meta" else training_dtype(device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    split, rows = step_pairs(args, config.vocab_size)
    batches = micro_batches(args, split, rows, attn)
    estimate = memory_estimate(config, args, batches, 2 if dtype == torch.bfloat16 else 4, attn,
                               "cuda" if on_gpu else "cpu")
    result = {"card": card, "device": str(device), **versions(),
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "model_shape": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers",
                              "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                              "vocab_size", "tie_word_embeddings")},
              "attn_implementation": attn, "checkpointed_layers": checkpointed(args, config),
              "layers": config.num_hidden_layers, "fused_kernels": args.fused_kernels,
              "packing": args.packing, "batch_size": None if args.packing else args.batch_size,
              "memory_estimate_gb": estimate.total_bytes / GB,
              "memory_estimate_parts_gb": {k: v / GB for k, v in estimate.parts.items()},
              **data_summary(split, rows[args.warmup:], batches[args.warmup:])}  # the timed steps
    timed = batches[args.warmup:]
    timed_ctx = result["ctx"]

    if args.dry_run:
        model = build_model(config, device, dtype, args.lora_r, checkpointed(args, config))
        counts = param_counts(model)
        return {**result, "dry_run": True, **counts, "matmul_params": Throughput.of(model, device).matmul_params,
                **flops(Throughput.of(model, device), counts, timed_ctx, checkpointed(args, config))}
    if args.model != "tiny" and device.type == "cpu":
        raise SystemExit(f"--model {args.model} on the CPU is not a meaningful benchmark: use --model tiny, "
                         f"or --dry_run")

    if args.check_packing:
        result["packing_check"] = check_packing(attn, device, args.seed)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    torch.manual_seed(args.seed)
    losses, times = [], []
    try:
        model = build_model(config, device, dtype, args.lora_r, checkpointed(args, config), args.fused_kernels)
        train_steps(model, rows, batches, device, losses, times, args.profile, args.bf16_adapters)
    except Exception as error:  # noqa: BLE001: running out of memory is a result; the rest re-raise
        if not is_out_of_memory(error):
            raise
        result["out_of_memory"] = out_of_memory_reason(len(times) + 1, batches[len(times)]["input_ids"].numel(),
                                                       device, estimate.total_bytes / GB)
        if device.type == "cuda":
            result["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / GB
        return result

    throughput = Throughput.of(model, device)
    if args.peak_tflops:
        throughput = dataclasses.replace(throughput, peak_flops=args.peak_tflops * 1e12)
    elapsed = sum(times[args.warmup:])
    tokens = sum(real_tokens(b) for b in timed)
    tokens_per_s = tokens / elapsed
    counts = param_counts(model)
    work = flops(throughput, counts, timed_ctx, checkpointed(args, config))
    peak = torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None
    mfu = throughput.mfu(tokens_per_s, timed_ctx)
    result.update(counts)
    result.update({
        "matmul_params": throughput.matmul_params,
        "base_dtype": str(dtype).removeprefix("torch."),
        "lora_dtype": str(next(p.dtype for n, p in model.named_parameters() if "lora_" in n)).removeprefix("torch."),
        "tokens_per_s": tokens_per_s,
        "step_s": elapsed / len(timed),
        "step_s_median": statistics.median(times[args.warmup:]),
        "step_s_all": times,
        **work,
        "peak_tflops_bf16": throughput.peak_flops / 1e12 if throughput.peak_flops else None,
        "peak_tflops_source": ("--peak_tflops" if args.peak_tflops else "trainables.throughput's table (approximate "
                               "datasheet values)" if throughput.peak_flops else None),
        "mfu": mfu,
        "mfu_hardware": (tokens_per_s * work["hardware_flops_per_token"] / throughput.peak_flops
                         if throughput.peak_flops else None),
        # the anchor's convention (NeMo AutoModel): 6 x every base parameter per token, attention not counted
        "mfu_6n": (tokens_per_s * 6.0 * (counts["params_total"] - counts["params_lora"]) / throughput.peak_flops
                   if throughput.peak_flops else None),
        "achieved_tflops": tokens_per_s * work["flops_per_token"] / 1e12,
        "peak_mem_gb": peak,
        "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / GB if device.type == "cuda" else None,
        "estimate_over_measured": estimate.total_bytes / GB / peak if peak else None,
        "losses": losses,
        "finite_losses": all(math.isfinite(x) for x in losses),
    })
    return result


def train_steps(model, rows: list[np.ndarray], batches: list[dict], device: torch.device, losses: list[float],
                times: list[float], profile: Path | None = None, bf16_adapters: bool = True) -> None:
    """The product's training step (trainables.lora_trial._train) for steps of one micro-batch each: the
    validators' loss over the micro-batch's pairs, backward, AdamW; each step's mean pair loss and seconds are
    appended as they finish. Peak memory counts from here: the model built, the batches on the device."""
    from trainables.lora_trial import backward_micro_batch

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]  # on the device before timing
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i, (pairs, batch) in enumerate(zip(rows, batches)):
        last = profile is not None and i == len(batches) - 1
        profiler = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                       torch.profiler.ProfilerActivity.CUDA]) if last
                    else contextlib.nullcontext())
        with profiler:
            sync(device)
            start = time.perf_counter()
            loss_sum = backward_micro_batch(model, batch, len(pairs), bf16_adapters)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            times.append(time.perf_counter() - start)
        losses.append(loss_sum / len(pairs))
        if last:  # where the last step's time went, by kernel (the profiler slows that step: read its shares)
            sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            profile.write_text(profiler.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90))


# ---------------------------------------------------------------------------------------------------- matrix

# Issue 22's rows, most telling first (a --time_limit_s stops before the rest): 3B at 16k packed under each
# attention, with the planner's partial checkpointing (and today's all-layers sdpa row as the baseline beside it),
# the fused kernels, then 2k rows that must be no slower than before, and 8B at 4k and 16k against the anchor.
# `checkpointing`: "planned" (what --gradient_checkpointing auto gives on this card), "all", or "none".
ISSUE22_ROWS = [
    dict(model="3b", seq_len=16384, attn="sdpa", checkpointing="all"),
    dict(model="3b", seq_len=16384, attn="sdpa", checkpointing="planned"),
    dict(model="3b", seq_len=16384, attn="varlen", checkpointing="planned"),
    dict(model="3b", seq_len=16384, attn="flex_attention", checkpointing="planned"),
    dict(model="3b", seq_len=16384, attn="varlen", checkpointing="planned", fused="liger"),
    dict(model="8b", seq_len=4096, attn="varlen", checkpointing="planned"),
    dict(model="8b", seq_len=16384, attn="varlen", checkpointing="planned"),
    dict(model="3b", seq_len=2048, attn="sdpa", checkpointing="none"),
    dict(model="3b", seq_len=2048, attn="varlen", checkpointing="planned"),
    dict(model="1b", seq_len=2048, attn="sdpa", checkpointing="none"),
    dict(model="1b", seq_len=2048, attn="varlen", checkpointing="planned"),
]


def matrix_rows(args) -> list[dict]:
    if args.matrix_set == "issue12":  # the earlier grid: sdpa/auto, packed and padded, all layers or none
        return [dict(model=m, seq_len=s, packing=p, attn=args.attn, checkpointing="all" if g else "none")
                for m in args.matrix_models for s in args.matrix_seq_lens for p in (True, False) for g in (False, True)]
    return [{"packing": True, "fused": "off", **row} for row in ISSUE22_ROWS]


def row_name(row: dict) -> str:
    return (f"{row['model']} {row['seq_len']} {'packed' if row['packing'] else 'padded'} {row['attn']} "
            f"checkpointing {row['checkpointing']}{' liger' if row.get('fused', 'off') != 'off' else ''}")


def row_flags(args, row: dict, first: bool, layers: int | None = None) -> list[str]:
    """A row's command-line flags; `layers`: the planned row's checkpointed layers (decided by run_matrix)."""
    flags = ["--model", row["model"], "--seq_len", str(row["seq_len"]),
             "--packing" if row["packing"] else "--no-packing", "--attn", row["attn"],
             "--fused_kernels", row.get("fused", "off"),
             "--warmup", str(args.warmup + (1 if row["attn"] == "flex_attention" else 0)),  # flex compiles twice
             "--steps", str(args.steps), "--lora_r", str(args.lora_r), "--seed", str(args.seed)]
    if layers is not None:
        flags += ["--checkpointed_layers", str(layers)]
    else:
        flags.append("--gradient_checkpointing" if row["checkpointing"] == "all" else "--no-gradient_checkpointing")
    if args.peak_tflops:
        flags += ["--peak_tflops", str(args.peak_tflops)]
    if args.dry_run:
        flags.append("--dry_run")
    elif first:
        flags.append("--check_packing")
    return flags


def memory_budget(args) -> tuple[str | None, float | None]:
    """(card, bytes a trial may use): --memory_gb, else the GPU nvidia-smi shows less the product's CUDA reserve
    (read without torch, which would hold a CUDA context here while the rows run)."""
    from orchestrator.gpu_cards import CUDA_RESERVE_BYTES, gpus_here

    gpus = gpus_here()
    card = gpus[0][0] if gpus else None
    if args.memory_gb:
        return card, args.memory_gb * 2**30 - CUDA_RESERVE_BYTES
    return card, (gpus[0][1] - CUDA_RESERVE_BYTES if gpus else None)


def planned_row(args, row: dict, budget: float | None) -> tuple[int, MemoryEstimate]:
    """The row's checkpointed layers and the planner's estimate for them, made here without running it: for a
    "planned" row, what --gradient_checkpointing auto chooses for this budget (MemoryPlanError when nothing fits)."""
    from trainables.memory_plan import plan

    row_args = parse_args(row_flags(args, row, first=False))
    attn = resolved_attention(row_args, torch.device("meta"))
    config = llama_config(row_args.model, row_args.seq_len, attn)
    split, rows = step_pairs(row_args, config.vocab_size)
    batches = micro_batches(row_args, split, rows, attn)
    largest = max(batches, key=lambda b: b["input_ids"].numel())
    if row["checkpointing"] == "planned" and budget is not None:
        decided = plan(ModelShape.from_config(config), weight_bytes=2, lora_r=row_args.lora_r,
                       tokens=largest["input_ids"].numel(), budget_bytes=int(budget), attn_implementation=attn,
                       device_type="cuda", row_tokens=largest["input_ids"].shape[1])
        layers = decided.checkpointed_layers
    else:
        layers = {"all": config.num_hidden_layers, "none": 0}.get(row["checkpointing"], config.num_hidden_layers)
    row_args.checkpointed_layers = layers
    return layers, memory_estimate(config, row_args, batches, 2, attn, "cuda")


def run_matrix(args) -> dict:
    from trainables.memory_plan import MemoryPlanError, margin_bytes

    started = time.perf_counter()
    card, budget = memory_budget(args)
    results = []
    for row in matrix_rows(args):
        name = row_name(row)
        if args.time_limit_s and time.perf_counter() - started > args.time_limit_s:
            results.append({**row, "status": "skipped", "reason": f"over --time_limit_s {args.time_limit_s}"})
            continue
        try:
            layers, estimate = planned_row(args, row, budget)
        except MemoryPlanError as error:
            entry = {**row, "status": "skipped", "reason": str(error)}
            print(f"[matrix] {name}: skipped (the planner refuses it)", file=sys.stderr, flush=True)
            results.append(entry)
            continue
        entry = {**row, "flags": row_flags(args, row, first=False, layers=layers),
                 "memory_estimate_gb": estimate.total_bytes / GB, "checkpointed_layers": layers}
        if budget is not None and estimate.total_bytes + margin_bytes(estimate.total_bytes) > budget:
            entry.update(status="skipped", reason=f"the planner estimates {estimate.describe()} and its margin, over "
                                                  f"the {budget / GB:.1f} GB a trial may use on {card or 'this card'}")
            print(f"[matrix] {name}: skipped ({entry['reason']})", file=sys.stderr, flush=True)
            results.append(entry)
            continue
        first = all(r["status"] == "skipped" for r in results) or row["attn"] not in {
            r["attn"] for r in results if r["status"] != "skipped"}  # each attention's first row checks packing
        command = [sys.executable, str(SCRIPT), *row_flags(args, row, first, layers=layers)]
        t0 = time.perf_counter()
        timeout = args.row_timeout * (2.5 if row["attn"] == "flex_attention" else 1)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            output = done.stdout.strip().splitlines()
            measured = json.loads(output[-1]) if output and output[-1].startswith("{") else None
            if measured is None:
                entry.update(status="failed", reason=f"exit {done.returncode}: {done.stderr[-1500:]}")
            else:
                entry.update(measured, status="out_of_memory" if "out_of_memory" in measured else "ok")
        except subprocess.TimeoutExpired:
            entry.update(status="timed_out", reason=f"over the row's timeout of {timeout:.0f} s")
        entry["row_wall_s"] = time.perf_counter() - t0
        print(f"[matrix] {name}: {entry['status']} in {entry['row_wall_s']:.0f} s  "
              f"{json.dumps(summarise(entry))}", file=sys.stderr, flush=True)
        results.append(entry)
    summary = [summarise(r) for r in results]
    return {"matrix": args.matrix_set, "card": card, "memory_budget_gb": budget / GB if budget else None,
            "flops_formula": FLOPS_FORMULA, "hardware_formula": HARDWARE_FORMULA,
            "goal": goal(results), "summary": summary, "rows": results, "wall_s": time.perf_counter() - started}


SUMMARY_KEYS = ("model", "seq_len", "packing", "attn", "checkpointing", "checkpointed_layers", "layers", "fused", "status",
                "tokens_per_s", "mfu", "mfu_6n",
                "mfu_hardware", "padding_efficiency", "peak_mem_gb", "memory_estimate_gb", "estimate_over_measured",
                "attn_implementation", "reason", "out_of_memory")


def summarise(row: dict) -> dict:
    return {k: (round(row[k], 4) if isinstance(row[k], float) else row[k])
            for k in SUMMARY_KEYS if row.get(k) is not None}


def goal(rows: list[dict]) -> dict:
    """The issue's two goals, from the rows that ran."""
    target = [r for r in rows if r["model"] == "3b" and r["seq_len"] == 16384 and r["packing"]
              and r.get("mfu") is not None]
    ratios = [r["estimate_over_measured"] for r in rows if r.get("estimate_over_measured")]
    best = max((r["mfu"] for r in target), default=None)
    worst = max((abs(x - 1) for x in ratios), default=None)
    best_8b = max((r["mfu_6n"] for r in rows if r["model"] == "8b" and r["seq_len"] == 4096
                   and r.get("mfu_6n") is not None), default=None)
    planned_out_of_memory = [row_name(r) for r in rows if r.get("status") == "out_of_memory"]
    return {"mfu_3b_16k_packed": best, "mfu_goal": GOAL_MFU, "mfu_met": best is not None and best >= GOAL_MFU,
            "mfu_6n_8b_4k": best_8b, "mfu_6n_goal_8b": GOAL_MFU_8B,
            "worst_estimate_error": worst, "estimate_goal": GOAL_ESTIMATE_ERROR,
            "estimate_met": worst is not None and worst <= GOAL_ESTIMATE_ERROR,
            "planned_rows_out_of_memory": planned_out_of_memory}


# ---------------------------------------------------------------------------------------------------- CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(SHAPES), default="1b")
    p.add_argument("--attn", choices=["auto", "sdpa", "flash_attention_2", "varlen", "flex_attention", "eager"],
                   default="auto", help="auto: as the product (trainables.attention.choose_attention)")
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=False,
                   help="checkpoint every decoder layer (--checkpointed_layers K: the first K)")
    p.add_argument("--checkpointed_layers", type=int, default=None, help="checkpoint the first K decoder layers")
    p.add_argument("--fused_kernels", choices=["off", "liger"], default="off",
                   help="liger: Liger's fused RMSNorm, RoPE and SwiGLU (trainables.fused_kernels)")
    p.add_argument("--seq_len", type=int, default=2048, help="tokens a packed row holds at most; pairs are clipped "
                                                             "to it")
    p.add_argument("--batch_size", type=int, default=None,
                   help="pairs per padded micro-batch; default: as many as a packed row holds on average")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; --matrix: 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2)")
    p.add_argument("--lora_r", type=int, default=64)
    p.add_argument("--peak_tflops", type=float, default=None, help="the card's dense bf16 peak, over the table")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check_packing", action="store_true",
                   help="first check packed losses == per-pair losses on a tiny model (same attention and device)")
    p.add_argument("--dry_run", action="store_true",
                   help="meta device: parameter counts, FLOPs per token and the planner's estimate, no training")
    p.add_argument("--matrix", action="store_true", help="a matrix of rows, one fresh process per row")
    p.add_argument("--matrix_set", choices=["issue22", "issue12"], default="issue22",
                   help="issue22: each attention, planned partial checkpointing, fused kernels, 8B (ISSUE22_ROWS); "
                        "issue12: the earlier grid of models x lengths x packed/padded x checkpointing all/none")
    p.add_argument("--time_limit_s", type=float, default=None,
                   help="--matrix: start no row after this many seconds (rows left are recorded as skipped)")
    p.add_argument("--matrix_models", type=lambda s: s.split(","), default=list(MATRIX_MODELS))
    p.add_argument("--matrix_seq_lens", type=lambda s: [int(x) for x in s.split(",")], default=list(MATRIX_SEQ_LENS))
    p.add_argument("--memory_gb", type=float, default=None,
                   help="--matrix: the card's memory in GiB (default: nvidia-smi's); rows over it less 1.5 GiB are "
                        "skipped")
    p.add_argument("--row_timeout", type=int, default=120, help="--matrix: seconds a row may take")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--bf16_adapters", action=argparse.BooleanOptionalAction, default=True,
                   help="the product's LoRA matmuls in bf16 over a bf16 base (--no-bf16_adapters: peft's fp32 path)")
    p.add_argument("--profile", type=Path, default=None,
                   help="write torch.profiler's table of the last step's kernels here (that step runs slower)")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 5 if args.matrix else 10
    if args.warmup is None:
        args.warmup = 2
    if args.batch_size is None:
        args.batch_size = default_batch_size(args.seq_len)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_matrix(args) if args.matrix else run(args)
    text = json.dumps(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    if "out_of_memory" in result:
        return 3
    return 0 if result.get("packing_check", {"ok": True})["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
