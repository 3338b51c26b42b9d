"""A competition's evaluation tasks as data (issue 13): each task's rows read in the data set's own schema, its
held-out samples drawn the way validators draw theirs, and the training mixture of what is left, by task weight.

Validators take rows at seeded random positions of a data set, parse each with the data set's rules
(`trainables.reasoning_data`: rows of other task types, rows without an answer and samples estimated over the
sequence length are dropped) and keep the first N samples that parse. Here the rows are visited in one seeded
random order: the first `eval_samples` that parse are the task's held-out set, the ones after them its training
pool, so no training sample is ever scored. A training mixture takes from each pool in proportion to the task
weights, as much as the scarcest task allows.

Rows come from a local `.jsonl` or `.parquet` file (`--task_data NAME=PATH`) or from the data set's Hub repo, of
which only the parquet data files are downloaded, once per node into the Hub cache. Parquet is read one row group
at a time and only the drawn rows are kept, so a multi-gigabyte data set costs one row group of memory.
"""

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainables.data import DataError, EvalTask, TokenizedSplit, jsonl_values, splits_of
from trainables.errors import one_line
from trainables.reasoning_data import PARSERS
from trainables.scoring import reference_sample

Sample = tuple[str, str]  # (question, reference)


@dataclass(frozen=True)
class TaskSamples:
    name: str
    weight: float
    held_out: list[Sample]
    pool: list[Sample]  # parsed samples after the held-out ones, in the same seeded order


def parser_for(dataset: str) -> Callable[[dict, int], Sample | None]:
    try:
        return PARSERS[dataset]
    except KeyError:
        raise DataError(f"no parser for data set {dataset!r} (known: {', '.join(PARSERS)}); a reference_loss task "
                        f"must name one of them") from None


def parquet_row_count(paths: list[Path]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = 0
    for path in paths:
        try:
            total += pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError) as error:  # the footer is read first: a damaged file fails here
            raise _unreadable(path, error) from None
    return total


def _unreadable(path: Path, error: BaseException) -> DataError:
    return DataError(f"{path} is not a readable Parquet file ({one_line(error, 120)}); download the data set again "
                     f"or pass another file")


def _parquet_rows(paths: list[Path], wanted: set[int]) -> dict[int, dict]:
    """The rows at the wanted global positions of the files taken in order, one row group in memory at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, base = {}, 0
    for path in paths:
        try:
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):
                size = parquet.metadata.row_group(group).num_rows
                local = [i - base for i in range(base, base + size) if i in wanted]
                if local:
                    table = parquet.read_row_group(group)
                    rows.update({base + i: row for i, row in zip(local, table.take(local).to_pylist())})
                base += size
        except (pa.ArrowException, OSError) as error:
            raise _unreadable(path, error) from None
    return rows


def _jsonl_rows(path: Path) -> list[dict]:
    return [row if isinstance(row, dict) else {} for _, row in jsonl_values(path, "task data")]


def draw_task_samples(files: list[Path], parse: Callable[[dict, int], Sample | None], sequence_length: int,
                      eval_samples: int, pool_samples: int, seed: int, task: str) -> tuple[list[Sample], list[Sample]]:
    """(held-out samples, training pool): rows visited in a seeded random order, parsed the validator's way; the
    first eval_samples that parse are held out, up to pool_samples after them form the pool."""
    if not files:
        raise DataError(f"task {task} has no data files")
    jsonl = [f for f in files if f.suffix == ".jsonl"]
    parquet = [f for f in files if f.suffix == ".parquet"]
    if len(jsonl) + len(parquet) != len(files):
        raise DataError(f"task {task}'s data must be .jsonl or .parquet files, got {files[0].name}")
    rows = [row for path in jsonl for row in _jsonl_rows(path)]
    total = len(rows) + parquet_row_count(parquet)
    order = list(range(total))
    random.Random(seed).shuffle(order)
    held_out, pool = [], []
    want = eval_samples + pool_samples
    # Read parquet rows in batches of positions, so a data set far larger than what is kept is never loaded whole.
    batch = max(1024, 2 * want)
    for start in range(0, total, batch):
        positions = order[start:start + batch]
        from_parquet = _parquet_rows(parquet, {p - len(rows) for p in positions if p >= len(rows)}) if parquet else {}
        for position in positions:
            row = rows[position] if position < len(rows) else from_parquet.get(position - len(rows), {})
            sample = parse(row, sequence_length)
            if sample is None:
                continue
            (held_out if len(held_out) < eval_samples else pool).append(sample)
            if len(held_out) + len(pool) >= want:
                return held_out, pool
    if not held_out:
        raise DataError(f"task {task}: no row of {', '.join(f.name for f in files)} parses the validator's way "
                        f"(wrong data set, or every sample is over {sequence_length:,} estimated tokens)")
    return held_out, pool


def mixture(tasks: list[TaskSamples], seed: int) -> list[Sample]:
    """Training samples from every task's pool in proportion to its weight: the scarcest pool (relative to its
    weight) is used whole, the others as much as keeps the proportions; then shuffled together."""
    usable = [t for t in tasks if t.weight > 0 and t.pool]
    if not usable:
        raise DataError("no task has training samples left after its held-out set; add data or lower "
                        "--eval_samples_per_task")
    per_weight = min(len(t.pool) / t.weight for t in usable)
    chosen = [sample for t in usable for sample in t.pool[:max(1, int(t.weight * per_weight))]]
    random.Random(seed).shuffle(chosen)
    return chosen


def tokenize_references(tokenizer, samples: list[Sample], max_length: int | None = None,
                        note: str = "") -> TokenizedSplit:
    """Reference-loss samples (context, then the reference encoded on its own). With max_length, samples longer
    than it are dropped (cutting a reference would cut its answer), and one line says how many (`note` ends it);
    without, none is (validators truncate nothing)."""
    encoded = [reference_sample(tokenizer, question, reference) for question, reference in samples]
    kept = [(ids, context) for ids, context in encoded
            if len(ids) > context and (max_length is None or len(ids) <= max_length)]
    if not kept:
        raise DataError(f"no sample fits in --max_length {max_length} tokens; raise --max_length")
    if len(kept) < len(encoded):
        print(f"note: dropped {len(encoded) - len(kept)} of {len(encoded)} samples longer than --max_length "
              f"({max_length}){note}")
    return splits_of(kept)


def eval_tasks(samples: list[TaskSamples], tokenizer) -> tuple[TokenizedSplit, tuple[EvalTask, ...]]:
    """Every task's held-out samples in one split, task after task, with where each task's samples are."""
    tasks, ordered, start = [], [], 0
    for task in samples:
        encoded = [reference_sample(tokenizer, q, r) for q, r in task.held_out]
        ordered.extend(encoded)
        tasks.append(EvalTask(task.name, task.weight, start, start + len(encoded)))
        start += len(encoded)
    return splits_of(ordered), tuple(tasks)
