"""Where the original miner's training pairs came from: local files, a Hub dataset, Cortex.t data.

Every source returns `list[dict]` with exactly the string keys "question" and "response", ready
for `trainables.data.split_pairs` / `tokenize_split`. Input that cannot be used raises
`trainables.data.DataError` with one line that says what is wrong and how to fix it; callers
print it as an `error:` line before any training starts.

- `read_local_dataset`: a `.jsonl` or `.parquet` file on disk.
- `load_hub_dataset`: the data files of a Hugging Face dataset repo, for one split.
- `fetch_cortex_pairs`: prompts and responses that Cortex.t (subnet 18) validators log to W&B,
  filtered as SUBNET.md ("Data") describes; `cortex_pairs_from_history` is that filter alone.

Heavy libraries (datasets, wandb, huggingface_hub) are imported inside the functions that need
them, so reading a local file costs none of their import time.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from trainables.data import DataError, jsonl_lines

logger = logging.getLogger(__name__)

DEFAULT_UNWANTED_PHRASES = Path(__file__).resolve().parents[1] / "configs" / "cortex_unwanted_phrases.txt"

CORTEX_PROJECT = "cortex-t/multi-modality"
CORTEX_RUN_TYPE = "validator"
CORTEX_MAX_UIDS = 256  # history rows hold prompts.{uid} / responses.{uid} for uid 0..255
_SENTENCE_ENDINGS = (".", "?", "!")

# Data files a Hub dataset repo may hold, and the `datasets` builder that reads each kind.
_HUB_DATA_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
_HUB_DATA_PATTERNS = [f"*{suffix}" for suffix in _HUB_DATA_BUILDERS]  # fnmatch: `*` spans folders too

_NO_CORTEX_HINT = "or use --dataset_path/--dataset_repo_id"


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def _progress(iterable: Iterable, **kwargs) -> Iterator:
    """A tqdm bar on a terminal; nothing in logs and pipes (disable=None means: only on a TTY)."""
    return iter(tqdm(iterable, disable=None, leave=False, **kwargs))


def _one_line(error: BaseException) -> str:
    """The first line of an error's message (client errors often add a paragraph of advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _pair(question, response, where: str, question_column: str, response_column: str) -> dict:
    """One pair from two cell values; both must be strings (as `read_pairs` requires)."""
    for column, value in ((question_column, question), (response_column, response)):
        if not isinstance(value, str):
            raise DataError(f"{where} has {type(value).__name__} {value!r:.40} in column '{column}', not text; "
                            f"every row needs a string '{question_column}' and '{response_column}'")
    return {"question": question, "response": response}


def _check_columns(found: Iterable[str], question_column: str, response_column: str, what: str, fix: str) -> None:
    found = list(found)
    missing = [c for c in (question_column, response_column) if c not in found]
    if missing:
        raise DataError(f"{what} has no column {', '.join(repr(c) for c in missing)} (its columns: "
                        f"{', '.join(found) or 'none'}); {fix}")


# ----------------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------------


