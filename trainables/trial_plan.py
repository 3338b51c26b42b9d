"""A trial's plan, decided before it loads a model: which pairs make each step, when it evaluates and on which
held-out pairs, and how many reports it makes. Pure functions of the settings and the tokenized data (numpy, no
torch): the trial trains by them, a resumed trial replans the same, and the driver sizes ASHA's max_t, the memory
plan and the time budget with them.
"""

import math
from dataclasses import dataclass

import numpy as np

from trainables.attention_choice import skips_masked_blocks
from trainables.data import EvalTask, TokenizedSplit
from trainables.packing_plan import StepPlan, auto_tokens_per_step, pairs_of, plan_steps, rows_per_micro_batch
from trainables.settings import TrainingSettings, TrialSettings
from trainables.trial_contract import Packing

FORWARD_SHARE = 1 / 3  # an evaluated token's work beside a trained one's (a forward and a backward: ~3 forwards)
EVAL_SHARE = 0.15      # the most of a trial's work the automatic --eval_tokens lets evaluation take
FULL_EVERY = 4         # every 4th evaluation, and the last, scores the whole set: candidates to publish come from
                       # stopped and budget-ended trials too, not only from the trials that finish
LOSS_CHUNK_TOKENS = 2048  # an evaluation's logits are computed this many positions at a time (trainables.evaluation);
                          # the memory planner counts one such slice


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
    included, so their rows are no longer than the longest pair; flash-attention 2, varlen and FlexAttention skip
    those blocks (`skips_masked_blocks`), so their micro-batch is one row."""
    budget = micro_batch_tokens(training, lengths)
    return budget if skips_masked_blocks(attention) else min(budget, int(lengths.max()))


def micro_batch_shape(training: TrainingSettings, lengths: np.ndarray, attention: str) -> tuple[int, int]:
    """(rows, tokens a row) of the largest micro-batch a trial runs: what the memory planner sizes."""
    if training.packing != Packing.ON:
        return training.batch_size, int(lengths.max())
    width = row_tokens(training, lengths, attention)
    return rows_per_micro_batch(micro_batch_tokens(training, lengths), width), width


def step_plan(settings: TrialSettings, split: TokenizedSplit, attention: str = "sdpa") -> StepPlan:
    """Every optimizer step of the trial (a pure function of the settings and data: resumes see the same).
    The attention implementation shapes the rows, never which pairs make a step."""
    training, lengths = settings.training, pair_lengths(split)
    return plan_steps(lengths, tokens_per_step(training, lengths), training.num_epochs, settings.seed,
                      training.packing == Packing.ON, micro_batch_tokens(training, lengths), training.batch_size,
                      row_tokens(training, lengths, attention))


@dataclass(frozen=True)
class EvalSchedule:
    """When a trial evaluates (and checkpoints and reports), and which of those evaluations score the whole set."""
    steps: tuple[int, ...]   # optimizer steps, counted from 1, after which it evaluates; the last step always
    full: frozenset[int]     # of them, those scored on the whole held-out set (the rest: the rank subset)
    every_tokens: int = 0    # the token cadence it was built from (0: --eval_steps)


def evaluation_steps(step_tokens, every_tokens: int = 0, every_steps: int = 0,
                     full_every: int = FULL_EVERY) -> EvalSchedule:
    """The schedule over steps of `step_tokens` training tokens each: every `every_steps` steps, all full (the old
    cadence); else after the step at which each further `every_tokens` tokens have been trained, every
    `full_every`-th full. The last step always evaluates on the whole set: a trial that runs to the end ends scored
    the validators' way."""
    count = len(step_tokens)
    if every_steps:
        steps = sorted({*range(every_steps, count + 1, every_steps), count})
        return EvalSchedule(tuple(steps), frozenset(steps))
    due = np.cumsum(np.asarray(step_tokens, dtype=np.int64)) // every_tokens  # evaluations due by each step's end
    steps = [i + 1 for i in range(count) if due[i] > (due[i - 1] if i else 0)]
    if not steps or steps[-1] != count:
        steps.append(count)
    full = {step for number, step in enumerate(steps, 1) if number % full_every == 0} | {count}
    return EvalSchedule(tuple(steps), frozenset(full), every_tokens)


def evaluation_share(schedule: EvalSchedule, step_tokens, full_tokens: int, subset_tokens: int) -> float:
    """Evaluation's share of a trial's work under `schedule`, counted in trained tokens: an evaluated token costs
    FORWARD_SHARE of a trained one (the forward pass only, of the forward and backward)."""
    evaluated = FORWARD_SHARE * sum(full_tokens if step in schedule.full else subset_tokens for step in schedule.steps)
    return evaluated / (evaluated + sum(step_tokens))


