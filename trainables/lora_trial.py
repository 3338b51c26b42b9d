"""One LoRA trial: base model -> LoRA -> train -> validator-style eval -> report with a checkpoint.

`train_lora` is the recipe, readable top to bottom and runnable without Ray: it takes the
hyperparameters, the fixed settings, the tokenized data, a `report(metrics, checkpoint_dir)`
callback and an optional checkpoint folder to resume from. `lora_trainable` is the thin
Ray Tune adapter around it.
"""

import contextlib
import hashlib
import json
import logging
import math
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file

from trainables.data import SweepData, TokenizedSplit
from trainables.evaluation import pair_losses, per_pair_means, token_losses
from trainables.hyperparameters import Hyperparameters
from trainables.scoring import competition_score
from trainables.model_loading import (ensure_model_here, load_causal_lm, pick_device,
                                      release_accelerator_memory, resolve_attention, training_dtype, use_cpus)
from trainables.out_of_memory import is_out_of_memory, out_of_memory_reason
from trainables.settings import TrainingSettings, TrialSettings  # noqa: F401  (imported from here too)
from trainables.packing import (StepPlan, auto_tokens_per_step, micro_batch, pairs_of, plan_steps, real_tokens,
                               rows_per_micro_batch)
from trainables.throughput import Throughput

TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"




def pair_lengths(split: TokenizedSplit) -> np.ndarray:
    return np.diff(split.offsets)


def tokens_per_step(training: TrainingSettings, lengths: np.ndarray) -> int:
    return training.tokens_per_step or auto_tokens_per_step(lengths, training.batch_size * training.accumulation_steps)


def micro_batch_tokens(training: TrainingSettings, lengths: np.ndarray) -> int:
    """A packed row's budget: the flag, else the tokens of a padded micro-batch of the longest pairs; never less
    than the longest pair, so every pair fits a row."""
    return max(training.micro_batch_tokens or training.batch_size * int(lengths.max()), int(lengths.max()))


def row_tokens(training: TrainingSettings, lengths: np.ndarray, attention: str) -> int:
    """A packed row's length. sdpa and eager compute every row's whole T x T, the blocks that keep pairs apart
    included, so their rows are no longer than the longest pair; flash-attention 2 skips those blocks, so its
    micro-batch is one row."""
    budget = micro_batch_tokens(training, lengths)
    return budget if attention == "flash_attention_2" else min(budget, int(lengths.max()))


def micro_batch_shape(training: TrainingSettings, lengths: np.ndarray, attention: str) -> tuple[int, int]:
    """(rows, tokens a row) of the largest micro-batch a trial runs: what the memory planner sizes."""
    if training.packing != "on":
        return training.batch_size, int(lengths.max())
    width = row_tokens(training, lengths, attention)
    return rows_per_micro_batch(micro_batch_tokens(training, lengths), width), width


def step_plan(settings: TrialSettings, split: TokenizedSplit, attention: str = "sdpa") -> StepPlan:
    """Every optimizer step of the trial (a pure function of the settings and data: resumes see the same).
    The attention implementation shapes the rows, never which pairs make a step."""
    training, lengths = settings.training, pair_lengths(split)
    return plan_steps(lengths, tokens_per_step(training, lengths), training.num_epochs, settings.seed,
                      training.packing == "on", micro_batch_tokens(training, lengths), training.batch_size,
                      row_tokens(training, lengths, attention))


def planned_reports(settings: TrialSettings, split: TokenizedSplit) -> int:
    """How many times a trial that is never stopped reports: the scheduler's max_t."""
    return math.ceil(len(step_plan(settings, split)) / settings.training.eval_steps)


def ensure_starting_model(settings: TrialSettings) -> None:
    ensure_model_here(settings.model_dir, settings.embedded_model, settings.hub_endpoint)


def build_lora_model(base, r: int, alpha: int, dropout: float, gradient_checkpointing: bool):
    """LoRA on every linear layer of `base`. The adapters stay fp32 over a bf16 base (peft's default), so their
    gradients and AdamW state are fp32. Checkpointing keeps each decoder layer's input only and recomputes the
    rest in the backward pass: about a third more compute for a fraction of the activation memory."""
    # peft is imported where models are built: the driver imports this module (settings, the Tune entry point)
    # but never builds a model, and importing peft costs it seconds before the sweep can start.
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", bias="none",
                      task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


