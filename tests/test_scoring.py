"""Issue 13's pure parts: the scoring methods, the weighted score, epsilon and the evaluation delay."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from publishing.subnet.epsilon import Epsilon, is_evaluated, worth_restarting_the_wait
from tests.validator_reference import validator_reference_loss
from trainables.data import TokenizedSplit
from trainables.evaluation import pair_losses
from trainables.scoring import REASONING_SYSTEM_PROMPT, reference_sample, weighted_score

# A chat template that renders the system message (the embedded one, like Mistral's, drops it).
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SAMPLES = [("What is 2 + 3?", "<think>2 plus 3 is 5.</think> \\boxed{5}"),
           ("Print the output of print(1)", '<think>It prints 1.</think> {"output": "1"}'),
           ("Name a prime.", "<think>Two is prime.</think> 2")]


@pytest.fixture(scope="module")
def chat_tokenizer(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def test_reference_loss_equals_the_validators(model_dir, chat_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    samples = [reference_sample(chat_tokenizer, q, r) for q, r in SAMPLES]
    lengths = [len(ids) for ids, _ in samples]
    split = TokenizedSplit(torch.tensor([t for ids, _ in samples for t in ids], dtype=torch.int32).numpy(),
                           torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()]).numpy(),
                           torch.tensor([c for _, c in samples], dtype=torch.int32).numpy())
    with torch.no_grad():
        expected = [validator_reference_loss(model, chat_tokenizer, q, r) for q, r in SAMPLES]
        packed = pair_losses(model, split, torch.device("cpu"), packing=True, row_tokens=split.num_tokens,
                             micro_batch_tokens=split.num_tokens)
        padded = pair_losses(model, split, torch.device("cpu"), batch_size=3)
    assert packed == pytest.approx(expected, abs=1e-5) and padded == pytest.approx(expected, abs=1e-5)


def test_a_reference_sample_is_the_rendered_context_then_the_reference_encoded_alone(chat_tokenizer):
    ids, context_len = reference_sample(chat_tokenizer, "Q?", "the answer")
    context = f"<|system|>{REASONING_SYSTEM_PROMPT}\n<|user|>Q?\n<|assistant|>"
    assert ids[:context_len] == chat_tokenizer.encode(context)
    assert ids[context_len:] == chat_tokenizer.encode("the answer")  # not the tokens of context + reference as one text


def test_the_score_is_the_weighted_mean_renormalised_over_the_tasks_that_loaded():
    weights = {"SYNTHETIC_1_SFT": 0.5, "CODEFORCES_COTS": 0.5}
    assert weighted_score({"SYNTHETIC_1_SFT": 1.0, "CODEFORCES_COTS": 3.0}, weights) == 2.0
    assert weighted_score({"CODEFORCES_COTS": 3.0}, weights) == 3.0  # the other failed to load: weight 1
    assert weighted_score({"SYNTHETIC_1_SFT": 1.0, "CODEFORCES_COTS": math.inf}, weights) == math.inf
    assert weighted_score({}, weights) == math.inf
    assert weighted_score({"a": 1.0, "b": 4.0}, {"a": 0.75, "b": 0.25}) == pytest.approx(1.75)


def test_epsilon_decays_linearly_between_its_boundaries():
    decay = Epsilon(start=0.05, end=0.01, decay_blocks=21_600)
    assert decay.at(current_block=1_000, model_block=1_000) == 0.05
    assert decay.at(current_block=900, model_block=1_000) == 0.05  # a stale block: no decay
    assert decay.at(current_block=1_000 + 10_800, model_block=1_000) == pytest.approx(0.03)
    assert decay.at(current_block=1_000 + 21_599, model_block=1_000) > 0.01
    assert decay.at(current_block=1_000 + 21_600, model_block=1_000) == pytest.approx(0.01)
    assert decay.at(current_block=10**9, model_block=1_000) == pytest.approx(0.01)
    assert Epsilon(0.005).at(10**9, 0) == 0.005  # the original competitions: constant


def test_the_evaluation_delay_at_its_boundary_and_when_a_new_model_is_worth_the_restarted_wait():
    assert not is_evaluated(commit_block=1_000, current_block=1_459, delay_blocks=460)
    assert is_evaluated(commit_block=1_000, current_block=1_460, delay_blocks=460)
    decay = Epsilon(start=0.05, end=0.01, decay_blocks=21_600)
    keep, why = worth_restarting_the_wait(2.0, 1.95, 1_000, 1_200, 460, decay)  # 2.5% better, epsilon 5%
    assert not keep and "keeping it" in why and "200 of 460 blocks" in why
    replace, why = worth_restarting_the_wait(2.0, 1.8, 1_000, 1_200, 460, decay)  # 10% better
    assert replace and "worth restarting" in why
    evaluated, why = worth_restarting_the_wait(2.0, 1.99, 1_000, 1_460, 460, decay)
    assert evaluated and "evaluated" in why
