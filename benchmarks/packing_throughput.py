"""Packed against padded training: real-token throughput of one trial on a long-tailed length mix (CPU).

    .venv/bin/python benchmarks/packing_throughput.py --model tiny --out benchmarks/measured/packing_tiny.json
    .venv/bin/python benchmarks/packing_throughput.py --model 86m --out benchmarks/measured/packing_86m.json
    .venv/bin/python benchmarks/packing_throughput.py --quick    # seconds; what tests/test_packing_benchmark.py runs

The first two take about 1.5 and 7 minutes on a 2-vCPU VM (8.5 minutes together).

Both modes run the product's trial function, `train_lora`, in this process (no Ray), on the same synthetic pairs
and the same optimizer steps: `tokens_per_step` 0, so a step is 8 pairs of average length in tokens (batch size 8,
accumulation 1), cut from the same seeded order. Padded (`--packing off`) puts a step's pairs in micro-batches of
8, right-padded to the longest, so a step of 9 or more pairs takes two. Packed (`--packing on`) lays them out as a
trial does under sdpa: rows no longer than the longest pair (torch's sdpa computes a row's whole T x T, the blocks
its mask hides included), up to `micro_batch_tokens` a micro-batch, left at the product's default (0: 8 x the
longest pair). The `packing_*_rows2048.json` files were measured before that layout, with one long row a step
and `--micro_batch_tokens 2048`. One thread (`cpus_per_trial` 1). `eval_steps` is larger than
the trial, so the trial reports once, at its end, and its `tokens_per_s` (real tokens over the training window,
which excludes loading, evaluation and checkpointing) covers the whole of its training.

The pairs are random token ids within the model's vocabulary with a short prompt (8-32 tokens, masked from the
loss): no tokenizer. Their lengths are the n quantiles of a log-normal (median --median, 95th percentile --p95)
clipped to [--min_length, --max_length], so even a small set has the distribution's tail; the trial's seeded
order shuffles them. Modes alternate, padded then packed, --repeats times, after one untimed warm-up of each,
so a shared VM's drift reaches both; the ratio is the median of each repeat's packed/padded ratio. The padding
share comes from the step plan: slots computed (micro-batch rows x width) against real tokens; beside it,
`random_batch_padding_share` is that of 20,000 random batches of 8 drawn from the distribution itself.

Models: `tiny` is the embedded Llama (1.6M parameters); `86m` is a Llama of hidden 768 and 12 layers (86.1M
parameters, random weights) built from the embedded config as benchmarks/trainable_vs_bare.py builds it. The
tiny model trains 64 pairs (7 steps); the 86M one 8 pairs, one step, the distribution's octiles, as it trains at
30-100 tokens/s on one core and its padded batch holds about 16 GB.
Prints one JSON object on its last line; `--out FILE` writes it too.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine  # noqa: E402
from benchmarks.trainable_vs_bare import HYPERPARAMETERS, model_folder, parameters  # noqa: E402

MODELS = {"tiny": (256, 2), "86m": (768, 12)}  # hidden, layers; (256, 2) is the embedded model's own shape
# Per model: training pairs (steps = pairs / 8) sized so that a full run takes a few minutes on one core.
DEFAULT_PAIRS = {"tiny": 64, "86m": 8}
MODES = ("off", "on")  # padded, packed: the order in which each repeat runs them
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


# -- the data ---------------------------------------------------------------------------------
def lognormal_lengths(n: int, median: float, p95: float, low: int, high: int) -> np.ndarray:
    """The n quantiles (i + 0.5) / n of a log-normal with this median and 95th percentile, clipped to [low, high]."""
    normal = statistics.NormalDist()
    sigma = np.log(p95 / median) / normal.inv_cdf(0.95)
    z = np.array([normal.inv_cdf((i + 0.5) / n) for i in range(n)])
    return np.clip(np.round(median * np.exp(sigma * z)), low, high).astype(np.int64)


def synthetic_split(lengths: np.ndarray, vocab_size: int, seed: int):
    """Pairs of random token ids (never the first 3 ids, the special tokens) with a prompt of 8-32 tokens."""
    from trainables.data import TokenizedSplit

    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    prompts = np.minimum(rng.integers(8, 33, size=len(lengths)), lengths // 2).astype(np.int32)
    return TokenizedSplit(tokens=rng.integers(3, vocab_size, size=int(lengths.sum())).astype(np.int32),
                          offsets=np.concatenate([[0], np.cumsum(lengths)]), prompt_lens=prompts)


def random_batch_padding_share(median: float, p95: float, low: int, high: int, batch_size: int,
                               seed: int = 0, batches: int = 20_000) -> float:
    """The padding share of batches of batch_size pairs drawn at random from the clipped log-normal: what the
    plan's few batches estimate."""
    sigma = np.log(p95 / median) / statistics.NormalDist().inv_cdf(0.95)
    draws = np.clip(np.round(np.random.default_rng(seed).lognormal(np.log(median), sigma, (batches, batch_size))),
                    low, high)
    return round(float(1 - draws.sum() / (batch_size * draws.max(axis=1)).sum()), 4)