def load_lora_model(settings: TrialSettings, r: int, alpha: int, device: torch.device):
    ensure_starting_model(settings)
    base = load_causal_lm(settings.model_dir, training_dtype(device),
                          resolve_attention(settings.training.attn_implementation, device))
    return build_lora_model(base, r, alpha, settings.training.lora_dropout, settings.gradient_checkpointing).to(device)


def backward_micro_batch(model, batch: dict[str, torch.Tensor], pairs_in_step: int,
                         bf16_adapters: bool = True) -> float:
    """Add this micro-batch's share of the step's loss (the mean of per-pair means) to the gradients; return the
    sum of its pairs' losses."""
    with adapter_compute(model, bf16_adapters):
        means = per_pair_means(token_losses(model, batch), batch)
    (means.sum() / pairs_in_step).backward()
    return means.sum().item()


@contextlib.contextmanager
def adapter_compute(model, bf16: bool = True):
    """Over a bf16 base, run the LoRA matmuls in bf16 too, from the fp32 adapter weights (which stay the master
    copy that AdamW updates). Without this peft casts each layer's activations up to fp32 and multiplies there:
    on an H200 (3B Llama shape, 16k packed tokens) the fp32 adapter path, its casts and fp32 elementwise work were
    over half of a training step (BENCHMARKS.md §5). Over an fp32 base (CPUs) nothing changes."""
    base = model.get_base_model().get_input_embeddings().weight
    if not bf16 or base.dtype != torch.bfloat16:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    with torch.autocast(base.device.type, dtype=torch.bfloat16), disable_input_dtype_casting(model):
        yield


def save_checkpoint(folder: Path, model, optimizer, scheduler, step: int, hyperparameters: dict,
                    settings: TrialSettings) -> None:
    model.save_pretrained(folder)  # the adapter only: adapter_config.json + adapter_model.safetensors
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, folder / OPTIMIZER_STATE)
    state = {"step": step, "hyperparameters": hyperparameters, "base_model_dir": settings.model_dir}
    (folder / TRAINER_STATE).write_text(json.dumps(state, indent=2))


def restore_checkpoint(folder: Path, model, optimizer, scheduler) -> int:
    """Load adapter, optimizer and schedule from a checkpoint; return the optimizer step it was taken at."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
    states = torch.load(folder / OPTIMIZER_STATE, weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    return json.loads((folder / TRAINER_STATE).read_text())["step"]


Report = Callable[[dict, Path | None], None]  # metrics, checkpoint folder (None: no checkpoint)


def train_lora(hyperparameters: dict, settings: TrialSettings, data: SweepData, report: Report,
               resume_from: Path | None = None) -> None:
    """Train, evaluating every eval_steps steps. Running out of accelerator memory ends the trial with one last
    report saying where (`out_of_memory`), after the memory is freed (a restarted attempt, or a test's trials in one process, may reuse the worker)."""
    device = pick_device(settings.device)
    use_cpus(device, settings.cpus_per_trial)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # count this trial's peak only, whatever ran here before
    torch.manual_seed(settings.seed)
    progress = {"step": 0, "micro_batch_tokens": 0}
    try:
        with settings.fail_allocation.armed(hyperparameters) if settings.fail_allocation else contextlib.nullcontext():
            _train(hyperparameters, settings, data, report, resume_from, device, progress)
        return
    except Exception as error:  # noqa: BLE001: only running out of memory is an outcome; the rest re-raise
        if not is_out_of_memory(error):
            raise
        reason = out_of_memory_reason(progress["step"] + 1, progress["micro_batch_tokens"], device,
                                      settings.memory_estimate_gb)
    # here the exception and its frames (which held the model and its activations) are gone
    release_accelerator_memory()
    report({"eval_loss": math.inf, "out_of_memory": reason, "step": progress["step"], **memory_metrics(device)}, None)


def _train(hyperparameters: dict, settings: TrialSettings, data: SweepData, report: Report, resume_from: Path | None,
           device: torch.device, progress: dict) -> None:
    from transformers import get_cosine_with_min_lr_schedule_with_warmup  # imports peft and the Trainer's helpers

    chosen = Hyperparameters.from_mapping(hyperparameters)
    model = load_lora_model(settings, chosen.r, chosen.alpha, device)
    attention = model.config._attn_implementation
    plan = step_plan(settings, data.train, attention)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=chosen.learning_rate,
                                  weight_decay=settings.training.weight_decay)
    total_steps = len(plan)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=int(settings.training.warmup_ratio * total_steps), num_training_steps=total_steps,
        min_lr_rate=settings.min_lr_ratio)
    step = restore_checkpoint(resume_from, model, optimizer, scheduler) if resume_from else 0
    packing = settings.training.packing == "on"
    untrained = untrained_eval_loss(model, settings, data, device)
    layout = eval_layout(settings, data.eval, attention)
    throughput = Throughput.of(model, device)
    lengths = pair_lengths(data.train)  # once: the loop below reads it every micro-batch
    model.train()
    window = _Window()
    while step < total_steps:
        progress["step"] = step
        micro_batches = plan.steps[step]
        pairs_in_step = sum(len(pairs_of(rows)) for rows in micro_batches)
        for rows in micro_batches:  # one optimizer step: gradients accumulate over its micro-batches
            batch = {k: v.to(device) for k, v in micro_batch(data.train, rows, packing).items()}
            progress["micro_batch_tokens"] = batch["input_ids"].numel()
            loss_sum = backward_micro_batch(model, batch, pairs_in_step)
            pairs = pairs_of(rows)
            window.add(loss_sum, len(pairs), real_tokens(batch), lengths[pairs])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % settings.training.eval_steps == 0 or step == total_steps:
            trained = window.metrics(throughput)  # read before evaluating: tokens_per_s is the training throughput
            score, per_task = competition_score(pair_losses(model, data.eval, device, **layout), data.tasks)
            metrics = {"eval_loss": score, **({"task_losses": per_task} if per_task else {}),
                       **trained, "step": step, "learning_rate_now": scheduler.get_last_lr()[0],
                       "base_eval_loss": untrained, **memory_metrics(device, settings.memory_estimate_gb)}
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder), model, optimizer, scheduler, step, hyperparameters, settings)
                report(metrics, Path(folder))
            window = _Window()