def read_local_dataset(path: str | Path, question_column: str = "question",
                       response_column: str = "response") -> list[dict]:
    """Read question/response pairs from a local `.jsonl` or `.parquet` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist; pass --dataset_path a .jsonl or .parquet file "
                        f"of question/response pairs")
    if path.suffix == ".jsonl":
        pairs = _read_jsonl(path, question_column, response_column)
    elif path.suffix == ".parquet":
        pairs = _read_parquet(path, question_column, response_column)
    else:
        raise DataError(f"dataset file {path} is neither .jsonl nor .parquet; convert it to one of them")
    if not pairs:
        raise DataError(f"dataset file {path} is empty; it needs question/response pairs")
    return pairs


def _read_jsonl(path: Path, question_column: str, response_column: str) -> list[dict]:
    """The rules of `trainables.data.read_pairs` (blank lines skipped, one JSON object a line,
    both fields strings), with chosen column names and errors that name the columns found."""
    pairs = []
    for number, line in _progress(jsonl_lines(path), desc=f"Reading {path.name}", unit=" lines"):
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{where} is not JSON; the dataset must be JSONL, one object a line") from None
        if not isinstance(row, dict):
            raise DataError(f"{where} is not a JSON object; each line needs '{question_column}' and "
                            f"'{response_column}'")
        _check_columns(row, question_column, response_column, where,
                       "pass the right column names or fix the file")
        pairs.append(_pair(row[question_column], row[response_column], where, question_column,
                           response_column))
    return pairs


def _read_parquet(path: Path, question_column: str, response_column: str) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path} is not a readable Parquet file ({_one_line(error)}); rewrite it with "
                        f"pyarrow or pandas") from None
    _check_columns(parquet.schema_arrow.names, question_column, response_column, str(path),
                   "pass the right column names or fix the file")
    pairs = []
    # Row-group batches keep memory flat and drive the progress bar on large files.
    bar = tqdm(total=parquet.metadata.num_rows, disable=None, leave=False, desc=f"Reading {path.name}",
               unit=" rows")
    # The footer can be sound while the pages it points to are not: their errors surface only here.
    try:
        with bar:
            for batch in parquet.iter_batches(columns=[question_column, response_column]):
                columns = batch.to_pydict()
                for question, response in zip(columns[question_column], columns[response_column]):
                    pairs.append(_pair(question, response, f"{path} row {len(pairs) + 1}", question_column,
                                       response_column))
                bar.update(batch.num_rows)
    except UnicodeDecodeError:  # a string column holding other bytes (a writer that did not check)
        raise DataError(f"{path} has text that is not UTF-8 in the rows from {len(pairs) + 1} on; rewrite the "
                        f"file with its text as UTF-8") from None
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path} is corrupt in the rows from {len(pairs) + 1} on ({_one_line(error)}); rewrite "
                        f"it with pyarrow or pandas") from None
    return pairs


# ----------------------------------------------------------------------------------------------
# Hugging Face dataset repos
# ----------------------------------------------------------------------------------------------


def load_hub_dataset(repo_id: str, question_column: str = "question", response_column: str = "response",
                     split: str = "train", endpoint: str | None = None, token: str | None = None,
                     cache_dir: str | Path | None = None) -> list[dict]:
    """Download a dataset repo's data files and read the pairs of one split.

    The split's files are picked by the Hub's usual naming (`data/train-00000-of-00001.parquet`,
    `train.jsonl`, `train/part-0.csv`, ...); a repo with no split in its file names has all its
    files read, whatever `split` asks. `endpoint` must be passed to reach a Hub other than the
    one huggingface_hub saw in HF_ENDPOINT when it was first imported.
    """
    folder = _download_data_files(repo_id, endpoint, token, cache_dir)
    files = _split_files(folder, repo_id, split)
    pairs = []
    for builder, builder_files in _by_builder(files).items():
        pairs.extend(_read_with_datasets(builder, builder_files, repo_id, split, question_column,
                                         response_column, cache_dir))
    if not pairs:
        raise DataError(f"split '{split}' of dataset repo {repo_id} has no rows; pick a dataset with "
                        f"question/response pairs")
    return pairs


def download_parquet_files(repo_id: str, endpoint: str | None = None, token: str | None = None,
                           cache_dir: str | Path | None = None) -> list[Path]:
    """The parquet data files of a dataset repo (its train split where files name splits), downloaded once into
    the Hub cache: nothing else of the repo is fetched."""
    folder = _download_data_files(repo_id, endpoint, token, cache_dir, patterns=["*.parquet"])
    files = sorted(folder.rglob("*.parquet"))
    train = [f for f in files if "train" in f.relative_to(folder).as_posix()]
    if not files:
        raise DataError(f"dataset repo {repo_id} has no parquet data files; pass the task's rows with --task_data")
    return train or files


def _download_data_files(repo_id: str, endpoint: str | None, token: str | None,
                         cache_dir: str | Path | None, patterns: list[str] | None = None) -> Path:
    """The repo's snapshot folder, holding only its data files (no weights, scripts, images)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    where = endpoint or constants.ENDPOINT
    try:
        folder = snapshot_download(repo_id, repo_type="dataset", endpoint=endpoint, token=token,
                                   cache_dir=cache_dir, allow_patterns=patterns or _HUB_DATA_PATTERNS)
    except (RepositoryNotFoundError, RevisionNotFoundError):  # gated repos land here too
        raise DataError(f"dataset repo {repo_id} was not found on {where} (a private or gated one needs a "
                        f"token with access); check --dataset_repo_id") from None
    except LocalEntryNotFoundError as error:  # the client's answer to a Hub it cannot reach
        raise DataError(f"cannot reach the Hub at {where} for dataset repo {repo_id} ({_one_line(error)}); "
                        f"check the network or use --dataset_path") from None
    except HfHubHTTPError as error:
        raise DataError(f"the Hub at {where} refused dataset repo {repo_id}: {_one_line(error)}; check the "
                        f"repo id and the token") from None
    except ValueError as error:  # a malformed repo id, checked by the client before any request
        raise DataError(f"dataset repo id {repo_id!r} is not valid ({_one_line(error)}); pass namespace/name") \
            from None
    return Path(folder)


