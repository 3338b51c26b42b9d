"""Training-data sources: local files, Hub dataset repos (real client, LocalHub), Cortex data (recorded W&B rows).

No test reaches the network: Hub tests talk to the LocalHub on 127.0.0.1 and pass
`endpoint=local_hub.url`; Cortex tests pass an `api` object built from
tests/fixtures/cortex_history.json, or replace `wandb.Api` itself.
"""

import io
import json
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from tests.conftest import write_jsonl
from tests.hub_server import TEST_TOKEN, local_hub  # noqa: F401  (the fixture)
from orchestrator import data_sources
from trainables.data import DataError, read_pairs, split_pairs
from orchestrator.data_sources import (cortex_pairs_from_history, cortex_run_filters, fetch_cortex_pairs,
                                     load_hub_dataset, load_unwanted_phrases, read_local_dataset)
from trainables.embedded_model import DATASET

FIXTURE = Path(__file__).parent / "fixtures" / "cortex_history.json"
SHARED_PHRASES = Path("/work/shared/unwanted_phrases.txt")


def pairs(*qr: tuple[str, str]) -> list[dict]:
    return [{"question": q, "response": r} for q, r in qr]


def one_line_error(excinfo) -> str:
    """The DataError's message, checked to be the single line callers print."""
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message
    return message


def parquet_bytes(table: dict, row_group_size: int | None = None) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table(table), buffer, row_group_size=row_group_size)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------------


def test_jsonl_reads_like_read_pairs():
    assert read_local_dataset(DATASET) == read_pairs(DATASET)


def test_jsonl_with_other_column_names(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        json.dumps({"prompt": "Q1", "completion": "R1", "source": "x"}),
        "",
        json.dumps({"prompt": "Q2", "completion": "R2"}),
    ])
    got = read_local_dataset(path, question_column="prompt", response_column="completion")
    assert got == pairs(("Q1", "R1"), ("Q2", "R2"))
    assert all(list(p) == ["question", "response"] for p in got)


def test_parquet_over_several_row_groups_feeds_split_pairs(tmp_path):
    n = 25
    path = tmp_path / "d.parquet"
    path.write_bytes(parquet_bytes({"q": [f"Q{i}" for i in range(n)], "r": [f"R{i}" for i in range(n)],
                                    "extra": list(range(n))}, row_group_size=4))
    got = read_local_dataset(path, question_column="q", response_column="r")
    assert got == pairs(*((f"Q{i}", f"R{i}") for i in range(n)))
    train, held_out = split_pairs(got, 0.2, seed=0)
    assert len(train) == 20 and len(held_out) == 5


def test_parquet_default_columns(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(parquet_bytes({"question": ["a?"], "response": ["b."]}))
    assert read_local_dataset(path) == pairs(("a?", "b."))


@pytest.mark.parametrize("name, content, expected", [
    ("missing.jsonl", None, r"does not exist; pass --dataset_path"),
    ("empty.jsonl", "\n\n", r"is empty"),
    ("bad.jsonl", '{"question": "q", "response": "r"}\nnot json\n', r"line 2 is not JSON"),
    ("list.jsonl", '["q", "r"]\n', r"line 1 is not a JSON object"),
    ("cols.jsonl", '{"prompt": "q", "answer": "r"}\n',
     r"line 1 has no column 'question', 'response' \(its columns: prompt, answer\)"),
    ("types.jsonl", '{"question": "q", "response": null}\n', r"line 1 has NoneType None in column 'response'"),
    ("data.csv", "question,response\nq,r\n", r"neither .jsonl nor .parquet"),
])
def test_bad_local_files(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=expected) as excinfo:
        read_local_dataset(path)
    one_line_error(excinfo)


def test_non_utf8_jsonl_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    # 400 lines (16 KB) first: a text-mode read decodes 8 KB chunks and could not say which line is bad.
    path.write_bytes(b'{"question": "q", "response": "r"}\n' * 400 + b"\n" +
                     '{"question": "q", "response": "naïve"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as excinfo:
        read_local_dataset(path)
    assert one_line_error(excinfo) == (f"{path} line 402 is not UTF-8 (byte 0xef at byte 34 of the line); "
                                       f"re-save the file as UTF-8")


def invalid_utf8_string_column() -> bytes:
    """A Parquet 'string' column holding Latin-1 bytes, as a writer that does not check them leaves it."""
    latin1 = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(np.array([0, 1, 5], np.int32).tobytes()),
                                                    pa.py_buffer(b"qcaf\xe9")])
    return parquet_bytes({"question": latin1, "response": ["r", "s"]})