def eval_layout(settings: TrialSettings, split: TokenizedSplit, attention: str) -> dict:
    """How evaluation batches pairs: packed like training (micro-batches no larger than training's, so what the
    memory planner allowed for training covers evaluation), or padded batches of eval_batch_size pairs."""
    lengths = pair_lengths(split)
    return {"batch_size": settings.training.eval_batch_size, "packing": settings.training.packing == "on",
            "row_tokens": row_tokens(settings.training, lengths, attention),
            "micro_batch_tokens": micro_batch_tokens(settings.training, lengths)}


# (model folder, eval set digest) -> the base model's per-pair eval losses; filled once per worker process
_UNTRAINED_LOSSES: dict[tuple[str, str], list[float]] = {}


def untrained_eval_loss(model, settings: TrialSettings, data: SweepData, device: torch.device) -> float:
    """The base model's eval loss, scored as the competition scores (the adapter switched off): the number every
    trial must beat.

    Measured here, once per worker process (each trial has an actor of its own, so once per trial: one forward
    pass over the held-out set, small beside a trial's training), rather than in a task of its own: such a task
    would start a worker and load the model before any trial could start.
    """
    eval_split = data.eval
    digest = hashlib.sha1(eval_split.tokens.tobytes() + eval_split.prompt_lens.tobytes()).hexdigest()
    key = (settings.model_dir, digest)
    if key not in _UNTRAINED_LOSSES:
        with model.disable_adapter():
            if settings.training.packing == "on":
                check_packing_is_kept_apart(model, eval_split, device)
            _UNTRAINED_LOSSES[key] = pair_losses(model, eval_split, device,
                                                 **eval_layout(settings, eval_split, model.config._attn_implementation))
    return competition_score(_UNTRAINED_LOSSES[key], data.tasks)[0]


def check_packing_is_kept_apart(model, split: TokenizedSplit, device: torch.device) -> None:
    """A few pairs packed into one row must score as they do padded. An architecture whose attention ignores
    restarting position ids would let pairs attend to each other and train on a different loss, silently."""
    pairs = np.argsort(pair_lengths(split))[:3]
    packed = pair_losses(model, _subset(split, pairs), device, packing=True, row_tokens=split.num_tokens,
                         micro_batch_tokens=split.num_tokens)
    padded = pair_losses(model, _subset(split, pairs), device, batch_size=len(pairs), packing=False)
    if not np.allclose(packed, padded, rtol=2e-2, atol=2e-2):
        raise ValueError(f"{model.config.model_type} with {model.config._attn_implementation} attention does not keep "
                         f"packed pairs apart (packed losses {np.round(packed, 3).tolist()} vs alone "
                         f"{np.round(padded, 3).tolist()}); run with --packing off")


