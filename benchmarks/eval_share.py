"""Evaluation's share of a trial before and after evaluating by tokens (issue 22, item 5), on the CPU; one JSON object.

    .venv/bin/python benchmarks/eval_share.py            # about 5 minutes on a 2-vCPU VM
    .venv/bin/python benchmarks/eval_share.py --quick    # seconds, smaller everything

The shape of competition 4, scaled to the embedded tiny Llama: two tasks of 120 held-out samples, steps of 8 pairs,
the held-out and training pairs drawn from the same long-tailed length mix (a log-normal, as
benchmarks/packing_throughput.py draws it). Before: the whole held-out set every 10 steps (`--eval_steps 10`, the
old default). After: the defaults (`--eval_tokens` automatic, rank subset 25%, every 4th evaluation and the last on
the whole set). Each is one `train_lora` run in this process, on one thread; the shares are the trial's own
`eval_s_total / (train_s_total + eval_s_total)` at its last report (training seconds exclude evaluation and
checkpointing), beside the planned share in counted tokens (`evaluation_share`).

Does ranking on the subset pick the same best trial? `--trials` configurations (seeded learning rates and ranks)
train once each with the whole set scored at every evaluation (a spy records each evaluation's per-pair losses).
Successive halving (rungs at 1, 2, 4, ... evaluations, keeping the better half) is then replayed on those losses
twice: ranking on the whole set's loss, and ranking on each of `--subset_seeds` seeded 25% subsets; the chosen trial
is the survivor with the lowest whole-set loss at its end, as the coordinator chooses. `agreement` is how often the
two choices are the same trial; `regret` the chosen trial's extra loss where they differ.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import embedded_model_dir, machine  # noqa: E402
from benchmarks.packing_throughput import lognormal_lengths, synthetic_split  # noqa: E402


def sweep_data(args):
    from trainables.data import EvalTask, SweepData

    rng = np.random.default_rng(args.seed)
    per_task = args.eval_per_task
    lengths = lognormal_lengths(args.train_pairs + 2 * per_task, args.median, args.p95, args.min_length,
                                args.max_length)
    rng.shuffle(lengths)
    train = synthetic_split(lengths[:args.train_pairs], 512, args.seed)
    held_out = synthetic_split(lengths[args.train_pairs:], 512, args.seed + 1)
    tasks = (EvalTask("A", 0.5, 0, per_task), EvalTask("B", 0.5, per_task, 2 * per_task))
    return SweepData(train, held_out, tasks)


def settings(model_dir: Path, seed: int, **training):
    from trainables.lora_trial import TrainingSettings, TrialSettings

    return TrialSettings(model_dir=str(model_dir), seed=seed, cpus_per_trial=1, device="cpu",
                         training=TrainingSettings(num_epochs=1, batch_size=8, accumulation_steps=1,
                                                   gradient_checkpointing="off", attn_implementation="sdpa",
                                                   **training))


def measured_share(model_dir: Path, data, seed: int, hyperparameters: dict, **training) -> dict:
    from trainables.lora_trial import train_lora
    from trainables.trial_plan import eval_schedule, evaluation_share, pairs_of, rank_pairs, step_plan

    chosen = settings(model_dir, seed, **training)
    schedule = eval_schedule(chosen, data.train, data.eval, data.tasks)
    lengths = np.diff(data.train.offsets)
    step_tokens = [sum(int(lengths[pairs_of(rows)].sum()) for rows in step) for step in step_plan(chosen, data.train).steps]
    subset_tokens = rank_pairs(chosen, data.eval, data.tasks).split.num_tokens
    reports = []
    started = time.perf_counter()
    train_lora(hyperparameters, chosen, data, lambda metrics, folder: reports.append(metrics))
    last = reports[-1]
    return {"evaluations": len(reports), "full_evaluations": sum(1 for r in reports if "eval_loss" in r),
            "every_tokens": schedule.every_tokens or None, "train_s": round(last["train_s_total"], 2),
            "eval_s": round(last["eval_s_total"], 2),
            "eval_share": round(last["eval_s_total"] / (last["train_s_total"] + last["eval_s_total"]), 4),
            "planned_share_in_tokens": round(evaluation_share(schedule, step_tokens, data.eval.num_tokens,
                                                              subset_tokens), 4),
            "final_eval_loss": round(last["eval_loss"], 5), "wall_s": round(time.perf_counter() - started, 1)}


def full_curves(model_dir: Path, data, seed: int, configs: list[dict], eval_steps: int) -> list[list[list[float]]]:
    """Each configuration's per-pair held-out losses at each evaluation (the whole set every eval_steps steps)."""
    import trainables.lora_trial as trial

    curves = []
    real = trial.pair_losses
    for hyperparameters in configs:
        seen = []

        def spy(model, split, device, **layout):  # the real evaluation; its per-pair losses kept for the replay
            losses = real(model, split, device, **layout)
            if split is data.eval:
                seen.append(losses)
            return losses

        trial.pair_losses = spy
        try:
            trial.train_lora(hyperparameters, settings(model_dir, seed, eval_steps=eval_steps), data,
                             lambda metrics, folder: None)
        finally:
            trial.pair_losses = real
        curves.append(seen)  # the untrained baseline is cached by then (measured_share ran first): evaluations only
    return curves


