"""A competition's tasks as data (issue 13): held-out samples drawn the validators' way, the training mixture by
task weight, reference tokenization, the weighted score and the score-based head-to-head."""

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.inputs import prepare_data
from publishing.head_to_head import Opponent, versus
from publishing.subnet.competitions import CompetitionError, load_competitions
from trainables.data import DataError, EvalTask
from trainables.reasoning_data import codeforces_sample, synthetic_1_sample
from trainables.scoring import competition_score, reference_sample
from trainables.task_data import TaskSamples, draw_task_samples, eval_tasks, mixture, tokenize_references

FIXTURES = Path(__file__).parent / "fixtures" / "reasoning"
SYNTHETIC = FIXTURES / "synthetic_1_sft_rows.jsonl"
CODEFORCES = FIXTURES / "codeforces_cots_rows.jsonl"


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_held_out_samples_are_the_first_rows_that_parse_in_a_seeded_order_and_never_trained_on():
    held_out, pool = draw_task_samples([SYNTHETIC], synthetic_1_sample, 2048, eval_samples=8, pool_samples=1000,
                                       seed=3, task="SYNTHETIC_1_SFT")
    parsed = [s for s in (synthetic_1_sample(r, 2048) for r in rows(SYNTHETIC)) if s is not None]
    assert len(held_out) == 8 and len(held_out) + len(pool) == len(parsed) < len(rows(SYNTHETIC))  # drops happened
    assert sorted(held_out + pool) == sorted(parsed) and not set(held_out) & set(pool)
    again = draw_task_samples([SYNTHETIC], synthetic_1_sample, 2048, 8, 1000, seed=3, task="SYNTHETIC_1_SFT")
    other = draw_task_samples([SYNTHETIC], synthetic_1_sample, 2048, 8, 1000, seed=4, task="SYNTHETIC_1_SFT")
    assert again == (held_out, pool) and other[0] != held_out
    # the pool is capped, the held-out set is not cut for it
    assert [len(part) for part in draw_task_samples([SYNTHETIC], synthetic_1_sample, 2048, 8, 5, 3, "s")] == [8, 5]


def test_parquet_rows_are_drawn_exactly_as_the_same_rows_in_jsonl(tmp_path):
    table = pa.Table.from_pylist(rows(CODEFORCES))
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(table, path, row_group_size=7)  # several row groups: rows are read one group at a time
    from_parquet = draw_task_samples([path], codeforces_sample, 2048, 5, 1000, seed=1, task="CODEFORCES_COTS")
    from_jsonl = draw_task_samples([CODEFORCES], codeforces_sample, 2048, 5, 1000, seed=1, task="CODEFORCES_COTS")
    assert from_parquet == from_jsonl


def test_a_data_set_in_another_schema_fails_in_one_line():
    with pytest.raises(DataError, match="no row of codeforces_cots_rows.jsonl parses the validator's way"):
        draw_task_samples([CODEFORCES], synthetic_1_sample, 2048, 5, 10, seed=0, task="SYNTHETIC_1_SFT")


def test_the_training_mixture_follows_the_task_weights():
    a = TaskSamples("a", 0.75, [], [(f"qa{i}", "r") for i in range(30)])
    b = TaskSamples("b", 0.25, [], [(f"qb{i}", "r") for i in range(50)])
    mixed = mixture([a, b], seed=0)
    from_a = sum(q.startswith("qa") for q, _ in mixed)
    assert (from_a, len(mixed) - from_a) == (30, 10)  # a is the scarce one: used whole, b at a third of it
    assert mixed != sorted(mixed)  # shuffled together
    with pytest.raises(DataError, match="no task has training samples left"):
        mixture([TaskSamples("a", 1.0, [("q", "r")], [])], seed=0)


def test_reference_samples_tokenize_with_their_context_unscored_and_long_ones_are_dropped(tokenizer, capsys):
    samples = [("What is 1+1?", "<think>1+1=2</think> \\boxed{2}"), ("Q " * 400, "R " * 400)]
    split = tokenize_references(tokenizer, samples, max_length=200)
    ids, context = reference_sample(tokenizer, *samples[0])
    assert len(split) == 1 and split.pair(0)[0].tolist() == ids and split.pair(0)[1] == context
    assert "dropped 1 of 2 samples longer than --max_length (200)" in capsys.readouterr().out
    tasks = [TaskSamples("x", 0.5, samples[:1], []), TaskSamples("y", 0.5, samples, [])]
    eval_split, spans = eval_tasks(tasks, tokenizer)  # held-out samples are never cut or dropped
    assert len(eval_split) == 3 and spans == (EvalTask("x", 0.5, 0, 1), EvalTask("y", 0.5, 1, 3))


