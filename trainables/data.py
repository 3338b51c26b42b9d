"""Question/response data: read, check, split, and tokenize the validators' way.

Tokenization happens once per sweep, in the driver; trials receive a `TokenizedSplit`
through the Ray object store. A split is three flat numpy arrays, so it travels zero-copy
and costs the same whether a trial reads one pair or all of them.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm


class DataError(ValueError):
    """The dataset cannot be used; the message says what is wrong and how to fix it."""


def jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a UTF-8 file.

    Lines are read as bytes and decoded one by one: a text-mode file decodes 8 KB chunks, so
    its UnicodeDecodeError says neither which line is bad nor anything a user can act on.
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                # -sig: a UTF-8 file saved with a byte-order mark (Windows editors) reads fine too
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path} line {number} is not UTF-8 (byte 0x{raw[error.start]:02x} at byte "
                                f"{error.start + 1} of the line); re-save the file as UTF-8") from None
            if line.strip():
                yield number, line


def jsonl_values(path: Path, what: str = "the dataset") -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of each non-blank line; a line that is not JSON fails naming it."""
    for number, line in jsonl_lines(path):
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path} line {number} is not JSON; {what} must be JSONL, one object a line") from None


def read_pairs(path: str | Path) -> list[dict]:
    """Read a JSONL file of {"question": str, "response": str} objects, one a line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist; pass --dataset_path a JSONL file of question/response pairs")
    pairs = []
    for number, row in jsonl_values(path):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("question", "response")):
            raise DataError(f"{path} line {number} lacks a string 'question' and 'response'; each line needs both")
        pairs.append({"question": row["question"], "response": row["response"]})
    if not pairs:
        raise DataError(f"dataset file {path} is empty; it needs question/response pairs, one JSON object a line")
    return pairs


def with_responses(pairs: list[dict]) -> list[dict]:
    """The pairs whose response has text; a line says how many were dropped, and none left is a DataError."""
    kept = [pair for pair in pairs if pair["response"].strip()]
    if not kept:
        raise DataError(f"every one of the {len(pairs)} pairs has an empty response: there is nothing to learn; "
                        "check --response_column")
    if len(kept) < len(pairs):
        print(f"note: dropped {len(pairs) - len(kept)} of {len(pairs)} pairs whose response is empty")
    return kept


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


# No token of a real tokenizer spans more characters than this. The longest tokens of common
# vocabularies (byte-level BPE, SentencePiece) are runs of spaces or punctuation, rarely over 16-32
# characters; 128 leaves a wide margin and costs nothing (2048 tokens: 256k characters, milliseconds).
MAX_CHARS_PER_TOKEN = 128


def _cut(text: str, max_length: int) -> str:
    """The text's first max_length * MAX_CHARS_PER_TOKEN characters.

    Validators keep at most max_length tokens of a turn. A text longer than this cut spans at
    least max_length tokens even when cut, so the turn is truncated either way, and the tokens
    kept end at least one token's length before the cut, where cutting changes nothing: the ids
    are those of the full text. The cut only saves tokenizing the rest (a 50 MB response took
    11 GB and minutes).
    """
    return text[:max_length * MAX_CHARS_PER_TOKEN]


def tokenize_pair(tokenizer, question: str, response: str, max_length: int) -> tuple[list[int], int]:
    """The validators' tokenization: (ids of the whole turn, length of the masked prompt)."""
    user = {"role": "user", "content": _cut(question, max_length)}
    turn = [user, {"role": "assistant", "content": _cut(response, max_length)}]
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


def tokenize_split(tokenizer, pairs: list[dict], max_length: int, note: str = "") -> TokenizedSplit:
    """Tokenize pairs; a pair whose response is truncated away entirely carries no loss and is dropped.

    Such a pair has no labelled token: evaluation would count it as a loss of 0 (not the
    validators' number) and training would spend a forward pass on nothing. With a `note` (why max_length is
    short), one line also says how many pairs were cut at max_length.
    """
    kept, cut = [], 0
    for row in tqdm(pairs, desc="tokenizing", unit="pair", disable=None, leave=False):  # a bar on terminals only
        ids, prompt_len = tokenize_pair(tokenizer, row["question"], row["response"], max_length)
        cut += len(ids) >= max_length
        if len(ids) > prompt_len:
            kept.append((ids, prompt_len))
    if note and cut:
        print(f"note: cut {cut} of {len(pairs)} pairs at --max_length ({max_length}){note}")
    if not kept:
        raise DataError(f"no pair keeps a response token within max_length={max_length} (the questions fill it); "
                        f"raise --max_length")
    if len(kept) < len(pairs):
        print(f"note: dropped {len(pairs) - len(kept)} of {len(pairs)} pairs whose response does not fit in "
              f"--max_length ({max_length})")
    return splits_of(kept)


def splits_of(samples: list[tuple[list[int], int]]) -> TokenizedSplit:
    """A split of (ids, length of the unscored prefix) samples."""
    lengths = np.array([len(ids) for ids, _ in samples], dtype=np.int64)
    return TokenizedSplit(
        tokens=np.fromiter((t for ids, _ in samples for t in ids), dtype=np.int32, count=int(lengths.sum())),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        prompt_lens=np.array([p for _, p in samples], dtype=np.int32),
    )


@dataclass(frozen=True)
class EvalTask:
    """One of a competition's evaluation tasks: its samples are pairs [start, stop) of the eval split."""
    name: str
    weight: float
    start: int
    stop: int


@dataclass(frozen=True)
class SweepData:
    """What every trial trains and evaluates on: the same pairs, the same held-out set. `tasks` splits the held-out
    set into a competition's weighted tasks; empty, the held-out set is one task (the original competitions)."""
    train: TokenizedSplit
    eval: TokenizedSplit
    tasks: tuple[EvalTask, ...] = ()
