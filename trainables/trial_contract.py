"""What a trial and the driver agree on: the names of the metrics in each report (one owner; no other module spells
them), the typed record a report is (`TrialReport`), and the closed sets of words both sides use (`Packing`,
`Checkpointing`, `ScoringMethod`, `EvalSet`). Imported by the trial that reports and by the driver's parts that
read; no torch, no Ray.

On the wire a report stays Tune's flat dict (`TrialReport.to_metrics`): Tune, ASHA and Optuna read its keys by
name, and result.json, progress.csv, trials.csv, the plots, W&B and the Prometheus gauges keep these names. The
enums are `StrEnum`s: each member is its string (`Packing.ON == "on"`, the same hash, JSON and f-string), so flags,
YAML and saved results keep the same words.

How a trial ends, as the trial itself tells it: every report but one is an evaluation; the one other is its last,
when it ran out of accelerator memory (`out_of_memory`: where, in one line). The rest of how it ended (finished,
stopped by ASHA or the time budget, failed, interrupted) is the driver's verdict from Tune's state, and stays with
the driver (orchestrator.trial_records.TrialStatus).
"""

import enum
import math
from dataclasses import dataclass, fields

# The report's two losses. eval_loss scores the whole held-out set, the validators' way: only full evaluations carry
# it, and only those are offered to the coordinator (publishing.tune_callback), merged or published. rank_loss scores
# the fixed rank subset (trainables.trial_plan.rank_pairs) and is in every report: ASHA's rungs and Optuna's values
# compare it, like with like, whichever evaluations were full. Where every evaluation is full (--eval_steps,
# --eval_rank_share 1) the two are the same number.
EVAL_LOSS = "eval_loss"
RANK_LOSS = "rank_loss"
BASE_EVAL_LOSS = "base_eval_loss"  # the untrained starting model's eval loss, measured by each trial's worker
STEP = "step"                      # optimizer steps done when the report was made
TASK_LOSSES = "task_losses"        # {task name: loss} of a competition of weighted tasks (Tune flattens it to
                                   # task_losses/<name> columns)
EVAL_SET = "eval_set"              # which pairs the report's evaluation scored: EvalSet
# the training window since the previous report
TRAIN_LOSS = "train_loss"          # mean training loss of the window's pairs
TOKENS_PER_S = "tokens_per_s"      # real (unpadded) tokens trained per second
TRAIN_S = "train_s"                # the window's training seconds
MFU = "mfu"                        # model FLOPs utilization (GPUs whose bf16 peak is known)
EVAL_S = "eval_s"                  # this report's evaluation seconds
TRAIN_S_TOTAL = "train_s_total"    # training seconds of the whole trial so far, across its restarts
EVAL_S_TOTAL = "eval_s_total"      # evaluation seconds of the whole trial so far, across its restarts
LEARNING_RATE_NOW = "learning_rate_now"  # the schedule's learning rate at the report
# memory and loading
PEAK_RSS_MB = "peak_rss_mb"        # the worker's peak resident memory, MiB
PEAK_GPU_MEM_GB = "peak_gpu_mem_gb"  # the trial's peak GPU memory, GB (GPU trials)
MEMORY_ESTIMATE_GB = "memory_estimate_gb"  # the driver's memory planner's estimate, GB
LOAD_S = "load_s"                  # seconds loading the model with LoRA
LOAD_HOST_PEAK_MB = "load_host_peak_mb"  # host memory the load reached, MiB
# how the trial ended, where it did not end by reporting its evaluations: the out-of-memory line
OUT_OF_MEMORY = "out_of_memory"
# wall-clock bounds of the trial's work (added by the Tune adapter, trainables.lora_trial.lora_trainable)
TRIAL_STARTED_AT = "trial_started_at"
REPORTED_AT = "reported_at"

# Tune's own keys of a result (Tune adds them to every report; the trial never sets them), read by the driver
TRAINING_ITERATION = "training_iteration"  # Tune: reports so far (ASHA's time attribute)
TIME_TOTAL_S = "time_total_s"              # Tune: the trainable's seconds so far
TRIAL_ID = "trial_id"                      # Tune: the trial's id
DONE = "done"                              # Tune: the trial's last result (finished, or stopped by the scheduler)
TIMESTAMP = "timestamp"                    # Tune: when the result was processed
TUNE_KEYS = (TRAINING_ITERATION, TIME_TOTAL_S, TRIAL_ID, DONE, TIMESTAMP)


class EvalSet(enum.StrEnum):
    """Which pairs an evaluation scored: the whole held-out set (carries eval_loss) or the rank subset alone."""
    FULL = "full"
    SUBSET = "subset"


