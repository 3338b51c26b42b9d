"""Does the memory planner's estimate match what a LoRA trial really holds? Measured on the CPU.

Each measurement runs in a fresh Python process (so nothing a previous run allocated or cached counts): it warms
up on a toy model, resets the process's peak resident set (/proc/self/clear_refs), notes the resident set, builds
a tiny random-init Llama (no download) with LoRA exactly as a trial does (`build_lora_model`), trains two AdamW
steps (`backward_micro_batch`, the trial's loss) on one packed row of T tokens made of pairs of a long-tailed
length mix, and prints one JSON line: the peak resident-set growth since before the model was built, the
planner's estimate, and their ratio.

    python -m benchmarks.memory_calibration --shape embedded --tokens 16384 --checkpointed_layers 1
    python -m benchmarks.memory_calibration --sweep   # shapes x 2k/16k tokens x none, some, all layers checkpointed

On the CPU the resident set stands for the accelerator's memory: torch's CPU sdpa, like CUDA's kernels, never
holds a T x T score matrix but does hold T x T masks (see memory_plan). glibc is told to return freed blocks at
once (`--malloc returned`, the default); with its own policy (`--malloc default`) the resident set also holds
freed heap memory, up to 2.4x the live tensors at 2k tokens and 1.1-1.45x at 16k.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's packages are importable
    sys.path.insert(0, str(REPO))

# Tiny Llama shapes, random init. "embedded" is the embedded default model's shape; "wide" has a real 32k
# vocabulary (the loss's logits matter), a wider MLP and head_dim not hidden/heads. Both keep attention narrow
# (4 heads of 64): at 16k tokens the CPU's attention time grows with T x T x heads x head_dim. "deep" is "embedded"
# with 6 layers, for checkpointing some layers where "some" is more than one of two (2k tokens only: at 16k its
# masks alone would take 7 GB).
SHAPES = {
    "embedded": dict(vocab_size=768, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2),
    "wide": dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64),
    "deep": dict(vocab_size=768, hidden_size=256, intermediate_size=512, num_hidden_layers=6,
                 num_attention_heads=4, num_key_value_heads=2),
}
SWEEP_SHAPES = {"embedded": (2048, 16384), "wide": (2048, 16384), "deep": (2048,)}  # shape: tokens
LORA_R = 16


def llama_config(shape: str, attn_implementation: str = "sdpa"):
    from transformers import LlamaConfig

    return LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=False,
                       attn_implementation=attn_implementation)


def pair_lengths(tokens: int, seed: int = 0) -> list[int]:
    """Pair lengths that fill exactly `tokens`: log-normal (median ~300, a long tail to a few thousand), as chat
    pairs are; the last pair takes whatever room is left."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths, used = [], 0
    while used < tokens:
        n = int(np.clip(rng.lognormal(mean=np.log(300), sigma=0.9), 16, 4096))
        n = min(n, tokens - used)
        lengths.append(n)
        used += n
    return lengths