def halving_choice(scores: np.ndarray, final_full: np.ndarray, grace: int = 1, factor: int = 2) -> int:
    """Synchronous successive halving over trials x evaluations of `scores`: at rungs grace, grace x factor, ...
    (before the last evaluation) keep the better 1/factor; the survivor with the lowest final whole-set loss."""
    alive = list(range(scores.shape[0]))
    rung = grace
    while rung < scores.shape[1] and len(alive) > 1:
        ranked = sorted(alive, key=lambda t: scores[t, rung - 1])
        alive = ranked[:max(1, math.ceil(len(ranked) / factor))]
        rung *= factor
    return min(alive, key=lambda t: final_full[t])


def agreement(curves, data, share: float, seeds: int) -> dict:
    from trainables.trial_plan import rank_subset
    from trainables.scoring import competition_score

    evaluations = min(len(c) for c in curves)
    full = np.array([[competition_score(c[e], data.tasks)[0] for e in range(evaluations)] for c in curves])
    by_full = halving_choice(full, full[:, -1])
    same, regrets = 0, []
    for seed in range(seeds):
        pairs, tasks = rank_subset(len(data.eval), data.tasks, share, seed)
        subset = np.array([[competition_score([c[e][int(i)] for i in pairs], tasks)[0] for e in range(evaluations)]
                           for c in curves])
        chosen = halving_choice(subset, full[:, -1])
        same += chosen == by_full
        if chosen != by_full:
            regrets.append(float(full[chosen, -1] - full[by_full, -1]))
    return {"trials": len(curves), "evaluations_per_trial": evaluations, "subset_seeds": seeds,
            "agreement": round(same / seeds, 3), "best_by_full": int(by_full),
            "mean_regret_when_different": round(float(np.mean(regrets)), 5) if regrets else 0.0,
            "final_losses": [round(float(x), 4) for x in full[:, -1]]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--train_pairs", type=int, default=320)
    parser.add_argument("--eval_per_task", type=int, default=120)
    parser.add_argument("--median", type=float, default=160)
    parser.add_argument("--p95", type=float, default=900)
    parser.add_argument("--min_length", type=int, default=48)
    parser.add_argument("--max_length", type=int, default=1536)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--subset_seeds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_pairs, args.eval_per_task, args.trials, args.subset_seeds = 96, 24, 4, 10
        args.median, args.p95, args.max_length = 64, 256, 384

    import torch

    torch.set_num_threads(1)
    model_dir = embedded_model_dir()
    data = sweep_data(args)
    hyperparameters = {"learning_rate": 1e-3, "r": 8, "alpha": 16}
    record = {"machine": machine(), "train_pairs": args.train_pairs, "eval_samples": len(data.eval),
              "train_tokens": data.train.num_tokens, "eval_tokens": data.eval.num_tokens,
              "length_mix": {"median": args.median, "p95": args.p95, "clip": [args.min_length, args.max_length]}}
    measured_share(model_dir, data, args.seed, hyperparameters, eval_steps=10)  # warm-up: imports, the baseline
    record["before"] = measured_share(model_dir, data, args.seed, hyperparameters, eval_steps=10)
    record["after"] = measured_share(model_dir, data, args.seed, hyperparameters)
    rng = np.random.default_rng(args.seed)
    configs = [{"learning_rate": float(10 ** rng.uniform(-4.5, -2.3)), "r": int(rng.choice([4, 8, 16])),
                "alpha": 16} for _ in range(args.trials)]
    curves = full_curves(model_dir, data, args.seed, configs, eval_steps=max(1, args.train_pairs // 8 // 8))
    record["best_trial"] = agreement(curves, data, 0.25, args.subset_seeds)
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()
