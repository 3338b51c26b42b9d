"""One LoRA trial: base model -> LoRA -> train -> validator-style eval -> report with a checkpoint.

`train_lora` is the recipe, readable top to bottom and runnable without Ray: it takes the
hyperparameters, the fixed settings, the tokenized data, a `report(metrics, checkpoint_dir)`
callback and an optional checkpoint folder to resume from. `lora_trainable` is the thin
Ray Tune adapter around it.
"""

import hashlib
import json
import logging
import math
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file

from trainables.data import SweepData, TokenizedSplit, collate
from trainables.documented import setting
from trainables.evaluation import eval_loss, pair_losses
from trainables.hyperparameters import Hyperparameters
from trainables.model_loading import (ensure_model_here, load_causal_lm, pick_device, release_accelerator_memory,
                                      training_dtype, use_cpus)

TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"


@dataclass(frozen=True)
class TrainingSettings:
    """How every trial of a sweep trains: the training group of the sweep's config (each is a flag)."""
    num_epochs: int = setting(1, "passes over the training pairs per trial")
    batch_size: int = setting(1, "pairs per micro-batch")
    accumulation_steps: int = setting(32, "micro-batches per optimizer step")
    eval_steps: int = setting(10, "optimizer steps between evaluations, checkpoints and reports")
    eval_batch_size: int = setting(8, "pairs per evaluation batch")
    warmup_ratio: float = setting(0.05, "share of the steps spent warming the learning rate up")
    weight_decay: float = setting(0.01, "AdamW weight decay")
    lora_dropout: float = setting(0.0, "dropout on the LoRA layers")

    def check(self) -> None:
        """Raise ValueError naming the flag to fix."""
        for name in ("num_epochs", "batch_size", "accumulation_steps", "eval_steps", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight_decay must be 0 or more, got {self.weight_decay}")


@dataclass(frozen=True)
class TrialSettings:
    """Everything a trial needs besides its hyperparameters; the same for every trial of a sweep."""
    model_dir: str
    training: TrainingSettings = TrainingSettings()
    min_lr_ratio: float = 0.01     # cosine decays to 1% of the peak rate, as the original miner did
    seed: int = 0
    cpus_per_trial: int = 1
    device: str = "auto"           # auto: the GPU Ray assigned to this trial, else the CPU
    embedded_model: bool = False   # model_dir is the embedded model: a node without it builds its own copy
    hub_endpoint: str | None = None  # where a node without a Hub-downloaded model_dir fetches it


def optimizer_steps(settings: TrialSettings, num_train: int) -> int:
    micro_batches = math.ceil(num_train / settings.training.batch_size) * settings.training.num_epochs
    return math.ceil(micro_batches / settings.training.accumulation_steps)


def planned_reports(settings: TrialSettings, num_train: int) -> int:
    """How many times a trial that is never stopped reports: the scheduler's max_t."""
    return math.ceil(optimizer_steps(settings, num_train) / settings.training.eval_steps)


def micro_batch_indices(num_train: int, batch_size: int, seed: int, micro_batch: int) -> np.ndarray:
    """The pairs of global micro-batch number `micro_batch`: a fresh seeded shuffle every epoch.

    A pure function of its arguments, so a resumed trial sees exactly the batches it would have.
    """
    per_epoch = math.ceil(num_train / batch_size)
    epoch, within = divmod(micro_batch, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_train)
    return order[within * batch_size:(within + 1) * batch_size]








def ensure_starting_model(settings: TrialSettings) -> None:
    ensure_model_here(settings.model_dir, settings.embedded_model, settings.hub_endpoint)


def load_lora_model(settings: TrialSettings, r: int, alpha: int, device: torch.device):
    ensure_starting_model(settings)
    base = load_causal_lm(settings.model_dir, training_dtype(device))
    # peft is imported where models are built: the driver imports this module (settings, the Tune entry point)
    # but never builds a model, and importing peft costs it seconds before the sweep can start.
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=settings.training.lora_dropout, target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, lora).to(device)


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


Report = Callable[[dict, Path], None]