def corrupt_pages() -> bytes:
    """A sound footer pointing to a page whose compressed bytes are garbage."""
    data = bytearray(parquet_bytes({"question": [f"question {i} " * 20 for i in range(200)], "response": ["r"] * 200}))
    chunk = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(0).column(0)
    middle = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size // 2
    data[middle:middle + 32] = b"\xff" * 32
    return bytes(data)


@pytest.mark.parametrize("content, expected", [
    (b"PAR1 this is not parquet", r"is not a readable Parquet file"),
    (b'{"question": "q", "response": "r"}\n', r"is not a readable Parquet file"),
    (parquet_bytes({"question": [b"q"], "response": [b"r"]}), r"row 1 has bytes b'q' in column 'question', not text"),
    (parquet_bytes({"question": [["q"]], "response": ["r"]}), r"row 1 has list \['q'\] in column 'question', not text"),
    (invalid_utf8_string_column(), r"has text that is not UTF-8 in the rows from 1 on; rewrite the file"),
    (corrupt_pages(), r"is corrupt in the rows from 1 on \(.+\); rewrite it"),
    (b"", r"is not a readable Parquet file"),
    (parquet_bytes({"question": pa.array([], pa.string()), "response": pa.array([], pa.string())}), r"is empty"),
    (parquet_bytes({"prompt": ["q"], "answer": ["r"]}),
     r"has no column 'question', 'response' \(its columns: prompt, answer\)"),
    (parquet_bytes({"question": ["q"], "response": [3]}), r"row 1 has int 3 in column 'response'"),
])
def test_bad_parquet_files(tmp_path, content, expected):
    path = tmp_path / "d.parquet"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as excinfo:
        read_local_dataset(path)
    one_line_error(excinfo)


# ----------------------------------------------------------------------------------------------
# Hub dataset repos
# ----------------------------------------------------------------------------------------------


def downloads(hub) -> list[str]:
    return [path for method, path, status in hub.request_log if "/resolve/" in path and method == "GET"]


def test_hub_parquet_splits_by_hub_naming(local_hub, tmp_path):
    local_hub.add_commit("me/qa", {
        "README.md": b"---\nlicense: mit\n---\n# QA\n",
        "data/train-00000-of-00002.parquet": parquet_bytes({"question": ["q1", "q2"], "response": ["r1", "r2"]}),
        "data/train-00001-of-00002.parquet": parquet_bytes({"question": ["q3"], "response": ["r3"]}),
        "data/test-00000-of-00001.parquet": parquet_bytes({"question": ["t1"], "response": ["s1"]}),
        "weights/model.safetensors": b"\0" * 64,
    }, repo_type="dataset")
    cache = tmp_path / "cache"

    train = load_hub_dataset("me/qa", endpoint=local_hub.url, cache_dir=cache)
    assert train == pairs(("q1", "r1"), ("q2", "r2"), ("q3", "r3"))
    assert load_hub_dataset("me/qa", split="test", endpoint=local_hub.url, cache_dir=cache) == pairs(("t1", "s1"))

    # only data files come down, through the dataset URLs, into the given cache
    fetched = downloads(local_hub)
    assert fetched and all(p.startswith("/datasets/me/qa/resolve/") and p.endswith(".parquet") for p in fetched)
    assert (cache / "datasets--me--qa").is_dir()
    assert not list(cache.glob("hub-dataset-*"))  # the temporary Arrow cache is gone