def _split_files(folder: Path, repo_id: str, split: str) -> list[Path]:
    """The data files of `split` in a downloaded repo, found the way `datasets` finds them."""
    from datasets.data_files import EmptyDatasetError, get_data_patterns, resolve_pattern

    try:
        patterns = {str(name): found for name, found in get_data_patterns(str(folder)).items()}
    except EmptyDatasetError:
        patterns = {}
    except ValueError as error:  # e.g. a sharded file whose split name has odd characters
        raise DataError(f"the data files of dataset repo {repo_id} are named oddly ({_one_line(error)}); "
                        f"rename them data/{{split}}-00000-of-00001.parquet") from None
    if not patterns:
        raise DataError(f"dataset repo {repo_id} has no data files ({', '.join(_HUB_DATA_BUILDERS)}); "
                        f"pick a dataset repo that holds question/response pairs in one of these formats")
    if patterns == {"train": ["**"]}:
        wanted = patterns["train"]  # no split in any file name: every data file is the data
    elif split in patterns:
        wanted = patterns[split]
    else:
        raise DataError(f"dataset repo {repo_id} has no split '{split}' (its splits: {', '.join(patterns)}); "
                        f"ask for one of them")
    files = set()
    for pattern in wanted:
        try:
            files.update(resolve_pattern(pattern, str(folder), allowed_extensions=list(_HUB_DATA_BUILDERS)))
        except FileNotFoundError:
            continue  # a split is usually matched by one of its patterns only
    return sorted(Path(f) for f in files)


def _by_builder(files: list[Path]) -> dict[str, list[str]]:
    """Files grouped by the `datasets` builder that reads them (a repo may mix formats)."""
    groups: dict[str, list[str]] = {}
    for file in files:
        groups.setdefault(_HUB_DATA_BUILDERS[file.suffix], []).append(str(file))
    return groups


def _read_with_datasets(builder: str, files: list[str], repo_id: str, split: str, question_column: str,
                        response_column: str, cache_dir: str | Path | None) -> list[dict]:
    import datasets

    what = f"split '{split}' of dataset repo {repo_id}"
    # `datasets` converts the files to Arrow in a cache first; the pairs end up in Python lists
    # anyway, so a temporary cache is enough (and leaves nothing behind in ~/.cache).
    with tempfile.TemporaryDirectory(prefix="hub-dataset-", dir=cache_dir) as arrow_cache:
        try:
            table = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=arrow_cache)
        except Exception as error:  # the builders raise many kinds (ArrowInvalid, DatasetGenerationError, ...)
            raise DataError(f"cannot read the {builder} files of {what} ({_one_line(error)}); fix or "
                            f"replace the dataset") from None
        _check_columns(table.column_names, question_column, response_column, what,
                       "pass the columns that hold the question and the response")
        rows = table.select_columns([question_column, response_column]).to_list()
    return [_pair(row[question_column], row[response_column], f"{what} row {number}", question_column,
                  response_column)
            for number, row in enumerate(rows, start=1)]


# ----------------------------------------------------------------------------------------------
# Cortex.t data from W&B
# ----------------------------------------------------------------------------------------------


def load_unwanted_phrases(path: str | Path | None = None) -> list[str]:
    """The phrases that disqualify a Cortex response, one a line (default: the shipped copy)."""
    path = Path(path) if path is not None else DEFAULT_UNWANTED_PHRASES
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"cannot read the unwanted-phrases file {path} ({error.strerror or error}); "
                        f"pass a text file with one phrase a line") from None
    # Only the line ends go: "my purpose is to " keeps its trailing space, as in the original list.
    # A blank line is no phrase (it would match every response).
    return [line for line in text.splitlines() if line.strip()]


def cortex_pairs_from_history(rows: Iterable[dict], unwanted_phrases: Iterable[str]) -> list[dict]:
    """The usable prompt/response pairs of Cortex validator history rows, in row then uid order."""
    phrases = tuple(unwanted_phrases)
    pairs = []
    for row in rows:
        for uid in range(CORTEX_MAX_UIDS):
            pair = _cortex_pair(row.get(f"prompts.{uid}"), row.get(f"responses.{uid}"), phrases)
            if pair is not None:
                pairs.append(pair)
    return pairs