def distribution(lengths: np.ndarray, median: float, p95: float, low: int, high: int) -> dict:
    return {"kind": "log-normal quantiles, clipped", "median_parameter": median, "p95_parameter": p95,
            "sigma": round(float(np.log(p95 / median) / statistics.NormalDist().inv_cdf(0.95)), 4),
            "clip": [low, high], "pairs": len(lengths), "tokens": int(lengths.sum()),
            "mean": round(float(lengths.mean()), 1), "min": int(lengths.min()), "max": int(lengths.max()),
            "quantiles": {f"p{round(q * 100)}": round(float(np.quantile(lengths, q)), 1) for q in QUANTILES},
            "share_at_max_length": round(float(np.mean(lengths == high)), 4),
            "share_at_min_length": round(float(np.mean(lengths == low)), 4)}


# -- the accounting (pure) ----------------------------------------------------------------------
def plan_accounting(plan, lengths: np.ndarray) -> dict:
    """Real tokens and computed slots of every micro-batch of a step plan.

    A micro-batch is its rows, each as wide as its longest (padded: one pair a row; packed: several pairs a row,
    rows as long as the longest pair under sdpa)."""
    real = slots = micro_batches = 0
    for step in plan.steps:
        for rows in step:
            widths = [int(lengths[row].sum()) for row in rows]
            real += sum(widths)
            slots += len(rows) * max(widths)
            micro_batches += 1
    return {"steps": len(plan.steps), "micro_batches": micro_batches, "real_tokens": real, "slots": slots,
            "padding_share": round(1 - real / slots, 4) if slots else 0.0}


def summarize(runs: list[dict]) -> dict:
    """Per mode, the median and range of tokens/s; the median of each repeat's packed/padded ratio."""
    by_mode = {mode: [r["tokens_per_s"] for r in runs if r["packing"] == mode] for mode in MODES}
    ratios = [round(on / off, 3) for off, on in zip(by_mode["off"], by_mode["on"])]
    return {"padded_tokens_per_s": {"median": statistics.median(by_mode["off"]), "runs": by_mode["off"]},
            "packed_tokens_per_s": {"median": statistics.median(by_mode["on"]), "runs": by_mode["on"]},
            "ratios": ratios, "median_ratio": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)]}


# -- the runs ---------------------------------------------------------------------------------
def trial_settings(model_dir: Path, packing: str, args):
    from trainables.lora_trial import TrainingSettings, TrialSettings

    training = TrainingSettings(num_epochs=1, packing=packing, tokens_per_step=0,
                                micro_batch_tokens=args.micro_batch_tokens,
                                batch_size=args.batch_size, accumulation_steps=1, gradient_checkpointing="off",
                                attn_implementation="sdpa", eval_steps=1_000_000, eval_batch_size=8)
    return TrialSettings(model_dir=str(model_dir), training=training, seed=args.seed, cpus_per_trial=args.threads,
                         device="cpu")


