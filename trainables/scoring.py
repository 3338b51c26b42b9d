"""How a competition scores a sample, as small pure parts (issue 13).

Two methods, each a tokenization that marks which tokens are scored; the loss itself is the same everywhere (each
sample's mean next-token loss over its scored tokens, `trainables.evaluation`):

- `response_loss`, the original validators': the question and response as one chat turn, truncated to the
  competition's sequence length; the response's tokens are scored (`trainables.data.tokenize_pair`);
- `reference_loss`, the later validators' `compute_reference_loss`: a fixed system prompt and the question,
  rendered by the chat template with the generation prompt and encoded as text; the reference encoded on its own
  (so a tokenizer that adds a BOS adds one to each); one forward pass over both, the reference's tokens scored;
  nothing truncated.

A competition's score is the task-weighted mean of its tasks' losses; a task whose data could not be loaded drops
out and the other weights are renormalised to 1, as validators do.
"""

import math

# The later validators' system prompt for reasoning competitions, verbatim.
REASONING_SYSTEM_PROMPT = (
    "You are a reflective AI capable of using extended chains of thought to consider the problem thoroughly and "
    "deliberate through systematic reasoning to arrive at a correct solution before answering. Enclose your internal "
    "monologue in <think> ... </think> tags, then provide your final answer in the format that the user requests.")


def reference_sample(tokenizer, question: str, reference: str) -> tuple[list[int], int]:
    """(context ids + reference ids, the context's length): the reference's tokens are the scored ones."""
    context = tokenizer.apply_chat_template(
        [{"role": "system", "content": REASONING_SYSTEM_PROMPT}, {"role": "user", "content": question}],
        add_generation_prompt=True, tokenize=False)
    context_ids = tokenizer.encode(context, truncation=False)
    reference_ids = tokenizer.encode(reference, truncation=False)
    return list(context_ids) + list(reference_ids), len(context_ids)


def weighted_score(task_losses: dict[str, float], weights: dict[str, float]) -> float:
    """The competition's score: the weighted mean of the tasks that have a loss (a task missing from task_losses
    failed to load; the others' weights are renormalised). An infinite task loss (a failed evaluation) makes the
    score infinite, as it does for validators."""
    present = {task: weight for task, weight in weights.items() if task in task_losses}
    total = sum(present.values())
    if not present or total <= 0:
        return math.inf
    return sum(task_losses[task] * weight / total for task, weight in present.items())


def task_losses(pair_losses, tasks) -> dict[str, float]:
    """Each task's loss: the mean of its samples' losses (`tasks`: `trainables.data.EvalTask`s over the pairs)."""
    return {t.name: sum(pair_losses[t.start:t.stop]) / (t.stop - t.start) for t in tasks if t.stop > t.start}


def competition_score(pair_losses, tasks) -> tuple[float, dict[str, float]]:
    """(the score validators give these per-pair losses, each task's loss). Without tasks (the original
    competitions) the score is the mean over all pairs and there are no task losses."""
    if not tasks:
        return sum(pair_losses) / len(pair_losses), {}
    losses = task_losses(pair_losses, tasks)
    return weighted_score(losses, {t.name: t.weight for t in tasks}), losses
