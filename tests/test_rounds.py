"""Issue 25, the pure parts of mining rounds (orchestrator.rounds): where a round starts, how its study learns from
earlier rounds, rounds.csv and its damage, what --resume does next, when the run stops, and each round's data seed.
No Ray, no model: an in-memory Optuna study and tmp_path files only."""

import math
import sys

import optuna
import pytest

from orchestrator.rounds import (COLUMNS, CPU_HOURS, GPU_HOURS, ROUNDS_CSV, SEED_MODULUS, Candidate, Next,
                                 RoundRecord, Seed, Source, Start, StudyAction, SweepFolder, TrialRow, append_round,
                                 best_earlier, decide_start, enqueue_seeds, folder_round, next_round,
                                 parse_rounds_csv, plan_study, read_rounds, resume_step, round_compute, round_folder,
                                 round_seed, rounds_csv_text, trial_rows)
from orchestrator.search_space import optuna_sampler, parse_search_space
from orchestrator.trial_records import TrialRecord, TrialStatus, write_trials_csv
from trainables.hyperparameters import Hyperparameters

SPACE = parse_search_space({"sampler": "tpe", "n_startup_trials": 3,
                            "space": {"learning_rate": {"loguniform": [1.0e-6, 1.0e-3]}, "r": [8, 16, 32],
                                      "alpha": [8, 16, 32]}}, "test space")
GRID = parse_search_space({"sampler": "grid", "space": {"learning_rate": [1.0e-4, 1.0e-5], "r": [8, 16],
                                                         "alpha": [16]}}, "test grid")


