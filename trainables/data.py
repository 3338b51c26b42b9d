"""Question/response data: read, check, split, and tokenize the validators' way.

Tokenization happens once per sweep, in the driver; trials receive a `TokenizedSplit`
through the Ray object store. A split is three flat numpy arrays, so it travels zero-copy
and costs the same whether a trial reads one pair or all of them.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


class DataError(ValueError):
    """The dataset cannot be used; the message says what is wrong and how to fix it."""


def read_pairs(path: str | Path) -> list[dict]:
    """Read a JSONL file of {"question": str, "response": str} objects, one a line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist; pass --dataset_path a JSONL file of question/response pairs")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path} line {number} is not JSON; the dataset must be JSONL, one object a line") from None
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("question", "response")):
                raise DataError(f"{path} line {number} lacks a string 'question' and 'response'; each line needs both")
            pairs.append({"question": row["question"], "response": row["response"]})
    if not pairs:
        raise DataError(f"dataset file {path} is empty; it needs question/response pairs, one JSON object a line")
    return pairs


def split_pairs(pairs: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out a seeded share of the pairs for evaluation; both halves are non-empty."""
    if len(pairs) < 2:
        raise DataError(f"the dataset has {len(pairs)} pair; it needs at least 2 to hold one out for evaluation")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(pairs) - 1, max(1, round(len(pairs) * eval_fraction)))
    return [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]


def _ids(encoded) -> list[int]:
    # apply_chat_template returns a list or a BatchEncoding, depending on the transformers release
    return list(encoded["input_ids"]) if hasattr(encoded, "keys") else list(encoded)


def tokenize_pair(tokenizer, question: str, response: str, max_length: int) -> tuple[list[int], int]:
    """The validators' tokenization: (ids of the whole turn, length of the masked prompt)."""
    user = {"role": "user", "content": question}
    turn = [user, {"role": "assistant", "content": response}]
    prompt = tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=True,
                                           truncation=True, max_length=max_length)
    ids = tokenizer.apply_chat_template(turn, tokenize=True, truncation=True, max_length=max_length)
    return _ids(ids), len(_ids(prompt))


@dataclass(frozen=True)
class TokenizedSplit:
    tokens: np.ndarray       # every pair's ids, concatenated (int32)
    offsets: np.ndarray      # pair i is tokens[offsets[i]:offsets[i + 1]] (int64)
    prompt_lens: np.ndarray  # positions of pair i that are prompt, masked out of the loss (int32)

    def __len__(self) -> int:
        return len(self.prompt_lens)

    def pair(self, i: int) -> tuple[np.ndarray, int]:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]], int(self.prompt_lens[i])

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


def tokenize_split(tokenizer, pairs: list[dict], max_length: int) -> TokenizedSplit:
    """Tokenize pairs; a pair whose response is truncated away entirely carries no loss and is dropped."""
    kept = []
    for row in tqdm(pairs, desc="tokenizing", unit="pair", disable=None, leave=False):  # a bar on terminals only
        ids, prompt_len = tokenize_pair(tokenizer, row["question"], row["response"], max_length)
        if len(ids) > prompt_len:
            kept.append((ids, prompt_len))
    if not kept:
        raise DataError(f"no pair keeps a response token within max_length={max_length}; raise --max_length")
    lengths = np.array([len(ids) for ids, _ in kept], dtype=np.int64)
    return TokenizedSplit(
        tokens=np.fromiter((t for ids, _ in kept for t in ids), dtype=np.int32, count=int(lengths.sum())),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        prompt_lens=np.array([p for _, p in kept], dtype=np.int32),
    )


@dataclass(frozen=True)
class SweepData:
    """What every trial trains and evaluates on: the same pairs, the same held-out set."""
    train: TokenizedSplit
    eval: TokenizedSplit


def collate(split: TokenizedSplit, indices, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are -100 on prompt and padding, so loss covers response tokens only."""
    rows = [split.pair(int(i)) for i in indices]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(rows):
        ids = torch.from_numpy(ids.astype(np.int64))
        input_ids[row, :len(ids)] = ids
        attention_mask[row, :len(ids)] = 1
        labels[row, prompt_len:len(ids)] = ids[prompt_len:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