class Packing(enum.StrEnum):
    """--packing: pairs share rows (on) or sit in padded micro-batches (off)."""
    ON = "on"
    OFF = "off"


class Checkpointing(enum.StrEnum):
    """--gradient_checkpointing: the memory planner's fewest layers (auto), every decoder layer (on), none (off).
    What a trial receives is the planner's answer, a number of layers (TrialSettings.checkpointed_layers)."""
    AUTO = "auto"
    ON = "on"
    OFF = "off"


class ScoringMethod(enum.StrEnum):
    """How a competition's task scores a sample (trainables.scoring)."""
    RESPONSE_LOSS = "response_loss"    # the original validators': the response's tokens of one chat turn
    REFERENCE_LOSS = "reference_loss"  # the later validators': a reference after a system prompt and the question


@dataclass(frozen=True, kw_only=True)
class TrialReport:
    """One report of a trial, typed. Each field is named as its metric (the constants above; `METRICS` is their
    order on the wire); None: the report does not carry it. Every report has a step and a rank_loss (infinite in the
    out-of-memory report, as is its eval_loss)."""
    eval_loss: float | None = None        # full evaluations only (and the out-of-memory report: inf)
    rank_loss: float
    eval_set: EvalSet | None = None       # None: the out-of-memory report, which evaluated nothing
    task_losses: dict[str, float] | None = None  # a competition of weighted tasks, full evaluations
    train_loss: float | None = None
    tokens_per_s: float | None = None
    train_s: float | None = None
    mfu: float | None = None
    eval_s: float | None = None
    train_s_total: float | None = None
    eval_s_total: float | None = None
    step: int
    learning_rate_now: float | None = None
    base_eval_loss: float | None = None
    peak_rss_mb: float | None = None
    peak_gpu_mem_gb: float | None = None
    memory_estimate_gb: float | None = None
    load_s: float | None = None
    load_host_peak_mb: float | None = None
    out_of_memory: str | None = None
    trial_started_at: float | None = None
    reported_at: float | None = None

    def __post_init__(self):
        if self.eval_set is not None:
            object.__setattr__(self, "eval_set", EvalSet(self.eval_set))

    @property
    def ran_out_of_memory(self) -> bool:
        return bool(self.out_of_memory)

    @property
    def full(self) -> bool:
        """Scored the whole held-out set: the report a coordinator may merge or publish."""
        return self.eval_loss is not None and math.isfinite(self.eval_loss)

    def to_metrics(self) -> dict:
        """Tune's flat dict: every field the report carries, under its metric name, in `METRICS` order, as plain
        values (an enum as its string: Tune's loggers write what they are given)."""
        metrics = {}
        for name in METRICS:
            value = getattr(self, name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, dict):
                value = dict(value)
            if value is not None:
                metrics[name] = value
        return metrics

    @classmethod
    def from_metrics(cls, metrics: dict) -> "TrialReport":
        """A report back from Tune's result (its own keys, `TUNE_KEYS`, and any other are left out; task losses
        Tune flattened to `task_losses/<name>` are gathered again). Raises ValueError when the result lacks the
        step or rank_loss every report has."""
        missing = [name for name in (STEP, RANK_LOSS) if name not in metrics]
        if missing:
            raise ValueError(f"not a trial's report: it lacks {', '.join(missing)}")
        carried = {name: metrics[name] for name in METRICS if metrics.get(name) is not None}
        prefix = TASK_LOSSES + "/"
        flattened = {key[len(prefix):]: value for key, value in metrics.items() if key.startswith(prefix)}
        if flattened and TASK_LOSSES not in carried:
            carried[TASK_LOSSES] = flattened
        carried[STEP] = int(carried[STEP])
        return cls(**carried)


METRICS = tuple(f.name for f in fields(TrialReport))  # every metric a trial reports, in its order on the wire
# each name above is a field of the record, and each field has its name above
assert set(METRICS) == {EVAL_LOSS, RANK_LOSS, EVAL_SET, TASK_LOSSES, TRAIN_LOSS, TOKENS_PER_S, TRAIN_S, MFU, EVAL_S,
                        TRAIN_S_TOTAL, EVAL_S_TOTAL, STEP, LEARNING_RATE_NOW, BASE_EVAL_LOSS, PEAK_RSS_MB,
                        PEAK_GPU_MEM_GB, MEMORY_ESTIMATE_GB, LOAD_S, LOAD_HOST_PEAK_MB, OUT_OF_MEMORY,
                        TRIAL_STARTED_AT, REPORTED_AT}, "TrialReport's fields and the metric names differ"