def packed_row(tokens: int, vocab_size: int, seed: int = 0, rows: int = 1) -> tuple[dict, int]:
    """A packed micro-batch of `rows` rows of tokens // rows tokens each, made by the trial's own packer, and its
    number of pairs."""
    import numpy as np

    from trainables.data import TokenizedSplit
    from trainables.packing import packed_micro_batch

    per_row = [pair_lengths(tokens // rows, seed + k) for k in range(rows)]
    lengths = [n for row in per_row for n in row]
    rng = np.random.default_rng(seed + rows)
    split = TokenizedSplit(tokens=rng.integers(3, vocab_size, size=sum(lengths)).astype(np.int32),
                           offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                           prompt_lens=np.array([max(1, n // 3) for n in lengths], dtype=np.int32))
    starts = np.cumsum([0] + [len(row) for row in per_row])
    return packed_micro_batch(split, [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])]), len(lengths)


def _return_freed_memory() -> None:
    """Make glibc's malloc give every freed block of 64 KiB or more straight back to the kernel.

    By default glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so later
    tensors of up to that size come from the heap, whose freed memory stays resident: the resident set then runs
    well above the tensors alive at any moment, an artifact of the CPU allocator that a GPU's caching allocator
    does not share (it reuses freed blocks for later tensors). With a fixed threshold the resident set follows the
    live tensors (checked against torch.profiler's memory timeline: within 3%)."""
    import ctypes

    M_MMAP_THRESHOLD = -3
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Make the kernel's peak resident set (VmHWM) start again from now; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _warm_up() -> None:
    """Train a toy LoRA model for one step, so that what the first training step of any model costs once per process
    (peft's and transformers' lazy imports, torch's kernel and thread-pool setup) is not counted as this model's."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainables.lora_trial import backward_micro_batch, build_lora_model

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    for checkpointed in (0, 1):
        model = build_lora_model(LlamaForCausalLM(config), r=2, alpha=4, dropout=0.0, checkpointed_layers=checkpointed)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        batch, pairs = packed_row(64, config.vocab_size)
        backward_micro_batch(model, batch, pairs)
        optimizer.step()
    del model, optimizer


def measure(shape: str, tokens: int, checkpointed_layers: int, attn_implementation: str = "sdpa",
            dtype: str = "float32", r: int = LORA_R, threads: int = 2, steps: int = 2,
            malloc: str = "returned") -> dict:
    """Train `steps` AdamW steps in this process; the peak resident-set growth and the planner's estimate."""
    if malloc == "returned":
        _return_freed_memory()
    import torch
    from transformers import LlamaForCausalLM

    from trainables.lora_trial import backward_micro_batch, build_lora_model
    from trainables.memory_plan import ModelShape, estimate_peak

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = llama_config(shape, attn_implementation)
    batch, num_pairs = packed_row(tokens, config.vocab_size)
    _warm_up()

    reset = _reset_peak()
    before = _resident_bytes()
    started = time.perf_counter()
    base = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model = build_lora_model(base, r=r, alpha=2 * r, dropout=0.0, checkpointed_layers=checkpointed_layers)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    step_peaks = []
    for _ in range(steps):
        backward_micro_batch(model, batch, num_pairs)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_peaks.append(_peak_bytes() - before)
    measured = step_peaks[-1]

    estimate = estimate_peak(ModelShape.from_config(config), weight_bytes=torch.finfo(getattr(torch, dtype)).bits // 8,
                             lora_r=r, tokens=tokens, checkpointed_layers=checkpointed_layers,
                             attn_implementation=attn_implementation, device_type="cpu")
    return {"shape": shape, "tokens": tokens, "checkpointed_layers": checkpointed_layers,
            "layers": config.num_hidden_layers, "attn_implementation": attn_implementation, "dtype": dtype, "r": r,
            "pairs": num_pairs,
            "measured_bytes": measured, "estimate_bytes": estimate.total_bytes,
            "ratio": round(estimate.total_bytes / measured, 3), "parts": estimate.parts,
            "seconds": round(time.perf_counter() - started, 1), "peak_was_reset": reset, "malloc": malloc,
            "step_peaks": step_peaks}


def measure_in_subprocess(shape: str, tokens: int, checkpointed_layers: int, attn_implementation: str = "sdpa",
                          dtype: str = "float32", r: int = LORA_R, threads: int = 2, steps: int = 2,
                          malloc: str = "returned", timeout: float = 300) -> dict:
    """`measure` in a fresh interpreter: the peak belongs to this run alone."""
    command = [sys.executable, "-m", "benchmarks.memory_calibration", "--shape", shape, "--tokens", str(tokens),
               "--checkpointed_layers", str(checkpointed_layers), "--attn_implementation",
               attn_implementation, "--dtype", dtype, "--r", str(r), "--threads", str(threads), "--steps", str(steps),
               "--malloc", malloc]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep(shapes=SWEEP_SHAPES, attn_implementation: str = "sdpa", dtype: str = "float32",
          threads: int = 2, malloc: str = "returned") -> list[dict]:
    rows = []
    print(f"{'shape':9} {'tokens':>6} {'ckpt':4} {'measured':>9} {'estimate':>9} {'ratio':>6} {'s':>5}  parts (MiB)")
    for shape, tokens in shapes.items():
        layers = SHAPES[shape]["num_hidden_layers"]
        for t in tokens:
            for ckpt in sorted({0, 1, layers // 2, layers - 1, layers}):  # none, some (from the first), all
                row = measure_in_subprocess(shape, t, ckpt, attn_implementation, dtype, threads=threads, malloc=malloc)
                rows.append(row)
                parts = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in row["parts"].items())
                print(f"{shape:9} {t:6} {f'{ckpt}/{layers}':4} {row['measured_bytes'] / 2**20:5.0f} MiB "
                      f"{row['estimate_bytes'] / 2**20:5.0f} MiB {row['ratio']:6.3f} {row['seconds']:5.1f}  {parts}",
                      flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="store_true", help="the calibration matrix, as a table")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="embedded")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--checkpointed_layers", type=int, default=0,
                        help="decoder layers checkpointed, from the first (0: none)")
    parser.add_argument("--attn_implementation", choices=("sdpa", "eager"), default="sdpa")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--r", type=int, default=LORA_R)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps (one micro-batch each)")
    parser.add_argument("--malloc", choices=("returned", "default"), default="returned",
                        help="returned: glibc gives freed blocks back at once, so the resident set follows the live "
                             "tensors; default: glibc's own policy, which keeps freed heap memory resident")
    parser.add_argument("--json", help="--sweep: also write the rows to this file")
    args = parser.parse_args(argv)
    if args.sweep:
        rows = sweep(attn_implementation=args.attn_implementation, dtype=args.dtype, threads=args.threads,
                     malloc=args.malloc)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return
    print(json.dumps(measure(args.shape, args.tokens, args.checkpointed_layers, args.attn_implementation,
                             args.dtype, args.r, args.threads, args.steps, args.malloc)))


if __name__ == "__main__":
    main()