def test_hub_jsonl_splits_with_other_columns(local_hub):
    rows = lambda *qs: "".join(json.dumps({"prompt": q, "completion": q.upper(), "id": 1}) + "\n" for q in qs)
    local_hub.add_commit("me/chat", {"train.jsonl": rows("a", "b").encode(),
                                     "validation.jsonl": rows("c").encode()}, repo_type="dataset")
    got = load_hub_dataset("me/chat", question_column="prompt", response_column="completion",
                           endpoint=local_hub.url)
    assert got == pairs(("a", "A"), ("b", "B"))
    assert load_hub_dataset("me/chat", "prompt", "completion", split="validation",
                            endpoint=local_hub.url) == pairs(("c", "C"))


def test_hub_files_without_split_names_are_all_read(local_hub):
    local_hub.add_commit("me/flat", {"pairs.csv": b"question,response\nq1,r1\nq2,r2\n",
                                     "more/pairs.jsonl": b'{"question": "q3", "response": "r3"}\n'},
                         repo_type="dataset")
    expected = pairs(("q1", "r1"), ("q2", "r2"), ("q3", "r3"))
    for split in ("train", "validation"):
        got = load_hub_dataset("me/flat", split=split, endpoint=local_hub.url)
        assert sorted(got, key=lambda p: p["question"]) == expected


def test_hub_private_dataset_needs_the_token(local_hub, tmp_path):
    local_hub.create_repo("me/secret", private=True, repo_type="dataset")
    local_hub.add_commit("me/secret", {"train.jsonl": b'{"question": "q", "response": "r"}\n'},
                         repo_type="dataset")
    assert load_hub_dataset("me/secret", endpoint=local_hub.url, token=TEST_TOKEN) == pairs(("q", "r"))
    # a fresh cache: the client would otherwise fall back to the snapshot it just cached
    with pytest.raises(DataError, match=r"dataset repo me/secret was not found .*needs a token") as excinfo:
        load_hub_dataset("me/secret", endpoint=local_hub.url, cache_dir=tmp_path / "fresh")
    one_line_error(excinfo)


def test_hub_bad_datasets(local_hub):
    local_hub.add_commit("me/model-only", {"model.safetensors": b"\0" * 8})  # a model, not a dataset
    local_hub.add_commit("me/card-only", {"README.md": b"# nothing here\n"}, repo_type="dataset")
    local_hub.add_commit("me/wrong-cols", {"train.jsonl": b'{"prompt": "q", "answer": "r"}\n'},
                         repo_type="dataset")
    local_hub.add_commit("me/no-test", {"data/train-00000-of-00001.parquet":
                                        parquet_bytes({"question": ["q"], "response": ["r"]})},
                         repo_type="dataset")
    cases = [
        ("me/missing", "train", r"dataset repo me/missing was not found on http://127\.0\.0\.1:\d+"),
        ("me/model-only", "train", r"dataset repo me/model-only was not found"),
        ("me/card-only", "train", r"dataset repo me/card-only has no data files \(.parquet, .jsonl, .json, .csv\)"),
        ("me/wrong-cols", "train", r"has no column 'question', 'response' \(its columns: prompt, answer\)"),
        ("me/no-test", "test", r"has no split 'test' \(its splits: train\)"),
    ]
    for repo_id, split, expected in cases:
        with pytest.raises(DataError, match=expected) as excinfo:
            load_hub_dataset(repo_id, split=split, endpoint=local_hub.url)
        one_line_error(excinfo)


def test_hub_unreachable(local_hub):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(DataError, match=r"cannot reach the Hub at http://127\.0\.0\.1:\d+ for dataset repo me/qa") \
            as excinfo:
        load_hub_dataset("me/qa", endpoint=closed)
    one_line_error(excinfo)
    assert time.monotonic() - start < 20


