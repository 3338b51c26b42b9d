"""The later validators' parsing of their two reasoning data sets, on hand-written rows in each schema."""

import json
from pathlib import Path

from trainables.reasoning_data import codeforces_sample, estimated_tokens, synthetic_1_sample

FIXTURES = Path(__file__).parent / "fixtures"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def test_synthetic_1_rows_become_question_and_reference_as_the_validator_parses_them():
    parsed = [synthetic_1_sample(row, sequence_length=100) for row in rows("synthetic_1_sft.jsonl")]
    assert parsed[0] == ("What is 2+3? Put the answer in \\boxed{}.",
                         "<think>2 and 3 make 5.</think>\nSo the sum is \\boxed{5}")
    # the last \boxed{} is the answer; what follows it is not part of the reference
    assert parsed[1] == ("Solve x+1=3.", "<think>First \\boxed{1} was wrong; x = 2.</think> Final: \\boxed{2}")
    assert parsed[2] == ("What does print(1+1) output?", '<think>1+1 is 2.</think> {"output": "2"}')
    assert parsed[3] is None  # a task type validators do not score
    assert parsed[4] is None  # no answer message: the row does not parse
    assert parsed[5] is None  # over the sequence length by the validator's estimate (111 > 100)
    assert synthetic_1_sample(rows("synthetic_1_sft.jsonl")[5], sequence_length=111) is not None  # the boundary


def test_codeforces_rows_need_exactly_two_messages_and_fit_the_length():
    parsed = [codeforces_sample(row, sequence_length=100) for row in rows("codeforces_cots.jsonl")]
    assert parsed[0] == ("Given n, print n*2.", "<think>Double it.</think>\n```python\nprint(int(input())*2)\n```")
    assert parsed[1] is None  # three messages
    assert parsed[2] is None  # too long: 1 + 100 + 10 > 100
    assert parsed[3] is None  # no messages at all


def test_the_length_estimate_is_characters_over_four_plus_ten():
    assert estimated_tokens("abcd" * 3, "abc") == 3 + 0 + 10