def one_run(model_dir: Path, data, packing: str, args) -> dict:
    from trainables.lora_trial import train_lora

    reports = []
    started = time.perf_counter()
    train_lora(HYPERPARAMETERS, trial_settings(model_dir, packing, args), data,
               lambda metrics, folder: reports.append(metrics))
    wall = time.perf_counter() - started
    [report] = reports  # eval_steps exceeds the trial: one report, at the end
    return {"packing": packing, "tokens_per_s": round(report["tokens_per_s"], 2),
            "train_s": round(report["train_s"], 3),
            "measured_tokens": round(report["tokens_per_s"] * report["train_s"]),  # real tokens, as the trial counts
            "step": report["step"], "train_loss": round(report["train_loss"], 4),
            "eval_loss": round(report["eval_loss"], 4), "wall_s": round(wall, 2),
            "process_peak_rss_mb_so_far": report["peak_rss_mb"]}  # this process's peak: every run up to this one


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--pairs", type=int, default=0, help="training pairs; 0: 64 for tiny (8 steps), 8 for 86m (1 step)")
    ap.add_argument("--max_length", type=int, default=2048)
    ap.add_argument("--min_length", type=int, default=32)
    ap.add_argument("--median", type=float, default=256)
    ap.add_argument("--p95", type=float, default=1500)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--micro_batch_tokens", type=int, default=0,
                    help="packed row budget; 0: the product's default, batch_size x the longest pair")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="padded/packed pairs of runs, alternated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models_dir", default=None,
                    help="where the 86m model is built once and reused (default: benchmark-models in the cache)")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: tiny model, 32 short pairs (max_length 256), 2 repeats")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.pairs, args.max_length, args.min_length, args.median, args.p95, args.repeats = \
            "tiny", args.pairs or 32, 256, 16, 48, 160, 2
    args.pairs = args.pairs or DEFAULT_PAIRS[args.model]

    import torch

    from trainables.data import SweepData
    from trainables.model_loading import cache_root
    from trainables.lora_trial import micro_batch_tokens, step_plan, tokens_per_step

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per run is noise on stderr
    torch.set_num_threads(args.threads)
    hidden, layers = MODELS[args.model]
    model_dir = model_folder(hidden, layers, Path(args.models_dir or cache_root() / "benchmark-models"))
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    lengths = lognormal_lengths(args.pairs, args.median, args.p95, args.min_length, args.max_length)
    eval_split = synthetic_split([48, 64, 80, 96], vocab, args.seed + 1)  # tiny: evaluation costs little
    data = SweepData(synthetic_split(lengths, vocab, args.seed), eval_split)
    warm_up = SweepData(synthetic_split(np.full(args.batch_size, 64), vocab, args.seed + 2), eval_split)

    accounting = {}
    for mode in MODES:
        plan = step_plan(trial_settings(model_dir, mode, args), data.train)
        accounting[mode] = plan_accounting(plan, lengths)
        accounting[mode]["pairs_per_step"] = [sum(len(row) for rows in step for row in rows) for step in plan.steps]
        accounting[mode]["rows_per_step"] = [sum(len(rows) for rows in step) for step in plan.steps]
    for mode in MODES:  # untimed: the first pass pays for allocator growth, lazy imports and the untrained loss
        one_run(model_dir, warm_up, mode, args)
    runs = []
    for repeat in range(args.repeats):
        for mode in MODES:
            runs.append({"repeat": repeat, **one_run(model_dir, data, mode, args)})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)

    record = {"benchmark": "packing_throughput", "machine": machine(), "model": args.model,
              "model_parameters": parameters(model_dir), "hidden": hidden, "layers": layers, "vocab_size": vocab,
              "threads": args.threads, "batch_size": args.batch_size, "repeats": args.repeats, "seed": args.seed,
              "hyperparameters": HYPERPARAMETERS, "attention": "sdpa",
              "tokens_per_step": tokens_per_step(trial_settings(model_dir, "on", args).training, lengths),
              "micro_batch_tokens": micro_batch_tokens(trial_settings(model_dir, "on", args).training, lengths),
              "lengths": distribution(lengths, args.median, args.p95, args.min_length, args.max_length),
              "padded": accounting["off"], "packed": accounting["on"],
              "random_batch_padding_share": random_batch_padding_share(args.median, args.p95, args.min_length,
                                                                       args.max_length, args.batch_size),
              **summarize(runs), "runs": runs}
    line = json.dumps(record)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(line)
    return record


if __name__ == "__main__":
    main()