# ----------------------------------------------------------------------------------------------
# Cortex data
# ----------------------------------------------------------------------------------------------


class RecordedRun:
    """A W&B public-API run over recorded history rows (`lastHistoryStep`, `scan_history`, `history`)."""

    def __init__(self, record: dict):
        self.id, self.state, self.config = record["id"], record["state"], record["config"]
        self.rows = record["history"]
        self.scans: list[dict] = []

    @property
    def lastHistoryStep(self) -> int:  # noqa: N802  (wandb's name)
        return max((row["_step"] for row in self.rows), default=-1)

    def scan_history(self, keys=None, page_size=1000, min_step=0, max_step=None, use_cache=True):
        self.scans.append({"min_step": min_step, "max_step": max_step, "page_size": page_size})
        max_step = self.lastHistoryStep + 1 if max_step is None else max_step
        return iter([row for row in self.rows if min_step <= row["_step"] < max_step])

    def history(self, samples=500, keys=None, x_axis="_step", pandas=True, stream="default"):
        return [dict(row) for row in self.rows[-samples:]]


class RecordedApi:
    """`wandb.Api().runs(path, filters=...)` over the fixture, honouring `$and` of equality filters."""

    def __init__(self, records: list[dict]):
        self.all_runs = [RecordedRun(r) for r in records]
        self.queries: list[tuple[str, dict]] = []

    def runs(self, path=None, filters=None, order="+created_at", per_page=50, include_sweeps=False, lazy=True):
        self.queries.append((path, filters))
        conditions = (filters or {}).get("$and", [])
        return [run for run in self.all_runs if all(self._matches(run, c) for c in conditions)]

    @staticmethod
    def _matches(run: RecordedRun, condition: dict) -> bool:
        for key, wanted in condition.items():
            value = {"config": run.config, "state": run.state}
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value != wanted:
                return False
        return True

    def run(self, run_id: str) -> RecordedRun:
        return next(r for r in self.all_runs if r.id == run_id)


class FailingApi:
    """An api whose every call fails as a dropped connection does; it counts the calls."""

    def __init__(self, failures: int | None = None, then=None):
        self.calls, self.failures, self.then = 0, failures, then

    def runs(self, path=None, filters=None, **kwargs):
        self.calls += 1
        if self.failures is None or self.calls <= self.failures:
            raise requests.ConnectionError("HTTPSConnectionPool(host='api.wandb.ai'): Max retries exceeded\n"
                                           "(caused by NewConnectionError)")
        return self.then.runs(path, filters=filters, **kwargs)


@pytest.fixture
def recorded() -> RecordedApi:
    return RecordedApi(json.loads(FIXTURE.read_text())["runs"])


# The usable pairs of the fixture, by run and step (stripped; one rule fails in each other uid).
RUNNING_STEP_0 = pairs(("What is the boiling point of water at sea level?",
                        "Water boils at 100 degrees Celsius at sea level."))
RUNNING_STEP_1 = pairs(("Name a prime number greater than ten.", "Eleven is a prime number greater than ten."))
RUNNING_STEP_2 = pairs(
    ("Why is the sky blue?", "Sunlight scatters off air molecules, and blue light scatters the most."),
    ("As an AI, how would you explain recursion?", "Recursion is a function calling itself on a smaller input!"),
    ("Is the last uid read?", "Yes, uid 255 is the last one read?"),
)
RUNNING_STEP_3 = pairs(("Give me a motivational line.", "Keep going, you are closer than you think!"),
                       ("What is the capital of France?", "Paris is the capital of France."))
FINISHED = pairs(("How many legs does a spider have?", "A spider has eight legs."),
                 ("What gas do we exhale?", "We exhale carbon dioxide."))


