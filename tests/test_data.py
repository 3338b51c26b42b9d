import numpy as np
import pytest
import torch

from tests.conftest import write_jsonl
from trainables.data import (MAX_CHARS_PER_TOKEN, DataError, _ids, read_pairs, split_pairs, tokenize_pair,
                             tokenize_split)
from trainables.embedded_model import DATASET
from trainables.evaluation import per_pair_means
from trainables.packing import padded_micro_batch


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


def test_non_utf8_line_is_named(tmp_path):
    # Past the first 8 KB, where a text-mode read would decode (and fail on) a whole chunk at once.
    good = b'{"question": "q", "response": "r"}\n' * 299 + b"\n"
    path = tmp_path / "d.jsonl"
    path.write_bytes(good + '{"question": "café?", "response": "r"}\n'.encode("cp1252"))
    with pytest.raises(DataError) as excinfo:
        read_pairs(path)
    message = str(excinfo.value)
    assert message == (f"{path} line 301 is not UTF-8 (byte 0xe9 at byte 18 of the line); "
                       f"re-save the file as UTF-8")


def test_utf8_with_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes('{"question": "café?", "response": "r"}\n'.encode("utf-8-sig"))
    assert read_pairs(path) == [{"question": "café?", "response": "r"}]


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


def full_text_ids(tokenizer, question: str, response: str, max_length: int) -> tuple[list[int], int]:
    """tokenize_pair without the character cut: the whole text tokenized, then truncated."""
    user = {"role": "user", "content": question}
    turn = [user, {"role": "assistant", "content": response}]
    prompt = tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=True, truncation=True,
                                           max_length=max_length)
    ids = tokenizer.apply_chat_template(turn, tokenize=True, truncation=True, max_length=max_length)
    return _ids(ids), len(_ids(prompt))


@pytest.mark.parametrize("max_length", [16, 64, 256])
def test_character_cut_keeps_the_ids_of_the_full_text(tokenizer, max_length):
    # The cut's premise, for the tokenizer at hand: no token is longer than the bound.
    assert max(len(tokenizer.convert_tokens_to_string([t])) for t in tokenizer.get_vocab()) <= MAX_CHARS_PER_TOKEN
    words = [w for w in read_pairs(DATASET)[0]["response"].split()]
    long_text = " ".join(words[i % len(words)] + str(i % 7) for i in range(8000))  # ~50k characters
    assert len(long_text) > max_length * MAX_CHARS_PER_TOKEN  # long enough to be cut
    for question, response in [("q?", long_text), (long_text, "r."), (long_text, long_text)]:
        ids, prompt_len = tokenize_pair(tokenizer, question, response, max_length)
        assert len(ids) == max_length
        assert (ids, prompt_len) == full_text_ids(tokenizer, question, response, max_length)


def test_huge_response_is_cut_before_tokenizing(tokenizer, monkeypatch):
    bound = 2048 * MAX_CHARS_PER_TOKEN
    real = tokenizer.apply_chat_template
    longest = []

    def recording(conversation, *args, **kwargs):
        content = max(len(m["content"]) for m in conversation)
        assert content <= bound, f"tokenizer asked to tokenize {content} characters"  # fail fast, not in minutes
        longest.append(content)
        return real(conversation, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "apply_chat_template", recording)
    response = "word " * 10_000_000  # 50 MB
    split = tokenize_split(tokenizer, [{"question": "q?", "response": response}], max_length=2048)
    assert max(longest) == bound
    assert len(split) == 1 and split.num_tokens == 2048


def test_truncation_drops_pairs_without_response_tokens(tokenizer, capsys):
    pairs = [{"question": "word " * 50, "response": "short."}, {"question": "q?", "response": "an answer."},
             {"question": "word " * 30, "response": "short."}]
    split = tokenize_split(tokenizer, pairs, max_length=20)
    assert len(split) == 1
    assert split.pair(0)[0].tolist() == tokenize_pair(tokenizer, "q?", "an answer.", 20)[0]
    assert capsys.readouterr().out == "note: dropped 2 of 3 pairs whose response does not fit in --max_length (20)\n"


def test_no_pair_fits_max_length(tokenizer):
    with pytest.raises(DataError, match=r"no pair keeps a response token within max_length=20 .*raise --max_length"):
        tokenize_split(tokenizer, [{"question": "word " * 50, "response": "short."}], max_length=20)


def test_empty_strings_keep_a_finite_loss(tokenizer, capsys):
    # An empty response still ends with the end-of-turn token: one token to score, never NaN.
    pairs = [{"question": "", "response": "an answer."}, {"question": "q?", "response": ""},
             {"question": "", "response": ""}]
    split = tokenize_split(tokenizer, pairs, max_length=64)
    assert len(split) == 3 and capsys.readouterr().out == ""
    batch = padded_micro_batch(split, [[0], [1], [2]])
    logits = torch.randn(*batch["input_ids"].shape, len(tokenizer))
    token_losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["targets"], reduction="none")
    losses = per_pair_means(token_losses, batch)
    assert torch.isfinite(losses).all() and (losses > 0).all()


def test_padded_batches_pad_right_and_target_only_response_tokens(sweep_data):
    split = sweep_data.train
    batch = padded_micro_batch(split, [[0], [1], [2]])
    for row in range(3):
        ids, prompt_len = split.pair(row)
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids.tolist()
        assert batch["attention_mask"][row].sum() == n
        targets = batch["targets"][row]  # position t is scored on token t + 1
        assert (targets[:prompt_len - 1] == -100).all() and (targets[n - 1:] == -100).all()
        assert targets[prompt_len - 1:n - 1].tolist() == ids[prompt_len:].tolist()
    assert isinstance(split.tokens, np.ndarray) and split.tokens.dtype == np.int32
