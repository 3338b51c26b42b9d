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
from trainables import fused_kernels
from trainables.model_loading import (ensure_model_here, is_model_file, load_causal_lm, measured_load, pick_device,
                                      release_accelerator_memory, resolve_attention, training_dtype, use_cpus)
from trainables.out_of_memory import is_out_of_memory, out_of_memory_reason
from trainables.settings import TrainingSettings, TrialSettings  # noqa: F401  (imported from here too)
from trainables.packing import micro_batch, pairs_of, real_tokens
from trainables.throughput import Throughput
from trainables.trial_contract import (EVAL_LOSS, EVAL_S_TOTAL, EVAL_SET, MEMORY_ESTIMATE_GB, MFU, PEAK_GPU_MEM_GB,
                                       PEAK_RSS_MB, RANK_LOSS, REPORTED_AT, STEP, TASK_LOSSES, TOKENS_PER_S,
                                       TRAIN_LOSS, TRAIN_S, TRAIN_S_TOTAL, TRIAL_STARTED_AT, EvalSet, Packing,
                                       TrialReport)
from trainables.trial_plan import (RankSet, eval_schedule, micro_batch_shape, micro_batch_tokens,  # noqa: F401
                                   pair_lengths, planned_reports, rank_pairs, row_tokens, step_plan, subset_of,
                                   tokens_per_step)
from trainables.attention import attention_here
from trainables.compat.transformers_internals import attention_implementation

TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"
TIMING_STATE = "timing.json"  # the trial's training and evaluation seconds so far, so a resumed trial keeps counting
def ensure_starting_model(settings: TrialSettings) -> None:
    ensure_model_here(settings.model_dir, settings.embedded_model, settings.hub_endpoint)


def build_lora_model(base, r: int, alpha: int, dropout: float, checkpointed_layers: int):
    """LoRA on every linear layer of `base`. The adapters stay fp32 over a bf16 base (peft's default), so their
    gradients and AdamW state are fp32.

    checkpointed_layers: how many decoder layers, from the first, keep only their input and recompute the rest in
    the backward pass (the memory planner's choice: 0 to all). The first rather than the last: their backward runs
    last, after the other layers have freed their activations, so rebuilding them never adds to the peak (the last
    k would rebuild theirs while every other layer still holds its own; trainables.memory_plan counts both)."""
    # peft is imported where models are built: the driver imports this module (settings, the Tune entry point)
    # but never builds a model, and importing peft costs it seconds before the sweep can start.
    from peft import LoraConfig, get_peft_model
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [module for module in base.modules() if isinstance(module, GradientCheckpointingLayer)]
    if isinstance(checkpointed_layers, bool) or not 0 <= checkpointed_layers <= len(layers):
        raise ValueError(f"checkpointed_layers must be a number of decoder layers from 0 to {len(layers)}, "
                         f"got {checkpointed_layers!r}")
    if checkpointed_layers:
        # transformers' own switch turns every layer on (and makes the embeddings' output require grad); each
        # GradientCheckpointingLayer then checkpoints only while its `gradient_checkpointing` flag is set
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        for index, layer in enumerate(layers):
            layer.gradient_checkpointing = index < checkpointed_layers
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", bias="none",
                      task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


def load_lora_model(settings: TrialSettings, r: int, alpha: int, device: torch.device):
    """The starting model with LoRA, its weights read straight onto `device` (never the whole model in host memory
    first: eight 8B trials starting together on a node would hold 128 GB there). Wrap the call in
    `model_loading.measured_load` for its load time and host peak."""
    ensure_starting_model(settings)
    base = load_causal_lm(settings.model_dir, training_dtype(device),
                          resolve_attention(settings.training.attn_implementation, device), device=device)
    # fused kernels patch the base's modules before peft wraps them; one line says which and why
    print(f"kernels: {fused_kernels.apply(base, settings.training.fused_kernels, device)}", flush=True)
    # peft puts each adapter on its base layer's device: nothing to move
    return build_lora_model(base, r, alpha, settings.training.lora_dropout, settings.checkpointed_layers)


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
    state = {STEP: step, "hyperparameters": hyperparameters, "base_model_dir": settings.model_dir}
    (folder / TRAINER_STATE).write_text(json.dumps(state, indent=2))