def test_unwanted_phrases_are_the_shipped_copy():
    phrases = load_unwanted_phrases()
    shipped = Path(__file__).parents[1] / "configs" / "cortex_unwanted_phrases.txt"
    assert data_sources.DEFAULT_UNWANTED_PHRASES == shipped
    assert len(phrases) == 137 and phrases[0] == "text-based AI language model" and phrases[-1] == "GPT"
    assert "my purpose is to " in phrases  # trailing space kept, as in the original list
    assert "As an AI language model, I cannot" in phrases and "<|endoftext|>" in phrases


@pytest.mark.skipif(not SHARED_PHRASES.is_file(), reason=f"{SHARED_PHRASES} (the subnet notes' copy) is not here")
def test_unwanted_phrases_match_the_subnet_notes():
    assert data_sources.DEFAULT_UNWANTED_PHRASES.read_bytes() == SHARED_PHRASES.read_bytes()


def test_unwanted_phrases_file_rules(tmp_path):
    path = tmp_path / "phrases.txt"
    path.write_text("one phrase\n\n   \ntwo \r\n")
    assert load_unwanted_phrases(path) == ["one phrase", "two "]
    with pytest.raises(DataError, match=r"cannot read the unwanted-phrases file .*nope\.txt") as excinfo:
        load_unwanted_phrases(tmp_path / "nope.txt")
    one_line_error(excinfo)


def test_history_filter_applies_each_rule(recorded):
    rows = recorded.run("val-running").rows
    got = cortex_pairs_from_history(rows, load_unwanted_phrases())
    assert got == RUNNING_STEP_0 + RUNNING_STEP_1 + RUNNING_STEP_2 + RUNNING_STEP_3
    # without phrases, only the phrase-rule drops come back, in uid order within their rows
    no_phrases = cortex_pairs_from_history(rows[2:], [])
    assert [p["response"] for p in no_phrases] == [
        RUNNING_STEP_2[0]["response"], "As an AI language model, I cannot share opinions.",
        RUNNING_STEP_2[1]["response"], RUNNING_STEP_2[2]["response"],
        RUNNING_STEP_3[0]["response"], "Follow responsible AI practices and test them well.",
        RUNNING_STEP_3[1]["response"],
    ]


def test_history_filter_checks_the_response_only():
    row = {"prompts.0": "Please note: answer briefly.", "responses.0": "Fine.",
           "prompts.1": "Answer briefly.", "responses.1": "Please note that this is fine."}
    assert cortex_pairs_from_history([row], ["Please note"]) == pairs(("Please note: answer briefly.", "Fine."))


def test_fetch_reads_the_latest_steps_of_validator_runs(recorded):
    got = fetch_cortex_pairs(steps=2, samples=100, api=recorded)
    assert got == RUNNING_STEP_2 + RUNNING_STEP_3 + FINISHED
    assert recorded.queries == [("cortex-t/multi-modality", {"$and": [{"config.type": "validator"}]})]
    running, finished, miner = recorded.all_runs
    assert running.scans == [{"min_step": 2, "max_step": 4, "page_size": 2}]
    assert finished.scans == [{"min_step": 0, "max_step": 2, "page_size": 2}]
    assert miner.scans == []  # filtered out by config.type


def test_fetch_more_steps_reaches_older_rows(recorded):
    assert fetch_cortex_pairs(steps=10, samples=100, api=recorded) == (
        RUNNING_STEP_0 + RUNNING_STEP_1 + RUNNING_STEP_2 + RUNNING_STEP_3 + FINISHED)
    assert recorded.all_runs[0].scans[0]["min_step"] == 0


def test_fetch_running_only(recorded):
    got = fetch_cortex_pairs(steps=1, samples=100, running_only=True, api=recorded)
    assert got == RUNNING_STEP_3
    assert recorded.queries[0][1] == cortex_run_filters(True) == {
        "$and": [{"config.type": "validator"}, {"state": "running"}]}


def test_fetch_stops_at_samples(recorded):
    assert fetch_cortex_pairs(steps=2, samples=4, api=recorded) == (RUNNING_STEP_2 + RUNNING_STEP_3)[:4]
    assert recorded.all_runs[1].scans == []  # enough pairs before the second run was read