def test_no_ray_no_torch():
    import subprocess
    out = subprocess.run([sys.executable, "-c", "import sys, orchestrator.rounds; "
                          "print([m for m in ('ray', 'torch', 'transformers') if m in sys.modules])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# --- 1. the start-model decision ----------------------------------------------------------------------------------

def leader(score=4.1021, uid=12, **kw):
    return Candidate(Source.LEADER, "rival/model@0123abcd", score, uid=uid, block=1000, **kw)


def ours(score=4.2310, **kw):
    return Candidate(Source.OURS, "round-002/best_model", score, **kw)


def committed(score=4.3001, **kw):
    return Candidate(Source.COMMITTED, "me/model@89abcdef", score, uid=7, block=900, **kw)


def decide(start="best", **kw):
    return decide_start(kw.pop("round_number", 3), start, base_label="tiny-llama", **kw)


def test_best_starts_from_the_lowest_score_and_says_so_with_the_three_scores():
    d = decide(leader=leader(), ours=ours(), committed=committed())
    assert d.chosen.source is Source.LEADER and d.reason == "the lowest score"
    assert d.line == "round 3: starts from the leader (uid 12, 4.1021) — ours 4.2310, committed 4.3001"
    d = decide(leader=leader(4.5), ours=ours(), committed=committed())
    assert d.chosen.source is Source.OURS
    assert d.line == "round 3: starts from ours (4.2310) — leader uid 12 4.5000, committed 4.3001"
    d = decide(leader=leader(4.5), ours=ours(4.4), committed=committed(4.3))
    assert d.chosen.source is Source.COMMITTED
    assert d.line == "round 3: starts from our committed model (uid 7, 4.3000) — leader uid 12 4.5000, ours 4.4000"


def test_a_tie_keeps_ours_then_our_committed_model_then_the_leader():
    d = decide(leader=leader(4.2), ours=ours(4.2), committed=committed(4.2))
    assert d.chosen.source is Source.OURS
    assert "tied with our committed model and the leader (ours kept on a tie)" in d.line
    d = decide(leader=leader(4.2), committed=committed(4.2))
    assert d.chosen.source is Source.COMMITTED
    d = decide(leader=leader(4.2), ours=ours(4.2 + 1e-12))  # no tolerance: the lower score wins, however close
    assert d.chosen.source is Source.LEADER


def test_missing_candidates():
    d = decide(round_number=1)  # round 1 of a new miner on a competition nobody leads yet
    assert d.chosen.source is Source.BASE and d.chosen.label == "tiny-llama"
    assert d.line == ("round 1: starts from the base model tiny-llama (nothing scored yet) — no leader on chain, "
                      "no model of ours yet, nothing committed")
    d = decide(ours=ours(), committed_is_ours=True)
    assert d.chosen.source is Source.OURS and d.reason == "the only model scored"
    assert d.line == "round 3: starts from ours (4.2310) — no leader on chain, committed = ours"
    d = decide(leader=leader())
    assert d.line == ("round 3: starts from the leader (uid 12, 4.1021) — no model of ours yet, nothing committed")


def test_a_model_that_did_not_score_or_is_rejected_is_never_started_from():
    d = decide(leader=leader(math.inf), ours=ours())
    assert d.chosen.source is Source.OURS
    assert "leader uid 12 did not score (inf)" in d.line
    d = decide(leader=leader(3.0, rejected="weight norm 1500 above 1000"), ours=ours(math.nan))
    assert d.chosen.source is Source.BASE and d.reason == "no model usable"
    assert "leader uid 12 is rejected (weight norm 1500 above 1000)" in d.line and "ours did not score (nan)" in d.line


def test_pinned_choices():
    d = decide("leader", leader=leader(4.9), ours=ours(), committed=committed())
    assert d.chosen.source is Source.LEADER
    assert d.line == ("round 3: starts from the leader (uid 12, 4.9000), as --start leader asks — ours 4.2310, "
                      "committed 4.3001")
    d = decide("ours", leader=leader(1.0), ours=ours(4.4), committed=committed(4.3))
    assert d.chosen.source is Source.COMMITTED and d.reason == "--start ours"  # ours: the better of our two
    d = decide(Start.OURS, leader=leader(1.0), ours=ours())
    assert d.chosen.source is Source.OURS and ", as --start ours asks — leader uid 12 1.0000" in d.line


def test_a_pinned_candidate_that_is_missing_falls_back_with_the_reason_in_the_line():
    d = decide("leader", ours=ours(), committed=committed())
    assert d.chosen.source is Source.OURS and d.reason == "--start leader, but no leader on chain"
    assert d.line == ("round 3: starts from ours (4.2310) (--start leader, but no leader on chain) — no leader on "
                      "chain, committed 4.3001")
    d = decide("leader", leader=leader(math.inf))
    assert d.chosen.source is Source.BASE
    assert d.reason == "--start leader, but the leader's model (uid 12) did not score (inf)"
    d = decide("ours", leader=leader())
    assert d.chosen.source is Source.BASE and d.reason == "--start ours, but no model of ours yet"
    assert d.line.startswith("round 3: starts from the base model tiny-llama (--start ours, but no model of ours yet)")
    d = decide("ours", leader=leader(), ours=ours(math.inf))
    assert d.chosen.source is Source.BASE and d.reason == "--start ours, but ours did not score (inf)"


def test_when_we_lead_the_leaders_model_is_our_commitment():
    d = decide(leader=leader(4.0, uid=7), ours=ours(4.2), our_uid=7)
    assert d.we_lead and d.chosen.source is Source.COMMITTED
    assert d.line == "round 3: starts from our committed model (uid 7, 4.0000) — we lead, ours 4.2000"
    assert d.record_fields()["leader_uid"] == 7 and d.record_fields()["leader_score"] == 4.0
    d = decide("leader", leader=leader(4.3, uid=7), ours=ours(4.2), our_uid=7)
    assert d.chosen.source is Source.COMMITTED and d.reason == "--start leader (we lead)"
    d = decide("leader", leader=leader(4.2, uid=7), ours=ours(4.2), committed_is_ours=True, our_uid=7)
    assert d.chosen.source is Source.OURS and d.line.endswith("— we lead, committed = ours")


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match="--start must be one of best, leader, ours"):
        decide("newest")
    with pytest.raises(ValueError, match="has source"):
        decide(leader=ours())
    with pytest.raises(ValueError, match="not both"):
        decide(ours=ours(), committed=committed(), committed_is_ours=True)
    with pytest.raises(ValueError, match="start at 1"):
        decide(round_number=0)


def test_the_decision_fills_its_part_of_the_round_record():
    d = decide(leader=leader(), ours=ours(), committed_is_ours=True)
    f = d.record_fields()
    assert f["start_source"] is Source.LEADER and f["start_score"] == 4.1021 and f["leader_uid"] == 12
    assert f["ours_score"] == 4.2310 and math.isnan(f["committed_score"]) and f["start_reason"] == "the lowest score"
    f = decide(round_number=1).record_fields()
    assert f["leader_uid"] is None and math.isnan(f["leader_score"]) and math.isnan(f["start_score"])


# --- 2. seeding a new study ---------------------------------------------------------------------------------------

def row(round_number, trial, lr, r, alpha, score):
    return TrialRow(round_number, trial, Hyperparameters(lr, r, alpha), score)


ROWS = [
    row(1, "a", 1e-4, 8, 16, 3.0), row(1, "b", 2e-4, 16, 16, 2.5), row(1, "c", 3e-4, 32, 32, 2.9),
    row(2, "d", 1e-5, 8, 8, 4.1), row(2, "e", 2e-4, 16, 16, 4.0),  # e: round 1's b again (it seeded round 2)
    row(2, "f", 5e-5, 4, 8, 1.0),       # r=4 is outside SPACE
    row(2, "g", 5e-2, 8, 8, 1.5),       # a learning rate outside SPACE's range
    row(2, "h", 7e-5, 32, 8, math.nan),  # no score
]


def test_the_best_distinct_sets_that_fit_by_rank_in_their_round_newest_round_first():
    seeds = best_earlier(ROWS, SPACE, k=4)
    # round 2's best (e), round 1's best (b = e's set, taken already), round 2's second (d), round 1's second (c),
    # round 1's third (a)
    assert [(s.round, s.trial_id) for s in seeds] == [(2, "e"), (2, "d"), (1, "c"), (1, "a")]
    assert seeds[0].params == {"learning_rate": 2e-4, "r": 16, "alpha": 16}
    assert [s.trial_id for s in best_earlier(ROWS, SPACE, k=2)] == ["e", "d"]
    assert best_earlier([], SPACE) == [] and best_earlier(ROWS[5:], SPACE) == []


def test_trials_csv_as_the_sweep_writes_it(tmp_path):
    def record(trial_id, hp, loss, status=TrialStatus.FINISHED):
        return TrialRecord(trial_id, hp, status, "", 10, loss, loss, 12.0, f"/x/{trial_id}")

    path = write_trials_csv([record("t1", Hyperparameters(1.23456789e-4, 16, 32), 2.75),
                             record("t2", Hyperparameters(3e-5, 8, 8), 2.5),
                             record("t3", Hyperparameters(1e-4, 8, 8), math.nan, TrialStatus.FAILED),
                             record("t4", None, math.nan, TrialStatus.FAILED)], tmp_path)
    rows, problems = trial_rows(path.read_bytes(), 4)
    assert problems == []
    assert [(r.trial_id, r.round, r.score) for r in rows] == [("t2", 4, 2.5), ("t1", 4, 2.75)]
    assert rows[1].hyperparameters == Hyperparameters(1.23456789e-4, 16, 32)  # the learning rate exactly
    rows, problems = trial_rows(b"trial_id,learning_rate,r,alpha,best_eval_loss\nx,1e-4,eight,8,2.0\n"
                                b"y,1e-4,8,8,2.0\n\xff\n", 5)
    assert [r.trial_id for r in rows] == ["y"] and len(problems) == 2
    assert trial_rows("a,b\n1,2\n", 6) == ([], ["round 6's trials.csv lacks the columns alpha, best_eval_loss, "
                                                 "learning_rate, r, trial_id"])


FP = {"model": "m1", "data": "d1", "space": "s1", "competition": "4"}


def test_the_same_starting_model_and_data_continue_the_study():
    plan = plan_study(4, FP, dict(FP), ROWS, SPACE)
    assert plan.action is StudyAction.CONTINUE and plan.seeds == () and plan.record == "continue"
    assert "continues the last round's study" in plan.line


def test_a_new_starting_model_seeds_a_new_study():
    plan = plan_study(4, FP, {**FP, "model": "m2", "data": "d2"}, ROWS, SPACE)
    assert plan.action is StudyAction.SEED and plan.record == "seed 3"
    assert [s.trial_id for s in plan.seeds] == ["e", "d", "c"]
    assert plan.line.startswith("round 4: a new study (the starting model and the data changed), seeded with the 3 "
                                "best earlier sets (lr=2.00e-04 r=16 alpha=16 (round 2, 4.0000);")
    assert plan.line.endswith("then TPE")
    assert len(plan_study(4, FP, {**FP, "model": "m2"}, ROWS, SPACE, trials=3).seeds) == 2  # TPE gets a turn
    assert len(plan_study(4, FP, {**FP, "model": "m2"}, ROWS, SPACE, trials=1).seeds) == 1
    assert "the ranking changed" in plan_study(4, FP, {**FP, "ranked_on": "rank_loss"}, ROWS, SPACE).line


def test_nothing_to_seed():
    plan = plan_study(1, None, FP, [], SPACE)
    assert plan.action is StudyAction.NEW and plan.line == "round 1: a new study (no earlier round), TPE from the start"
    plan = plan_study(3, FP, {**FP, "model": "m2"}, ROWS[5:], SPACE)
    assert plan.action is StudyAction.NEW and "no earlier trial fits this search space" in plan.line
    plan = plan_study(3, FP, {**FP, "model": "m2"}, ROWS, GRID)
    assert plan.action is StudyAction.NEW and "a grid runs every combination, nothing seeded" in plan.line


def test_seeds_are_the_studys_first_trials_then_its_sampler_takes_over():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna_sampler(SPACE, seed=0))
    seeds = plan_study(2, FP, {**FP, "model": "m2"}, ROWS, SPACE).seeds
    assert enqueue_seeds(study, seeds) == 3
    asked = []
    for value in (2.0, 1.0, 3.0, None):
        trial = study.ask(fixed_distributions=SPACE.distributions)  # as Ray's OptunaSearch asks
        asked.append(trial.params)
        if value is not None:
            study.tell(trial, value)
    assert asked[:3] == [s.params for s in seeds]
    assert asked[3] not in asked[:3]  # the sampler's own suggestion
    assert study.trials[0].user_attrs["seeded_from"] == "round 2 trial e"
    assert enqueue_seeds(study, seeds) == 0  # a --resume that seeds again adds nothing