def train_lora(hyperparameters: dict, settings: TrialSettings, data: SweepData, report: Report,
               resume_from: Path | None = None) -> None:
    from transformers import get_cosine_with_min_lr_schedule_with_warmup  # imports peft and the Trainer's helpers

    chosen = Hyperparameters.from_mapping(hyperparameters)
    lr, r, alpha = chosen.learning_rate, chosen.r, chosen.alpha
    device = pick_device(settings.device)
    use_cpus(device, settings.cpus_per_trial)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the worker is reused: count this trial's peak only
    torch.manual_seed(settings.seed)

    model = load_lora_model(settings, r, alpha, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=settings.training.weight_decay)
    total_steps = optimizer_steps(settings, len(data.train))
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=int(settings.training.warmup_ratio * total_steps), num_training_steps=total_steps,
        min_lr_rate=settings.min_lr_ratio)
    step = restore_checkpoint(resume_from, model, optimizer, scheduler) if resume_from else 0
    untrained = untrained_eval_loss(model, settings, data.eval, device)

    total_micro_batches = math.ceil(len(data.train) / settings.training.batch_size) * settings.training.num_epochs
    micro_batch = step * settings.training.accumulation_steps
    model.train()
    window = _Window()
    while step < total_steps:
        # one optimizer step: accumulate gradients over up to `accumulation_steps` micro-batches
        group = range(micro_batch, min(micro_batch + settings.training.accumulation_steps, total_micro_batches))
        for m in group:
            batch = collate(data.train, micro_batch_indices(len(data.train), settings.training.batch_size, settings.seed, m))
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            (loss / len(group)).backward()
            window.add(loss.item(), int(batch["attention_mask"].sum()))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        micro_batch = group.stop
        step += 1
        if step % settings.training.eval_steps == 0 or step == total_steps:
            trained = window.metrics()  # read before evaluating: tokens_per_s is the training throughput
            metrics = {"eval_loss": eval_loss(model, data.eval, device, settings.training.eval_batch_size),
                       **trained, "step": step, "learning_rate_now": scheduler.get_last_lr()[0],
                       "base_eval_loss": untrained,
                       **memory_metrics(device)}
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder), model, optimizer, scheduler, step, hyperparameters, settings)
                report(metrics, Path(folder))
            window = _Window()


# (model folder, eval set digest) -> the base model's eval loss; filled once per worker process
_UNTRAINED_LOSSES: dict[tuple[str, str], float] = {}


def untrained_eval_loss(model, settings: TrialSettings, eval_split: TokenizedSplit, device: torch.device) -> float:
    """The base model's eval loss (the adapter switched off): the number every trial must beat.

    Measured here, once per worker process (workers are reused across trials), rather than in a task
    of its own: such a task would start a worker and load the model before any trial could start.
    """
    digest = hashlib.sha1(eval_split.tokens.tobytes() + eval_split.prompt_lens.tobytes()).hexdigest()
    key = (settings.model_dir, digest)
    if key not in _UNTRAINED_LOSSES:
        with model.disable_adapter():
            _UNTRAINED_LOSSES[key] = eval_loss(model, eval_split, device, settings.training.eval_batch_size)
    return _UNTRAINED_LOSSES[key]


def memory_metrics(device: torch.device) -> dict:
    """Peak memory of this worker process so far (and of its GPU), for the dashboard and the benchmarks."""
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    metrics = {"peak_rss_mb": round(peak_rss, 1)}
    if device.type == "cuda":
        metrics["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return metrics


class _Window:
    """Training loss and throughput since the last report."""

    def __init__(self):
        self.losses, self.tokens, self.started = [], 0, time.perf_counter()

    def add(self, loss: float, tokens: int) -> None:
        self.losses.append(loss)
        self.tokens += tokens

    def metrics(self) -> dict:
        elapsed = time.perf_counter() - self.started
        train_loss = sum(self.losses) / len(self.losses) if self.losses else math.nan
        return {"train_loss": train_loss, "tokens_per_s": self.tokens / elapsed if elapsed > 0 else 0.0,
                "train_s": elapsed}


def model_pair_losses(model_dir: str, settings: TrialSettings, eval_split: TokenizedSplit) -> list[float]:
    """Per-pair losses of a plain model folder on the held-out set (run as a Ray task with a trial's resources)."""
    ensure_starting_model(settings)
    device = pick_device(settings.device)
    use_cpus(device, settings.cpus_per_trial)
    model = load_causal_lm(model_dir, training_dtype(device)).to(device)
    try:
        return pair_losses(model, eval_split, device, settings.training.eval_batch_size)
    finally:
        del model
        release_accelerator_memory()




def lora_trainable(config: dict, settings: TrialSettings, data: SweepData) -> None:
    """Ray Tune's entry point: resumes from Tune's checkpoint when the trial is restarted."""
    from ray import tune

    from trainables.trial_telemetry import emit

    # one line per checkpoint from every trial would drown the live table
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    started = time.time()
    # the actor is reused across trials and the dashboard names it by class, so each evaluation names its trial
    trial_id = tune.get_context().get_trial_id()
    hyperparameters = Hyperparameters.from_mapping(config)

    def report(metrics: dict, folder: Path) -> None:
        emit(trial_id, hyperparameters, metrics)  # the actor's log line and the Prometheus gauges
        # wall-clock bounds of this trial's work, so overlap between trials can be checked
        tune.report({**metrics, "trial_started_at": started, "reported_at": time.time()},
                    checkpoint=tune.Checkpoint.from_directory(folder))

    checkpoint = tune.get_checkpoint()
    try:
        if checkpoint is None:
            train_lora(config, settings, data, report)
        else:
            with checkpoint.as_directory() as folder:
                train_lora(config, settings, data, report, resume_from=Path(folder))
    finally:
        release_accelerator_memory()