def _subset(split: TokenizedSplit, pairs) -> TokenizedSplit:
    parts = [split.pair(int(i)) for i in pairs]
    lengths = np.array([len(ids) for ids, _ in parts])
    return TokenizedSplit(np.concatenate([ids for ids, _ in parts]), np.concatenate([[0], np.cumsum(lengths)]),
                          np.array([p for _, p in parts], dtype=np.int32))


def memory_metrics(device: torch.device, estimate_gb: float | None = None) -> dict:
    """Peak memory of this worker process so far (and of its GPU), beside the planner's estimate."""
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    metrics = {"peak_rss_mb": round(peak_rss, 1)}
    if device.type == "cuda":
        metrics["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)  # GB, as the planner
    if estimate_gb is not None:
        metrics["memory_estimate_gb"] = round(estimate_gb, 3)
    return metrics


class _Window:
    """Training loss and throughput since the last report."""

    def __init__(self):
        self.loss_sum, self.pairs, self.tokens, self.square_tokens = 0.0, 0, 0, 0
        self.started = time.perf_counter()

    def add(self, loss_sum: float, pairs: int, tokens: int, pair_lengths: np.ndarray) -> None:
        self.loss_sum += loss_sum
        self.pairs += pairs
        self.tokens += tokens
        self.square_tokens += int((pair_lengths.astype(np.int64) ** 2).sum())

    def metrics(self, throughput: "Throughput") -> dict:
        elapsed = time.perf_counter() - self.started
        tokens_per_s = self.tokens / elapsed if elapsed > 0 else 0.0
        metrics = {"train_loss": self.loss_sum / self.pairs if self.pairs else math.nan,
                   "tokens_per_s": tokens_per_s, "train_s": elapsed}
        # the attention's share of the work grows with each pair's length: sum(L^2) / sum(L) per token
        mfu = throughput.mfu(tokens_per_s, self.square_tokens / self.tokens if self.tokens else 0.0)
        if mfu is not None:
            metrics["mfu"] = mfu
        return metrics


def model_pair_losses(model_dir: str, settings: TrialSettings, eval_split: TokenizedSplit) -> list[float]:
    """Per-pair losses of a plain model folder on the held-out set (run as a Ray task with a trial's resources)."""
    ensure_starting_model(settings)
    device = pick_device(settings.device)
    use_cpus(device, settings.cpus_per_trial)
    model = load_causal_lm(model_dir, training_dtype(device),
                           resolve_attention(settings.training.attn_implementation, device)).to(device)
    try:
        return pair_losses(model, eval_split, device, **eval_layout(settings, eval_split,
                                                                    model.config._attn_implementation))
    finally:
        del model
        release_accelerator_memory()




def lora_trainable(config: dict, settings: TrialSettings, data: SweepData) -> None:
    """Ray Tune's entry point: resumes from Tune's checkpoint when the trial is restarted."""
    from ray import tune

    from trainables.checkpoint_retention import Retention
    from trainables.preemption import leave_if_draining
    from trainables.trial_telemetry import emit

    # one line per checkpoint from every trial would drown the live table
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    started = time.time()
    # the actor is named for this trial (trial_telemetry.named_trials), but its log file carries no prefix: each
    # evaluation's line names the trial itself
    trial_id = tune.get_context().get_trial_id()
    hyperparameters = Hyperparameters.from_mapping(config)
    retention = Retention()  # this trial deletes its stale checkpoints; the driver does not (see the module)

    def report(metrics: dict, folder: Path | None) -> None:
        emit(trial_id, hyperparameters, metrics)  # the actor's log line and the Prometheus gauges
        # wall-clock bounds of this trial's work, so overlap between trials can be checked
        tune.report({**metrics, "trial_started_at": started, "reported_at": time.time()},
                    checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)
        if folder is not None:  # its checkpoint is saved (tune.get_checkpoint() is now that stored copy)
            retention.saved_checkpoint(tune.get_checkpoint(), metrics.get("eval_loss", math.nan))
            # on a node drained for preemption, the trial moves now
            leave_if_draining(int(metrics.get("step", 0)), lambda: len(step_plan(settings, data.train)))

    checkpoint = tune.get_checkpoint()
    try:
        if checkpoint is None:
            train_lora(config, settings, data, report)
        else:
            with checkpoint.as_directory() as folder:
                train_lora(config, settings, data, report, resume_from=Path(folder))
    finally:
        release_accelerator_memory()