def test_the_score_is_each_tasks_mean_weighted_across_tasks():
    tasks = (EvalTask("x", 0.5, 0, 2), EvalTask("y", 0.5, 2, 5))
    score, per_task = competition_score([1.0, 3.0, 2.0, 2.0, 5.0], tasks)
    assert per_task == {"x": 2.0, "y": 3.0} and score == 2.5  # not the mean over all five samples (2.6)
    assert competition_score([1.0, 3.0, 2.0], ()) == (2.0, {})  # the original competitions: the plain mean


def test_the_head_to_head_of_a_task_competition_compares_whole_scores_with_epsilon():
    tasks = (EvalTask("x", 1.0, 0, 2),)
    opponent = Opponent(uid=7, model_id="a:b:c:d:4", block=100, model_dir="/nowhere", epsilon=0.05)
    better_by_3 = versus([0.97, 0.97], [1.0, 1.0], opponent, tasks)
    better_by_6 = versus([0.94, 0.94], [1.0, 1.0], opponent, tasks)
    assert (better_by_3.win_rate, better_by_6.win_rate) == (0.0, 1.0)
    assert "a win needs below 0.9500 (epsilon 0.0500): no win" in better_by_3.line()
    per_pair = versus([0.5, 2.0], [1.0, 1.0], opponent, ())  # the original competitions: per-pair wins
    assert per_pair.wins == 1 and per_pair.method == "per_pair"


def test_a_competition_may_not_mix_scoring_methods(tmp_path):
    path = tmp_path / "competitions.yaml"
    path.write_text("""competitions:
  x1: {architectures: [LlamaForCausalLM], max_parameters: 10, tokenizer: t, reward_share: 1, max_repo_bytes: 10,
       sequence_length: 10, max_weight_norm: 1, high_norm: 1, max_high_norm_share: 0.1,
       tasks: [{name: a, method: reference_loss, dataset: d, weight: 0.5},
               {name: b, method: response_loss, dataset: cortex, weight: 0.5}]}
""")
    with pytest.raises(CompetitionError, match="mixes scoring methods"):
        load_competitions(path)
    with pytest.raises(CompetitionError, match="cannot read competitions from"):
        load_competitions(tmp_path / "missing.yaml")


@pytest.mark.parametrize("flags, message", [
    (["--task_data", "SYNTHETIC_1_SFT"], "--task_data takes NAME=PATH pairs"),
    (["--task_data", "NOT_A_TASK=x.jsonl"], "--task_data names NOT_A_TASK, not a task of competition 4"),
    (["--task_data", "SYNTHETIC_1_SFT=/no/such.jsonl"], "--task_data SYNTHETIC_1_SFT=/no/such.jsonl does not exist"),
])
def test_bad_task_data_fails_before_anything_starts_in_one_line(flags, message, model_dir):
    with pytest.raises(ConfigError, match=message) as info:
        prepare_data(load_config(["--competition_id", "4", "--tokenizer", "model", *flags]), model_dir)
    assert "\n" not in str(info.value)


def test_competition_4_scores_both_tasks_from_their_own_rows(model_dir, capsys):
    config = load_config(["--competition_id", "4", "--tokenizer", "model", "--eval_samples_per_task", "6",
                          "--task_data", f"SYNTHETIC_1_SFT={SYNTHETIC},CODEFORCES_COTS={CODEFORCES}"])
    data = prepare_data(config, model_dir)
    assert [(t.name, t.weight, t.stop - t.start) for t in data.tasks] == [("SYNTHETIC_1_SFT", 0.5, 6),
                                                                          ("CODEFORCES_COTS", 0.5, 6)]
    assert len(data.eval) == 12 and len(data.train) > 0
    assert "task CODEFORCES_COTS: 6 held-out samples" in capsys.readouterr().out
    # --dataset_repo_id naming one of the tasks' data sets trains on that task alone
    one = prepare_data(load_config([*_argv(config), "--dataset_repo_id", "open-r1/codeforces-cots"]), model_dir)
    assert len(one.train) < len(data.train) and len(one.eval) == 12
    assert math.isclose(sum(t.weight for t in one.tasks), 1.0)


def _argv(config) -> list[str]:
    return ["--competition_id", "4", "--tokenizer", "model", "--eval_samples_per_task", "6",
            "--task_data", config.data.task_data]