# --- 3. the round record and rounds.csv ---------------------------------------------------------------------------

def record(n, **kw):
    values = dict(round=n, started_at=1_750_000_000.0 + 3600 * n, ended_at=1_750_003_000.0 + 3600 * n,
                  start_source=Source.LEADER, start_model="rival/model@0123abcd", start_score=4.1021,
                  start_reason="the lowest score", leader_uid=12, leader_score=4.1021, ours_score=4.231,
                  committed_score=math.nan, data_seed=round_seed(0, n), study="seed 3", best_trial="a1b2_00003",
                  best_score=3.95, published=True, publish_reason="beats the leader by 3.7%, epsilon 1.0%",
                  compute_hours=0.8333, compute_unit=GPU_HOURS, experiment=round_folder(n))
    return RoundRecord(**{**values, **kw})


def same(a: RoundRecord, b: RoundRecord) -> bool:
    return all(getattr(a, c) == getattr(b, c) or (isinstance(getattr(a, c), float) and math.isnan(getattr(a, c))
                                                   and math.isnan(getattr(b, c))) for c in COLUMNS)


def test_rounds_csv_round_trips_and_is_written_whole(tmp_path):
    path = str(tmp_path / ROUNDS_CSV)
    assert read_rounds(path).records == () and read_rounds(path).warning is None  # none yet: no warning
    first = record(1, leader_uid=None, leader_score=math.nan, start_source=Source.BASE, start_score=math.nan,
                   best_trial="", best_score=math.nan, published=False,
                   publish_reason="eval loss 4.5 is above the threshold,\n\"quoted\"", compute_unit=CPU_HOURS)
    assert append_round(path, first) is None
    assert append_round(path, record(2)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [ROUNDS_CSV]  # no temporary file left
    text = (tmp_path / ROUNDS_CSV).read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS) and text.count("\n") == 3
    assert "2025-06-15T" in text  # times as ISO 8601 UTC
    back = read_rounds(path)
    assert back.warning is None and [r.round for r in back.records] == [1, 2]
    assert same(back.records[1], record(2))
    assert back.records[0].publish_reason == "eval loss 4.5 is above the threshold, \"quoted\""  # one line a row
    assert same(back.records[0], RoundRecord(**{**first.__dict__, "publish_reason": back.records[0].publish_reason}))


