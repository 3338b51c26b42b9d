"""The later validators' reasoning data sets, parsed as they parse them (issue 13): rows -> (question, reference).

- `PrimeIntellect/SYNTHETIC-1-SFT-Data`: rows of task_type `verifiable_math` or `code_output_prediction` (others
  are dropped); messages[0] is the question, messages[1] the answer text.
  verifiable_math: the answer is the last `\\boxed{...}` (non-greedy, as the validator's regex reads it), the trace
  the text before that last `\\boxed{answer}`; reference = trace.strip() + " \\boxed{" + answer + "}".
  code_output_prediction: the answer is the last `{"output": "..."}`; the trace is the text with that string
  removed once (its first occurrence, as `str.replace(..., 1)` does); reference = trace.strip() +
  ' {"output": "' + answer + '"}'.
- `open-r1/codeforces-cots`: rows with exactly two messages; reference = the second message, stripped.

Both drop a sample whose estimated length (each part's characters // 4, plus 10) exceeds the sequence length, and
a row that does not parse. These are pure functions of a row; fetching rows is the data source's job.
"""

import re

SYNTHETIC_1_SFT = "PrimeIntellect/SYNTHETIC-1-SFT-Data"
CODEFORCES_COTS = "open-r1/codeforces-cots"
SUPPORTED_TASK_TYPES = ("verifiable_math", "code_output_prediction")
CHARS_PER_TOKEN = 4
LENGTH_MARGIN = 10  # the validator's allowance for special tokens

_BOXED = re.compile(r"\\boxed\{(.*?)\}")
_OUTPUT = re.compile(r'{"output": "(.*?)"}')


def estimated_tokens(*texts: str) -> int:
    return sum(len(text) // CHARS_PER_TOKEN for text in texts) + LENGTH_MARGIN


def _two_messages(row: dict) -> tuple[str, str]:
    messages = row["messages"]
    return messages[0]["content"], messages[1]["content"]


def synthetic_1_sample(row: dict, sequence_length: int) -> tuple[str, str] | None:
    """(question, reference) of a SYNTHETIC-1-SFT row, or None when the validator would drop it."""
    task_type = row.get("task_type")
    if task_type not in SUPPORTED_TASK_TYPES:
        return None
    try:
        question, text = _two_messages(row)
    except (KeyError, IndexError, TypeError):
        return None
    if task_type == "verifiable_math":
        found = _BOXED.findall(text)
        answer = found[-1] if found else ""
        cut = text.rfind(f"\\boxed{{{answer}}}") if found and answer else -1
        trace = text[:cut].strip() if cut > -1 else text
        reference = trace.strip() + " \\boxed{" + answer + "}"
    else:
        found = _OUTPUT.findall(text)
        answer = found[-1] if found else ""
        trace = text.replace(f'{{"output": "{answer}"}}', "", 1) if found and answer else text
        reference = trace.strip() + ' {"output": "' + answer + '"}'
    if estimated_tokens(question, trace, answer) > sequence_length:
        return None
    return question, reference


def codeforces_sample(row: dict, sequence_length: int) -> tuple[str, str] | None:
    """(question, reference) of a codeforces-cots row, or None when the validator would drop it."""
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) != 2:
        return None
    try:
        question, text = _two_messages(row)
    except (KeyError, TypeError):
        return None
    reference = text.strip()
    if estimated_tokens(question, reference) > sequence_length:
        return None
    return question, reference


PARSERS = {SYNTHETIC_1_SFT: synthetic_1_sample, CODEFORCES_COTS: codeforces_sample}