def _cortex_pair(prompt, response, phrases: tuple[str, ...]) -> dict | None:
    if not (isinstance(prompt, str) and isinstance(response, str)):
        return None  # the uid did not answer at this step (absent, None or NaN)
    prompt, response = prompt.strip(), response.strip()
    if not prompt or not response or not response.endswith(_SENTENCE_ENDINGS):
        return None  # an empty or cut-off answer
    # SUBNET.md: "the response ends with ., ? or !, and it contains none of the phrases". "It"
    # could be read as the pair; we read it as the response, as the original miner did
    # (`not any(x in response for x in UNWANTED_PHRASES)`): case-sensitive, the prompt unchecked.
    if any(phrase in response for phrase in phrases):
        return None
    return {"question": prompt, "response": response}


def fetch_cortex_pairs(steps: int, samples: int, running_only: bool = False, api=None, retries: int = 3,
                       backoff_s: float = 2.0, timeout_s: float = 30) -> list[dict]:
    """Up to `samples` Cortex pairs from the latest `steps` history rows of each validator run.

    `api` is a `wandb.Api` or an object with its `runs(path, filters=...)` (runs with
    `lastHistoryStep` and `scan_history(...)`); by default `wandb.Api(timeout=timeout_s)`, which
    needs a W&B API key (WANDB_API_KEY or `wandb login`). A network failure is retried, from the
    start, `retries` times in all, waiting backoff_s, 2*backoff_s, ... between attempts.
    """
    for name, value in (("steps", steps), ("samples", samples), ("retries", retries)):
        if not (isinstance(value, int) and value >= 1):
            raise DataError(f"Cortex {name} must be a positive integer, not {value!r}")
    phrases = load_unwanted_phrases()
    retryable = _network_errors()
    for attempt in range(1, retries + 1):
        try:
            pairs = _collect_cortex_pairs(api if api is not None else _wandb_api(timeout_s), steps, samples,
                                          running_only, phrases)
            break
        except retryable as error:
            reason = _one_line(error)
            logger.warning("W&B attempt %d/%d for Cortex data failed: %s", attempt, retries, reason)
            if attempt < retries:
                time.sleep(backoff_s * 2 ** (attempt - 1))
    else:
        raise DataError(f"cannot reach W&B for Cortex data ({retries} attempts): {reason}; check the network "
                        f"{_NO_CORTEX_HINT}")
    if not pairs:
        raise DataError(f"no usable Cortex pair in the latest {steps} steps of the "
                        f"{'running ' if running_only else ''}validator runs of {CORTEX_PROJECT}; read more "
                        f"steps {_NO_CORTEX_HINT}")
    if len(pairs) < samples:
        logger.warning("Cortex data gave %d pairs, fewer than the %d asked for", len(pairs), samples)
    return pairs


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a failed W&B request raises: OSError covers requests' and socket errors, CommError
    the client's own (including a failed credential check, which is how it reports no network)."""
    from wandb.errors import CommError

    return (OSError, CommError)


def _wandb_api(timeout_s: float):
    import wandb
    from wandb.errors import UsageError

    try:
        # The timeout bounds every request, so an unreachable W&B fails instead of hanging.
        return wandb.Api(timeout=max(1, math.ceil(timeout_s)))
    except UsageError:  # no API key anywhere; retrying cannot help
        raise DataError(f"W&B has no API key for Cortex data: set WANDB_API_KEY (environment or --env_file) "
                        f"or run `wandb login`, {_NO_CORTEX_HINT}") from None


def cortex_run_filters(running_only: bool) -> dict:
    """The original miner's W&B run filter: validator runs, optionally only the running ones."""
    filters: list[dict] = [{"config.type": CORTEX_RUN_TYPE}]
    if running_only:
        filters.append({"state": "running"})
    return {"$and": filters}


def _collect_cortex_pairs(api, steps: int, samples: int, running_only: bool, phrases: list[str]) -> list[dict]:
    runs = api.runs(CORTEX_PROJECT, filters=cortex_run_filters(running_only))
    pairs: list[dict] = []
    for run in _progress(runs, desc="Cortex runs", unit=" runs"):
        pairs.extend(cortex_pairs_from_history(_latest_history(run, steps), phrases))
        if len(pairs) >= samples:
            break
    return pairs[:samples]


def _latest_history(run, steps: int) -> Iterable[dict]:
    """The run's last `steps` history rows, read as the original miner read them: a scan from
    lastHistoryStep + 1 - steps up to lastHistoryStep (scan_history's max_step is exclusive)."""
    last_step = run.lastHistoryStep
    if last_step < 0:
        return []  # the run has logged nothing yet
    max_step = last_step + 1
    return run.scan_history(min_step=max(0, max_step - steps), max_step=max_step, page_size=min(steps, 1000))