def test_a_round_recorded_again_replaces_its_row(tmp_path):
    path = str(tmp_path / ROUNDS_CSV)
    append_round(path, record(1))
    append_round(path, record(2))
    assert append_round(path, record(2, best_score=3.5)) is None
    rounds = read_rounds(path).records
    assert [r.round for r in rounds] == [1, 2] and rounds[1].best_score == 3.5


def damaged_variants() -> dict[str, tuple[bytes, list[int]]]:
    """name -> (the file's bytes, the rounds that must be kept)."""
    good = rounds_csv_text([record(1), record(2), record(3)]).encode()
    header, r1, r2, r3 = good.splitlines(keepends=True)
    return {
        "truncated mid-row": (header + r1 + r2 + r3[: len(r3) // 2], [1, 2]),
        "truncated in its last cell": (header + r1 + r2 + r3[:-6], [1, 2]),
        "a garbled row": (header + r1 + b"\x00garbage,,\"unclosed\n" + r3, [1, 3]),
        "a cell that does not parse": (header + r1 + r2.replace(b",yes,", b",maybe,") + r3, [1, 3]),
        "a wrong header": (b"round,start,score\n" + r1 + r2 + r3, [1, 2, 3]),
        "no header": (r1 + r2 + r3, [1, 2, 3]),
        "not UTF-8": (header + r1 + r2.replace(b"rival", b"riv\xe9l") + r3, [1, 3]),
        "not UTF-8 throughout": (b"\xff\xfe" + good.decode().encode("utf-16-le"), []),
        "a round twice": (header + r1 + r2 + r2.replace(b",3.95,", b",3.5,") + r3, [1, 2, 3]),
        "empty": (b"", []),
        "binary": (bytes(range(256)) * 4, []),
        "blank lines": (header + r1 + b"\n\r\n" + r2 + r3, [1, 2, 3]),
    }


@pytest.mark.parametrize("variant", list(damaged_variants()))
def test_a_damaged_rounds_csv_costs_one_warning_line_and_keeps_the_rows_that_parse(tmp_path, variant):
    data, kept = damaged_variants()[variant]
    path = tmp_path / ROUNDS_CSV
    path.write_bytes(data)
    read = read_rounds(str(path))
    assert [r.round for r in read.records] == kept
    if variant == "blank lines":
        assert read.warning is None
        return
    assert read.warning and "\n" not in read.warning and read.warning.startswith("warning: ")
    assert (f"the {len(kept)} rounds that read whole are kept" if kept else "no round reads whole") in read.warning
    if variant == "a round twice":
        assert read.records[1].best_score == 3.5 and "round 2 is recorded twice" in read.warning
    # appending sets the damaged file aside, whole, and rewrites what read plus the new round
    warning = append_round(str(path), record(9), now=1_750_000_000)
    assert "the damaged file is kept as rounds.csv.damaged-20250615-150640" in warning
    assert (tmp_path / "rounds.csv.damaged-20250615-150640").read_bytes() == data
    again = read_rounds(str(path))
    assert again.warning is None and [r.round for r in again.records] == kept + [9]


def test_the_header_is_read_by_name(tmp_path):
    text = rounds_csv_text([record(1, publish_reason="no comma"), record(2, publish_reason="no comma")])
    lines = [line.split(",") for line in text.splitlines()]
    # no cell of these rows holds a comma: reverse the columns
    reordered = "\n".join(",".join(reversed(cells)) for cells in lines) + "\n"
    read = parse_rounds_csv(reordered.encode())
    assert read.warning is None and same(read.records[0], record(1, publish_reason="no comma"))
    extra = "\n".join(",".join(cells + ["x"]) for cells in lines[:1] + lines[1:]).replace(",x", ",later", 1) + "\n"
    read = parse_rounds_csv(extra.encode())
    assert [r.round for r in read.records] == [1, 2] and "unknown columns (later)" in read.warning


def test_a_rounds_csv_that_cannot_be_read_is_a_warning_and_is_never_overwritten(tmp_path):
    folder = tmp_path / ROUNDS_CSV
    folder.mkdir()
    read = read_rounds(str(folder))
    assert read.records == () and "cannot be read (IsADirectoryError" in read.warning
    warning = append_round(str(folder), record(1))
    assert "round 1 is not recorded in it" in warning and folder.is_dir() and not any(folder.iterdir())


def test_compute_hours():
    assert round_compute(1800, 2, 16) == (1.0, GPU_HOURS)
    assert round_compute(3600, 0, 4) == (4.0, CPU_HOURS)
    assert folder_round(round_folder(12)) == 12 and round_folder(3) == "round-003"
    assert folder_round("lora-sweep-20250101") is None and folder_round("round-000") is None


# --- 4. resume bookkeeping ----------------------------------------------------------------------------------------

def test_resume_continues_where_the_run_stopped_with_no_round_lost_or_repeated():
    def step(recorded, *folders):
        return resume_step([record(n) for n in recorded], [SweepFolder(*f) for f in folders])

    s = step([])
    assert (s.action, s.round, s.line) == (Next.START, 1, "resume: no round yet; round 1 starts")
    # Ctrl-C between rounds: round 2 recorded, its folder finished
    s = step([1, 2], (1, "finished", True), (2, "finished", True))
    assert (s.action, s.round, s.to_record) == (Next.START, 3, ()) and s.line == "resume: round 2 ended; round 3 starts"
    # a driver killed mid-round: round 3's sweep saved its state
    for status in ("running", "interrupted", "failed"):
        s = step([1, 2], (2, "finished", True), (3, status, True))
        assert (s.action, s.round) == (Next.RESUME, 3) and f"was {status} when it stopped; it resumes" in s.line
    # killed before Tune saved anything, or no marker that reads: nothing of it kept, it starts over
    s = step([1, 2], (3, "running", False))
    assert (s.action, s.round) == (Next.RESTART, 3) and "stopped before Tune saved any state" in s.line
    assert step([1, 2], (3, None, True)).action is Next.RESTART
    # the sweep finished, the driver died before its row: recorded from its folder, not run again
    s = step([1, 2], (3, "finished", True))
    assert (s.action, s.round, s.to_record) == (Next.START, 4, (3,))
    assert "round 3 finished without a row in rounds.csv: recorded from its folder first" in s.line
    # a row lost to damage: that round is not run again, and the next number follows the last
    s = step([1, 3])
    assert (s.action, s.round) == (Next.START, 4)
    assert "round 2 left no row and no finished sweep: not run again" in s.line
    s = step([1], (2, "finished", True), (3, "interrupted", True))
    assert (s.action, s.round, s.to_record) == (Next.RESUME, 3, (2,))


# --- 5. stop conditions -------------------------------------------------------------------------------------------

def test_rounds_and_budgets():
    go = next_round(1)
    assert go.go and go.budget_s is None and go.line == "round 1: no time limit (its sweep's trials end it)"
    go = next_round(2, max_rounds=3, round_budget_s=3600)
    assert go.go and go.budget_s == 3600 and go.line == "round 2 of 3: 1h (--round_budget)"
    stop = next_round(4, max_rounds=3, round_budget_s=3600)
    assert not stop.go and stop.line == "run ends: --rounds 3 done"
    go = next_round(3, time_budget_s=3 * 3600, round_budget_s=3600, elapsed_s=3600)
    assert go.budget_s == 3600 and go.line == "round 3: 1h (--round_budget; 2h of --time_budget 3h left)"
    last = next_round(5, time_budget_s=3 * 3600, round_budget_s=3600, elapsed_s=2.5 * 3600)
    assert last.go and last.budget_s == 1800
    assert last.line == "round 5: 30m, what is left of --time_budget 3h, less than --round_budget 1h"
    only = next_round(1, time_budget_s=600, elapsed_s=100)
    assert only.budget_s == 500 and only.line == "round 1: 8m20s, what is left of --time_budget 10m"


def test_the_run_ends_with_one_line_saying_why():
    stop = next_round(6, time_budget_s=3600, round_budget_s=600, elapsed_s=3700)
    assert not stop.go and stop.line == "run ends: --time_budget 1h spent (1h1m40s elapsed)"
    stop = next_round(6, time_budget_s=3600, elapsed_s=3595)
    assert not stop.go and stop.line == "run ends: 5s of --time_budget 1h left, less than a round needs (10s)"
    stop = next_round(4, max_rounds=10, stop_requested=True)
    assert not stop.go and stop.line == "run ends: stopped before round 4; --resume starts it"
    with pytest.raises(ValueError):
        next_round(0)


# --- 6. a data seed per round -------------------------------------------------------------------------------------

def test_each_round_draws_its_own_samples_and_a_resume_draws_them_again():
    assert round_seed(1234, 1) == 1234  # round 1 draws what a one-shot sweep with --seed 1234 draws
    seeds = [round_seed(1234, n) for n in range(1, 5001)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < SEED_MODULUS for s in seeds)
    assert seeds == [round_seed(1234, n) for n in range(1, 5001)]  # a function of the two numbers only
    assert round_seed(SEED_MODULUS - 1, 2) < SEED_MODULUS
    assert round_seed(0, 2) != round_seed(1, 2)
    for bad in ((-1, 1), (SEED_MODULUS, 1), (0, 0), (0, True), (1.5, 1)):
        with pytest.raises(ValueError):
            round_seed(*bad)


def test_seed_describes_itself():
    seed = Seed({"learning_rate": 2e-4, "r": 16, "alpha": 16}, 2, "e", 4.0)
    assert seed.describe() == "lr=2.00e-04 r=16 alpha=16 (round 2, 4.0000)"


def test_a_runs_round_folders_carry_its_name_and_are_told_from_another_runs():
    assert round_folder(7, "mine-1") == "mine-1.round-007"
    assert folder_round("mine-1.round-007", "mine-1") == 7
    assert folder_round("mine-2.round-007", "mine-1") is None and folder_round("round-007", "mine-1") is None
    assert folder_round("mine-1.round-007.restarted-1765000000", "mine-1") is None  # a restarted round set aside
    assert folder_round("a.b.round-002", "a.b") == 2
