import numpy as np
import pytest

from tests.conftest import write_jsonl
from trainables.data import DataError, collate, read_pairs, split_pairs, tokenize_pair, tokenize_split
from trainables.embedded_model import DATASET


def test_bundled_dataset_has_a_few_hundred_pairs():
    pairs = read_pairs(DATASET)
    assert 200 <= len(pairs) <= 1000
    assert all(p["question"] and p["response"] for p in pairs)


@pytest.mark.parametrize("lines, fragment", [
    ([], "is empty"),
    (["", "  "], "is empty"),
    (["not json"], "line 1 is not JSON"),
    (['{"question": "q", "response": "r"}', "[1, 2]"], "line 2 lacks a string 'question' and 'response'"),
    (['{"question": "q"}'], "lacks a string 'question' and 'response'"),
    (['{"prompt": "q", "answer": "r"}'], "lacks a string 'question' and 'response'"),
])
def test_bad_datasets(tmp_path, lines, fragment):
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    with pytest.raises(DataError, match=fragment):
        read_pairs(path)


def test_missing_dataset(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_pairs(tmp_path / "missing.jsonl")


def test_split_is_seeded_disjoint_and_complete():
    pairs = [{"question": str(i), "response": str(i)} for i in range(100)]
    train, held_out = split_pairs(pairs, 0.15, seed=3)
    assert len(held_out) == 15 and len(train) == 85
    assert split_pairs(pairs, 0.15, seed=3) == (train, held_out)
    assert split_pairs(pairs, 0.15, seed=4) != (train, held_out)
    assert sorted(p["question"] for p in train + held_out) == sorted(p["question"] for p in pairs)


def test_tokenization_masks_exactly_the_validators_prompt(tokenizer):
    ids, prompt_len = tokenize_pair(tokenizer, "What is the capital of France?", "The capital of France is Paris.", 2048)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(ids[:prompt_len]) == prompt
    assert tokenizer.decode(ids[prompt_len:]).strip() == "The capital of France is Paris.</s>"


def test_truncation_drops_pairs_without_response_tokens(tokenizer):
    pairs = [{"question": "word " * 50, "response": "short."}, {"question": "q?", "response": "an answer."}]
    split = tokenize_split(tokenizer, pairs, max_length=20)
    assert len(split) == 1
    assert split.pair(0)[0].tolist() == tokenize_pair(tokenizer, "q?", "an answer.", 20)[0]


def test_collate_pads_right_and_labels_only_response_tokens(sweep_data):
    split = sweep_data.train
    batch = collate(split, [0, 1, 2])
    for row in range(3):
        ids, prompt_len = split.pair(row)
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids.tolist()
        assert batch["attention_mask"][row].sum() == n
        labels = batch["labels"][row]
        assert (labels[:prompt_len] == -100).all() and (labels[n:] == -100).all()
        assert labels[prompt_len:n].tolist() == ids[prompt_len:].tolist()
    assert isinstance(split.tokens, np.ndarray) and split.tokens.dtype == np.int32