def restore_checkpoint(folder: Path, model, optimizer, scheduler) -> int:
    """Load adapter, optimizer and schedule from a checkpoint; return the optimizer step it was taken at."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
    states = torch.load(folder / OPTIMIZER_STATE, weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    return json.loads((folder / TRAINER_STATE).read_text())[STEP]


Report = Callable[[dict, Path | None], None]  # metrics, checkpoint folder (None: no checkpoint)


def train_lora(hyperparameters: dict, settings: TrialSettings, data: SweepData, report: Report,
               resume_from: Path | None = None) -> None:
    """Train, evaluating on the trial's schedule (`eval_schedule`). Running out of accelerator memory ends the trial
    with one last report saying where (`out_of_memory`), after the memory is freed (a restarted attempt, or a test's
    trials in one process, may reuse the worker)."""
    device = pick_device(settings.device)
    use_cpus(device, settings.cpus_per_trial)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # count this trial's peak only, whatever ran here before
    torch.manual_seed(settings.seed)
    progress = {STEP: 0, "micro_batch_tokens": 0}
    try:
        _train(hyperparameters, settings, data, report, resume_from, device, progress)
        return
    except Exception as error:  # noqa: BLE001: only running out of memory is an outcome; the rest re-raise
        if not is_out_of_memory(error):
            raise
        reason = out_of_memory_reason(progress[STEP] + 1, progress["micro_batch_tokens"], device,
                                      settings.memory_estimate_gb)
    # here the exception and its frames (which held the model and its activations) are gone
    release_accelerator_memory()
    report(TrialReport(eval_loss=math.inf, rank_loss=math.inf, out_of_memory=reason, step=progress[STEP],
                       **memory_metrics(device)).to_metrics(), None)


def _train(hyperparameters: dict, settings: TrialSettings, data: SweepData, report: Report, resume_from: Path | None,
           device: torch.device, progress: dict) -> None:
    from transformers import get_cosine_with_min_lr_schedule_with_warmup  # imports peft and the Trainer's helpers

    chosen = Hyperparameters.from_mapping(hyperparameters)
    model, load_cost = measured_load(lambda: load_lora_model(settings, chosen.r, chosen.alpha, device))
    attention = attention_implementation(model)
    # once per trial, in the worker's log: which attention trains and why (the driver's memory plan names its own)
    print(attention_here(settings.training.attn_implementation, device).line(), flush=True)
    plan = step_plan(settings, data.train, attention)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=chosen.learning_rate,
                                  weight_decay=settings.training.weight_decay)
    total_steps = len(plan)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=int(settings.training.warmup_ratio * total_steps), num_training_steps=total_steps,
        min_lr_rate=settings.min_lr_ratio)
    step = restore_checkpoint(resume_from, model, optimizer, scheduler) if resume_from else 0
    packing = settings.training.packing == Packing.ON
    untrained = untrained_eval_loss(model, settings, data, device)
    layout = eval_layout(settings, data.eval, attention)
    throughput = Throughput.of(model, device)
    lengths = pair_lengths(data.train)  # once: the loop below reads it every micro-batch
    schedule = eval_schedule(settings, data.train, data.eval, data.tasks)
    evaluate_at, ranked = set(schedule.steps), rank_pairs(settings, data.eval, data.tasks)
    spent = _spent_so_far(resume_from)  # training and evaluation seconds of the trial, across its restarts
    model.train()
    window = _Window()
    while step < total_steps:
        progress[STEP] = step
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
        if step in evaluate_at:
            trained = window.metrics(throughput)  # read before evaluating: tokens_per_s is the training throughput
            evaluating = time.perf_counter()
            losses = evaluation_metrics(model, data, ranked, device, layout, full=step in schedule.full)
            took = time.perf_counter() - evaluating
            spent[TRAIN_S_TOTAL] += trained[TRAIN_S]
            spent[EVAL_S_TOTAL] += took
            metrics = TrialReport(**losses, **trained, eval_s=took, **spent, step=step,
                                  learning_rate_now=scheduler.get_last_lr()[0], base_eval_loss=untrained,
                                  **memory_metrics(device, settings.memory_estimate_gb),
                                  **load_cost.metrics()).to_metrics()
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder), model, optimizer, scheduler, step, hyperparameters, settings)
                (Path(folder) / TIMING_STATE).write_text(json.dumps(spent))
                report(metrics, Path(folder))
            window = _Window()


def evaluation_metrics(model, data: SweepData, ranked: RankSet, device: torch.device, layout: dict,
                       full: bool) -> dict:
    """A full evaluation: eval_loss (with each task's loss) and rank_loss, read from the same per-pair losses.
    Otherwise only the rank subset is scored: rank_loss alone."""
    if full:
        losses = pair_losses(model, data.eval, device, **layout)
        score, per_task = competition_score(losses, data.tasks)
        rank = competition_score([losses[int(i)] for i in ranked.pairs], ranked.tasks)[0]
        return {EVAL_LOSS: score, RANK_LOSS: rank, EVAL_SET: EvalSet.FULL, **({TASK_LOSSES: per_task} if per_task else {})}
    rank = competition_score(pair_losses(model, ranked.split, device, **layout), ranked.tasks)[0]
    return {RANK_LOSS: rank, EVAL_SET: EvalSet.SUBSET}


def _spent_so_far(checkpoint: Path | None) -> dict:
    saved = checkpoint / TIMING_STATE if checkpoint else None
    spent = json.loads(saved.read_text()) if saved and saved.is_file() else {}
    return {TRAIN_S_TOTAL: float(spent.get(TRAIN_S_TOTAL, 0.0)), EVAL_S_TOTAL: float(spent.get(EVAL_S_TOTAL, 0.0))}


def eval_layout(settings: TrialSettings, split: TokenizedSplit, attention: str) -> dict:
    """How evaluation batches pairs: packed like training (micro-batches no larger than training's, so what the
    memory planner allowed for training covers evaluation), or padded batches of eval_batch_size pairs."""
    lengths = pair_lengths(split)
    return {"batch_size": settings.training.eval_batch_size, "packing": settings.training.packing == Packing.ON,
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
        if settings.training.packing == Packing.ON:  # with the adapters on: their gradients are checked too
            check_packing_is_kept_apart(model, eval_split, device)
        with model.disable_adapter():
            _UNTRAINED_LOSSES[key] = pair_losses(model, eval_split, device,
                                                 **eval_layout(settings, eval_split, attention_implementation(model)))
    return competition_score(_UNTRAINED_LOSSES[key], data.tasks)[0]


def check_packing_is_kept_apart(model, split: TokenizedSplit, device: torch.device) -> None:
    """A few pairs packed into one row, under the attention the trial trains with, must score and move the LoRA
    weights as each pair does alone in a padded batch under sdpa (a dense mask: the reference, nothing skipped).
    An attention that let pairs see each other (one that ignores restarting position ids), or a kernel fed the wrong
    boundaries, would train on a different loss, silently. Run once per worker, on the real model."""
    few = subset_of(split, np.argsort(pair_lengths(split))[:3])
    attention = attention_implementation(model)
    packed, packed_grads = _losses_and_gradients(model, micro_batch(few, [np.arange(len(few))], True), device)
    with _attention(model, "sdpa"):
        alone, alone_grads = _losses_and_gradients(model, micro_batch(few, [[i] for i in range(len(few))], False),
                                                   device)
    # bf16 kernels (flash, varlen, flex, sdpa's) round differently; in fp32 they agree to rounding
    low_precision = model.get_input_embeddings().weight.dtype != torch.float32
    loss_tolerance, grad_tolerance = (2e-2, 5e-2) if low_precision else (1e-4, 1e-4)
    scale = max((g.abs().max().item() for g in alone_grads), default=0.0)
    grad_error = max(((p - a).abs().max().item() for p, a in zip(packed_grads, alone_grads)), default=0.0)
    grad_error = grad_error / scale if scale > 0 else 0.0  # relative to the largest gradient
    if not np.allclose(packed, alone, rtol=loss_tolerance, atol=loss_tolerance) or grad_error > grad_tolerance:
        remedy = "run with --packing off" if attention in ("sdpa", "eager") else \
            "run with --attn_implementation sdpa (or --packing off)"
        raise ValueError(f"{model.config.model_type} with {attention} attention does not keep packed pairs apart as "
                         f"sdpa does (packed losses {np.round(packed, 4).tolist()} vs each alone under sdpa "
                         f"{np.round(alone, 4).tolist()}; LoRA gradients off by {grad_error:.1%} of the largest); "
                         f"{remedy}")


def _losses_and_gradients(model, batch: dict[str, torch.Tensor], device: torch.device):
    """Each pair's loss in `batch` and the gradient of their sum for every trainable parameter, computed as a
    training step computes them (no dropout, so both sides compute the same function; nothing accumulates in .grad)."""
    batch = {k: v.to(device) for k, v in batch.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), adapter_compute(model):
            means = per_pair_means(token_losses(model, batch), batch)
        grads = torch.autograd.grad(means.sum(), params, allow_unused=True) if means.requires_grad else ()
    finally:
        model.train(was_training)
    return means.detach().float().cpu().numpy(), [g.float() for g in grads if g is not None]


@contextlib.contextmanager
def _attention(model, attention: str):
    """The model computes with `attention` inside, with its own again after."""
    own = attention_implementation(model)
    model.set_attn_implementation(attention)
    try:
        yield
    finally:
        model.set_attn_implementation(own)


def memory_metrics(device: torch.device, estimate_gb: float | None = None) -> dict:
    """Peak memory of this worker process so far (and of its GPU), beside the planner's estimate."""
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    metrics = {PEAK_RSS_MB: round(peak_rss, 1)}
    if device.type == "cuda":
        metrics[PEAK_GPU_MEM_GB] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)  # GB, as the planner
    if estimate_gb is not None:
        metrics[MEMORY_ESTIMATE_GB] = round(estimate_gb, 3)
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
        metrics = {TRAIN_LOSS: self.loss_sum / self.pairs if self.pairs else math.nan,
                   TOKENS_PER_S: tokens_per_s, TRAIN_S: elapsed}
        # the attention's share of the work grows with each pair's length: sum(L^2) / sum(L) per token
        mfu = throughput.mfu(tokens_per_s, self.square_tokens / self.tokens if self.tokens else 0.0)
        if mfu is not None:
            metrics[MFU] = mfu
        return metrics