def test_fetch_with_no_usable_pair(recorded):
    for run in recorded.all_runs:
        run.rows = [{"_step": 0, "prompts.0": "q", "responses.0": "no ending"}]
    with pytest.raises(DataError, match=r"no usable Cortex pair in the latest 3 steps") as excinfo:
        fetch_cortex_pairs(steps=3, samples=10, api=recorded)
    one_line_error(excinfo)


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"samples": -1}, {"retries": 0}, {"steps": 1.5}])
def test_fetch_rejects_bad_counts(recorded, kwargs):
    with pytest.raises(DataError, match=r"must be a positive integer"):
        fetch_cortex_pairs(**{"steps": 2, "samples": 10, "api": recorded, **kwargs})
    assert recorded.queries == []


def test_fetch_gives_up_after_retries(monkeypatch):
    sleeps = []
    monkeypatch.setattr(data_sources.time, "sleep", sleeps.append)
    api = FailingApi()
    with pytest.raises(DataError, match=r"cannot reach W&B for Cortex data \(3 attempts\): "
                                        r"HTTPSConnectionPool.*; check the network or use "
                                        r"--dataset_path/--dataset_repo_id") as excinfo:
        fetch_cortex_pairs(steps=2, samples=10, api=api, retries=3, backoff_s=1.5)
    one_line_error(excinfo)
    assert api.calls == 3
    assert sleeps == [1.5, 3.0]  # exponential backoff between attempts, none after the last


def test_fetch_gives_up_quickly_without_backoff():
    api = FailingApi()
    start = time.monotonic()
    with pytest.raises(DataError, match=r"cannot reach W&B"):
        fetch_cortex_pairs(steps=2, samples=10, api=api, retries=5, backoff_s=0)
    assert api.calls == 5
    assert time.monotonic() - start < 2


def test_fetch_recovers_from_a_dropped_connection(recorded, monkeypatch):
    monkeypatch.setattr(data_sources.time, "sleep", lambda s: None)
    api = FailingApi(failures=1, then=recorded)
    assert fetch_cortex_pairs(steps=2, samples=100, api=api) == RUNNING_STEP_2 + RUNNING_STEP_3 + FINISHED
    assert api.calls == 2


def test_fetch_builds_wandb_api_with_the_timeout(recorded, monkeypatch):
    import wandb

    made = []

    def fake_api(timeout=None, **kwargs):
        made.append(timeout)
        return recorded

    monkeypatch.setattr(wandb, "Api", fake_api)
    assert fetch_cortex_pairs(steps=1, samples=1, timeout_s=7.5) == RUNNING_STEP_3[:1]
    assert made == [8]  # wandb takes whole seconds; rounded up, never 0


def test_fetch_without_a_wandb_key_is_not_retried(monkeypatch):
    import wandb
    from wandb.errors import UsageError

    calls = []

    def no_key(**kwargs):
        calls.append(kwargs)
        raise UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "Api", no_key)
    with pytest.raises(DataError, match=r"W&B has no API key .*WANDB_API_KEY") as excinfo:
        fetch_cortex_pairs(steps=1, samples=1, retries=3, backoff_s=0)
    one_line_error(excinfo)
    assert len(calls) == 1


def test_fetch_retries_wandb_comm_errors(monkeypatch):
    import wandb
    from wandb.errors import CommError

    calls = []

    def unreachable(**kwargs):
        calls.append(kwargs)
        raise CommError("Failed to verify credentials: the service process is busy and did not respond in time.")

    monkeypatch.setattr(wandb, "Api", unreachable)
    with pytest.raises(DataError, match=r"cannot reach W&B for Cortex data \(2 attempts\): Failed to verify"):
        fetch_cortex_pairs(steps=1, samples=1, retries=2, backoff_s=0)
    assert len(calls) == 2