def auto_eval_tokens(step_tokens, full_tokens: int, subset_tokens: int, full_every: int = FULL_EVERY) -> int:
    """Training tokens between evaluations that keep evaluation at most EVAL_SHARE of a trial's work.

    An evaluation costs on average c = FORWARD_SHARE x (full_tokens + (full_every - 1) x subset_tokens) / full_every
    trained tokens of work, so after N trained tokens evaluation's share is c / (N + c): at most EVAL_SHARE when
        N >= c x (1 - EVAL_SHARE) / EVAL_SHARE  (= 5.67 c).
    Competition 4: 240 held-out reasoning samples of ~6k tokens (~1.44M) and a 25% subset (~0.36M) give c ~ 0.21M
    and N ~ 1.19M, an evaluation every ~25 steps of 8 such pairs. (The cadence this replaces, the whole set every 10
    steps of 8 pairs, spent 0.48M of work evaluating per 0.48M trained: half the GPU.) N then grows by 5% at a
    time while the trial's own schedule (steps end between intervals; the last evaluation is always full) is over
    EVAL_SHARE. A trial too short for even its one last full evaluation to fit stays over it."""
    per_evaluation = FORWARD_SHARE * (full_tokens + (full_every - 1) * subset_tokens) / full_every
    every = max(1, math.ceil(per_evaluation * (1 - EVAL_SHARE) / EVAL_SHARE))
    total = int(np.sum(step_tokens))
    while every < total:
        schedule = evaluation_steps(step_tokens, every_tokens=every, full_every=full_every)
        if evaluation_share(schedule, step_tokens, full_tokens, subset_tokens) <= EVAL_SHARE:
            break
        every = math.ceil(every * 1.05)
    return every


def by_steps(training: TrainingSettings) -> bool:
    """The old cadence: --eval_steps set and --eval_tokens not (a config file's eval_steps yields to the flag)."""
    return training.eval_steps is not None and training.eval_tokens is None


@dataclass(frozen=True)
class RankSet:
    """The held-out pairs rank_loss scores: their indices, their tasks re-indexed over them, and the split."""
    pairs: np.ndarray
    tasks: tuple
    split: TokenizedSplit


def rank_pairs(settings: TrialSettings, held_out: TokenizedSplit, tasks=()) -> RankSet:
    """The whole set where every evaluation is full (--eval_steps, or --eval_rank_share 1), else its fixed seeded
    subset (trainables.evaluation.rank_subset): the same pairs in every trial of the sweep."""
    training = settings.training
    if by_steps(training) or training.eval_rank_share >= 1:
        return RankSet(np.arange(len(held_out)), tuple(tasks), held_out)
    pairs, subset_tasks = rank_subset(len(held_out), tuple(tasks), training.eval_rank_share, settings.seed)
    return RankSet(pairs, subset_tasks, subset_of(held_out, pairs))


def eval_schedule(settings: TrialSettings, train: TokenizedSplit, held_out: TokenizedSplit | None = None,
                  tasks=()) -> EvalSchedule:
    """The trial's schedule (a pure function of the settings and data: the driver's max_t, a resume, the same)."""
    training, lengths = settings.training, pair_lengths(train)
    step_tokens = [sum(int(lengths[pairs_of(rows)].sum()) for rows in step) for step in step_plan(settings, train).steps]
    if by_steps(training):
        return evaluation_steps(step_tokens, every_steps=training.eval_steps)
    full_every = 1 if training.eval_rank_share >= 1 else FULL_EVERY
    every = training.eval_tokens
    if every is None:
        if held_out is None:
            raise ValueError("the automatic --eval_tokens is sized from the held-out set: pass it")
        subset = rank_pairs(settings, held_out, tasks).split.num_tokens
        every = auto_eval_tokens(step_tokens, held_out.num_tokens, subset, full_every)
    return evaluation_steps(step_tokens, every_tokens=every, full_every=full_every)


def planned_reports(settings: TrialSettings, split: TokenizedSplit, held_out: TokenizedSplit | None = None,
                    tasks=()) -> int:
    """How many times a trial that is never stopped reports: the scheduler's max_t."""
    return len(eval_schedule(settings, split, held_out, tasks).steps)


def rank_subset(num_pairs: int, tasks, share: float, seed: int):
    """(pair indices, their tasks re-indexed over the subset): the fixed sample of the held-out set that evaluations
    between full ones score. Drawn per task (`ceil(share x the task's samples)`, at least one), so each task keeps its
    weight in the score; seeded by the sweep's seed alone, so every trial of a sweep scores the same pairs and ASHA
    compares like with like. Without tasks the held-out set is one task. `share` 1 is the whole set."""
    groups = tasks or (EvalTask("all", 1.0, 0, num_pairs),)
    chosen, subset_tasks = [], []
    for number, task in enumerate(groups):
        size = task.stop - task.start
        keep = min(size, max(1, math.ceil(share * size)))
        picked = np.sort(np.random.default_rng([seed, number]).choice(size, keep, replace=False)) + task.start
        subset_tasks.append(EvalTask(task.name, task.weight, len(chosen), len(chosen) + keep))
        chosen.extend(int(i) for i in picked)
    return np.array(chosen, dtype=np.int64), tuple(subset_tasks) if tasks else ()


def subset_of(split: TokenizedSplit, pairs) -> TokenizedSplit:
    parts = [split.pair(int(i)) for i in pairs]
    lengths = np.array([len(ids) for ids, _ in parts])
    return TokenizedSplit(np.concatenate([ids for ids, _ in parts]), np.concatenate([[0], np.cumsum(lengths)]),
                          np.array([p for _, p in parts], dtype=np.int32))