def model_pair_losses(model_dir: str, settings: TrialSettings, eval_split: TokenizedSplit) -> list[float]:
    """Per-pair losses of a plain model folder on the held-out set (run as a Ray task with a trial's resources)."""
    ensure_scored_folder(model_dir, settings)
    device = pick_device(settings.device)
    use_cpus(device, settings.cpus_per_trial)
    model = load_causal_lm(model_dir, training_dtype(device),
                           resolve_attention(settings.training.attn_implementation, device), device=device)
    try:
        return pair_losses(model, eval_split, device, **eval_layout(settings, eval_split,
                                                                    attention_implementation(model)))
    finally:
        del model
        release_accelerator_memory()


def ensure_scored_folder(model_dir: str, settings: TrialSettings) -> None:
    """The folder scored, on whichever node runs this: the starting model, or another (an opponent, a round's
    leader) fetched from the Hub on the driver's node and fetched again here where this node lacks it."""
    ensure_model_here(model_dir, settings.embedded_model and Path(model_dir) == Path(settings.model_dir),
                      settings.hub_endpoint)


def folder_pair_losses(model_dir: str, settings: TrialSettings, eval_split: TokenizedSplit,
                       files: dict[str, bytes] | None = None) -> list[float] | None:
    """model_pair_losses on the node that runs this (a Ray task): None where this node can neither read the folder
    nor fetch it from the Hub (a merged model on the driver's own disk, where the storage is a bucket), unless
    `files` brings it (the folder's model files, read on the driver: model_folder_files), written to a folder of
    this task's own."""
    if files is None:
        ensure_scored_folder(model_dir, settings)
        return model_pair_losses(model_dir, settings, eval_split) if Path(model_dir).is_dir() else None
    with tempfile.TemporaryDirectory(prefix="scored-model-") as here:
        for name, data in files.items():
            (Path(here) / name).write_bytes(data)
        return model_pair_losses(here, settings, eval_split)


def model_folder_files(model_dir: str) -> dict[str, bytes]:
    """The files of a model folder that loading it reads (STARTING_MODEL_PATTERNS: configs, safetensors weights,
    tokenizer files), by name: what folder_pair_losses writes on a node that cannot read the folder."""
    return {path.name: path.read_bytes() for path in sorted(Path(model_dir).iterdir())
            if path.is_file() and is_model_file(path.name)}


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
        tune.report({**metrics, TRIAL_STARTED_AT: started, REPORTED_AT: time.time()},
                    checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)
        if folder is not None:  # its checkpoint is saved (tune.get_checkpoint() is now that stored copy)
            retention.saved_checkpoint(tune.get_checkpoint(), metrics.get(EVAL_LOSS, math.nan))
            # on a node drained for preemption, the trial moves now
            leave_if_draining(int(metrics.get(STEP, 0)), lambda: len(step_plan(settings, data.train)))

    checkpoint = tune.get_checkpoint()
    try:
        if checkpoint is None:
            train_lora(config, settings, data, report)
        else:
            with checkpoint.as_directory() as folder:
                train_lora(config, settings, data, report, resume_from=Path(folder))
    finally:
        release_accelerator_memory()

