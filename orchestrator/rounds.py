"""Rounds of sweeps (`python -m orchestrator.mine`, issue 25): the decisions between sweeps, as pure functions.

A round is one sweep. Before it, the miner scores the competition's leader, our best merged model and our committed
model on the same held-out samples and picks where the round starts (`decide_start`); it draws fresh training
samples (`round_seed`); it continues the study or seeds a new one with the best hyperparameters of earlier rounds
(`plan_study`, `enqueue_seeds`); it gets its share of the time (`next_round`). After it, one row is added to
rounds.csv (`RoundRecord`, `append_round`), and `--resume` reads those rows and the rounds' sweep folders to know
what comes next (`resume_step`).

Nothing here reads a clock, the chain, the Hub, Ray or torch: the caller gathers the facts and carries out the
decision, so every rule is tested directly. The only I/O is rounds.csv itself (`read_rounds`, `append_round`),
through publishing.storage (a local file written whole, by a temporary file and a rename), and the one call that
enqueues trials into an Optuna study it is handed.
"""

import csv
import enum
import io
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone

from orchestrator.durations import MIN_SECONDS, format_duration
from orchestrator.experiment import FAILED, FINISHED, INTERRUPTED, RUNNING
from orchestrator.search_space import SearchSpace
from orchestrator.study import fits_space
from publishing import storage as store
from trainables.errors import one_line
from trainables.hyperparameters import NAMES, Hyperparameters

ROUNDS_CSV = "rounds.csv"
ROUND_FOLDER = re.compile(r"^round-(\d{3,})$")
SEED_TRIALS = 3               # earlier rounds' best hyperparameter sets enqueued into a new study (TPE's startup)
SEED_MODULUS = 2**32          # --seed's range (numpy's and Optuna's seeds)
SEED_STRIDE = 0x9E3779B9      # odd, so round -> seed is one-to-one modulo 2**32: no two rounds draw alike


# --- 1. where a round starts --------------------------------------------------------------------------------------

class Start(enum.StrEnum):
    """--start: `best` (whichever scores lowest), or pinned to the `leader`'s model or to `ours`."""
    BEST = "best"
    LEADER = "leader"
    OURS = "ours"


class Source(enum.StrEnum):
    """Where a round's starting model comes from (rounds.csv's start_source)."""
    LEADER = "leader"        # the competition's leader on the chain (not us)
    OURS = "ours"            # our best merged model so far
    COMMITTED = "committed"  # the model our hotkey has committed, where it is not our best merged one
    BASE = "base"            # the sweep's own starting model (--model / the embedded default): nothing else usable

    @property
    def rank(self) -> int:
        """On a tie in score, the lower rank is kept: ours, then our committed model, then the leader's."""
        return (Source.OURS, Source.COMMITTED, Source.LEADER, Source.BASE).index(self)


@dataclass(frozen=True)
class Candidate:
    """A model a round may start from, scored on the round's held-out samples (orchestrator.score)."""
    source: Source
    label: str                   # what a person reads: a folder, repo@commit
    score: float = math.nan      # the competition's score, lower is better; nan: not scored
    uid: int | None = None       # the committing hotkey's uid (leader, committed)
    block: int | None = None     # its commitment's block (leader, committed)
    rejected: str | None = None  # why validators would reject it (the competition's limits), or None

    @property
    def problem(self) -> str | None:
        """Why this model cannot be a starting point, or None: it was rejected, or it did not score."""
        if self.rejected:
            return f"is rejected ({one_line(self.rejected)[:120]})"
        if not math.isfinite(self.score):
            return f"did not score ({self.score})"
        return None


@dataclass(frozen=True)
class StartDecision:
    round: int
    start: Start                 # --start as given
    chosen: Candidate
    reason: str                  # rounds.csv's start_reason: lowest score, pinned, or the fallback's reason
    line: str                    # the one line printed (and logged): the decision and the three scores
    leader: Candidate | None
    ours: Candidate | None
    committed: Candidate | None  # None: nothing committed, or the committed model is our best one
    we_lead: bool = False
    leading: Candidate | None = None  # the chain's leader as given, ours when we lead (rounds.csv's leader columns)

    def record_fields(self) -> dict:
        """The RoundRecord fields this decision fills."""
        leader = self.leading
        return {"start_source": self.chosen.source, "start_model": self.chosen.label,
                "start_score": self.chosen.score, "start_reason": self.reason,
                "leader_uid": leader.uid if leader else None, "leader_score": leader.score if leader else math.nan,
                "ours_score": self.ours.score if self.ours else math.nan,
                "committed_score": self.committed.score if self.committed else math.nan}


def _score(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def _chosen_text(c: Candidate) -> str:
    if c.source is Source.LEADER:
        return f"the leader (uid {c.uid}, {_score(c.score)})"
    if c.source is Source.OURS:
        return f"ours ({_score(c.score)})"
    if c.source is Source.COMMITTED:
        uid = f"uid {c.uid}, " if c.uid is not None else ""
        return f"our committed model ({uid}{_score(c.score)})"
    return f"the base model {c.label}" + (f" ({_score(c.score)})" if math.isfinite(c.score) else "")


def _best(usable: list[Candidate]) -> Candidate | None:
    """The lowest score; a tie keeps ours, then our committed model, then the leader's (Source.rank)."""
    return min(usable, key=lambda c: (c.score, c.source.rank), default=None)


def decide_start(round_number: int, start: Start | str, *, base_label: str, leader: Candidate | None = None,
                 ours: Candidate | None = None, committed: Candidate | None = None, committed_is_ours: bool = False,
                 our_uid: int | None = None, base_score: float = math.nan) -> StartDecision:
    """Which model round `round_number` starts from, and the one line that says so with the three scores.

    Candidates (each scored on the same held-out samples; None where there is none):
    - `leader`: the competition's leader on the chain (no leader: None). Where its uid is `our_uid`, we lead: the
      leader's model is our commitment, and is treated as `committed`;
    - `ours`: our best merged model so far (None before the first round has made one);
    - `committed`: our hotkey's committed model where it differs from `ours` (`committed_is_ours`: it is `ours`).

    `best` starts from the lowest score, by the raw score, not the validators' epsilon (epsilon decides who is paid;
    the lower loss is the better starting point whatever its block). A tie keeps ours, then our committed model,
    then the leader's: a model that is no better than ours gives nothing for a download, and a new starting model
    ends the study's continuity. `leader` and `ours` (the better of our best and our committed model) pin the
    choice; a pinned candidate that is missing, did not score or is rejected falls back, with the reason in the line:
    `leader` to the best of the rest (the closest thing to following the strongest model); `ours` to the base model
    (the user asked not to follow the leader; our line starts where a one-shot sweep starts). A candidate that did
    not score (inf or nan, as a failing model scores) or that validators would reject is never started from. With no
    usable candidate, the round starts from the base model (`base_label`, the sweep's own starting model).
    """
    start = _as_start(start)
    if round_number < 1:
        raise ValueError(f"round numbers start at 1, got {round_number}")
    for given, source in ((leader, Source.LEADER), (ours, Source.OURS), (committed, Source.COMMITTED)):
        if given is not None and given.source is not source:
            raise ValueError(f"the {source} candidate has source {given.source}")
    if committed is not None and committed_is_ours:
        raise ValueError("pass our committed model, or committed_is_ours, not both")
    if committed_is_ours and ours is None:
        raise ValueError("committed_is_ours needs our best model (ours)")
    leading = leader
    we_lead = leader is not None and our_uid is not None and leader.uid == our_uid
    if we_lead:  # the leader's model is our commitment
        if committed is None and not committed_is_ours:
            committed = Candidate(Source.COMMITTED, leader.label, leader.score, leader.uid, leader.block,
                                  leader.rejected)
        leader = None
    base = Candidate(Source.BASE, base_label, base_score)
    usable = {c.source: c for c in (leader, ours, committed) if c is not None and c.problem is None}
    ours_side = [usable[s] for s in (Source.OURS, Source.COMMITTED) if s in usable]

    fallback = None
    if start is Start.BEST:
        chosen = _best(list(usable.values()))
        reason = ("the lowest score" if len(usable) > 1 else "the only model scored") if chosen else \
            "nothing scored yet" if (leader, ours, committed) == (None, None, None) else "no model usable"
    elif start is Start.LEADER:
        ours_leading = ours if committed_is_ours else committed  # where we lead: the model that leads
        chosen = (usable.get(ours_leading.source) if we_lead else usable.get(Source.LEADER))
        reason = "--start leader (we lead)" if we_lead else "--start leader"
        if chosen is None:
            why = (f"we lead, and our committed model {ours_leading.problem}" if we_lead else
                   "no leader on chain" if leader is None else
                   f"the leader's model (uid {leader.uid}) {leader.problem}")
            chosen = _best(ours_side)
            fallback = reason = f"--start leader, but {why}"
    else:
        chosen = _best(ours_side)
        if chosen:
            reason = "--start ours"
        else:
            if ours is None and committed is None:
                why = "no model of ours yet"
            else:
                why = "; ".join(f"{'ours' if c is ours else 'our committed model'} {c.problem}"
                                for c in (ours, committed) if c is not None)
            fallback = reason = f"--start ours, but {why}"
    chosen = chosen or base
    tied = sorted((c.source for c in usable.values() if c is not chosen and c.score == chosen.score),
                  key=lambda s: s.rank)

    head = f"round {round_number}: starts from {_chosen_text(chosen)}"
    if fallback:
        head += f" ({reason})"
    elif start is not Start.BEST:
        head += f", as --start {start} asks"
    elif tied:
        head += f", tied with {' and '.join(_role(s) for s in tied)} (ours kept on a tie)"
    elif chosen is base:
        head += f" ({reason})"
    others = []
    if chosen.source is not Source.LEADER:
        others.append("we lead" if we_lead and leader is None else
                      "no leader on chain" if leader is None else
                      f"leader uid {leader.uid} "
                      + (_score(leader.score) if leader.problem is None else leader.problem))
    if chosen.source is not Source.OURS:
        others.append("no model of ours yet" if ours is None else
                      f"ours {_score(ours.score)}" if ours.problem is None else f"ours {ours.problem}")
    if chosen.source is not Source.COMMITTED:
        others.append("committed = ours" if committed_is_ours else
                      "nothing committed" if committed is None else
                      f"committed {_score(committed.score)}" if committed.problem is None else
                      f"committed {committed.problem}")
    return StartDecision(round_number, start, chosen, reason, f"{head} — {', '.join(others)}", leader, ours,
                         committed, we_lead, leading)


def _role(source: Source) -> str:
    return {Source.LEADER: "the leader", Source.OURS: "ours", Source.COMMITTED: "our committed model",
            Source.BASE: "the base model"}[source]


def _as_start(start: Start | str) -> Start:
    try:
        return Start(start)
    except ValueError:
        raise ValueError(f"--start must be one of {', '.join(Start)}, got {start!r}") from None


# --- 2. the study: continue it, or seed a new one with earlier rounds' best ---------------------------------------

@dataclass(frozen=True)
class TrialRow:
    """One trial of an earlier round, as its trials.csv tells it."""
    round: int
    trial_id: str
    hyperparameters: Hyperparameters
    score: float  # its best eval loss on that round's held-out samples

    @property
    def params(self) -> dict:
        return self.hyperparameters.as_dict()


def trial_rows(data: bytes | str, round_number: int) -> tuple[list[TrialRow], list[str]]:
    """The trials of round `round_number` from its trials.csv (orchestrator.trial_records): (rows, problems). A trial
    without a loss or without hyperparameters (it failed before reporting) is left out silently; a row that cannot
    be read is a problem (one line each), never an exception."""
    problems = []
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            data = data.decode("utf-8", errors="replace")
            problems.append(f"round {round_number}'s trials.csv is not UTF-8 text")
    reader = csv.DictReader(io.StringIO(data))
    wanted = {"trial_id", *NAMES, "best_eval_loss"}
    if not wanted <= set(reader.fieldnames or ()):
        return [], problems + [f"round {round_number}'s trials.csv lacks the columns "
                               f"{', '.join(sorted(wanted - set(reader.fieldnames or ())))}"]
    rows = []
    for line, row in enumerate(_readable(reader, problems, f"round {round_number}'s trials.csv"), start=2):
        if any(row.get(name) in ("", None) for name in NAMES) or row.get("best_eval_loss") in ("", None):
            continue
        try:
            hyperparameters = Hyperparameters.from_mapping(row)
            score = float(row["best_eval_loss"])
        except (TypeError, ValueError, OverflowError):
            problems.append(f"round {round_number}'s trials.csv line {line} cannot be read")
            continue
        if math.isfinite(score):
            rows.append(TrialRow(round_number, row["trial_id"] or f"line {line}", hyperparameters, score))
    return rows, problems


def _readable(reader, problems: list[str], what: str):
    """The rows of a csv reader up to the first that csv itself cannot read (that one is a problem)."""
    try:
        yield from reader
    except csv.Error as e:
        problems.append(f"{what} cannot be read past line {reader.line_num} ({one_line(str(e))[:80]})")


@dataclass(frozen=True)
class Seed:
    """An earlier round's hyperparameters, to enqueue into a new study."""
    params: dict
    round: int
    trial_id: str
    score: float

    def describe(self) -> str:
        return f"{Hyperparameters.from_mapping(self.params).compact()} (round {self.round}, {self.score:.4f})"


def best_earlier(rows: Iterable[TrialRow], space: SearchSpace, k: int = SEED_TRIALS) -> list[Seed]:
    """The best `k` distinct hyperparameter sets of earlier rounds that fit `space` (orchestrator.study.fits_space).

    Scores of different rounds are on different held-out samples and from different starting models, so they are
    not compared across rounds: each round's trials are ranked by their own score, and the sets are taken by rank,
    newest round first (round 5's best, round 4's best, ..., then round 5's second, ...). A set already taken (the
    same learning rate, r and alpha; a seeded trial reappears in the round it seeded) is taken once, at its first
    place. Trials without a finite score never count."""
    by_round: dict[int, list[TrialRow]] = {}
    for row in rows:
        if math.isfinite(row.score) and fits_space(row.params, space):
            by_round.setdefault(row.round, []).append(row)
    ranked = []
    for round_number, trials in by_round.items():
        for rank, row in enumerate(sorted(trials, key=lambda t: t.score)):  # stable: a tie keeps the file's order
            ranked.append((rank, -round_number, row))
    seeds, seen = [], set()
    for _, _, row in sorted(ranked, key=lambda x: (x[0], x[1])):
        key = tuple(row.params[name] for name in NAMES)
        if key in seen:
            continue
        seen.add(key)
        seeds.append(Seed(row.params, row.round, row.trial_id, row.score))
        if len(seeds) >= k:
            break
    return seeds


class StudyAction(enum.StrEnum):
    CONTINUE = "continue"  # the same study as the last round's (the caller passes the same --study)
    SEED = "seed"          # a new study: enqueue the seeds (enqueue_seeds), then TPE
    NEW = "new"            # a new study with nothing to seed: TPE (or the grid) from the start


@dataclass(frozen=True)
class StudyPlan:
    action: StudyAction
    seeds: tuple[Seed, ...]
    line: str

    @property
    def record(self) -> str:
        """rounds.csv's `study` column: continue, seed 3, new."""
        return f"seed {len(self.seeds)}" if self.action is StudyAction.SEED else str(self.action)


FINGERPRINT_PARTS = {"model": "the starting model", "data": "the data", "space": "the search space",
                     "competition": "the competition", "ranked_on": "the ranking"}


def changed_parts(previous: Mapping, current: Mapping) -> list[str]:
    """What differs between two study fingerprints (orchestrator.study.fingerprint), as a person names it."""
    keys = list(FINGERPRINT_PARTS) + sorted((set(previous) | set(current)) - set(FINGERPRINT_PARTS))
    return [FINGERPRINT_PARTS.get(k, k) for k in keys if previous.get(k) != current.get(k)]


def plan_study(round_number: int, previous: Mapping | None, current: Mapping, rows: Iterable[TrialRow],
               space: SearchSpace, k: int = SEED_TRIALS, trials: int | None = None) -> StudyPlan:
    """Continue the last round's study, or seed a new one.

    `previous` and `current` are the study fingerprints (orchestrator.study.fingerprint: model, data, space,
    competition) of the last round and of this one; `rows` every earlier round's trials. Equal fingerprints: the
    study continues (the caller passes the same --study, and choose_study finds it by that fingerprint). Otherwise
    the new study gets the best `k` distinct earlier sets that fit `space` (best_earlier), enqueued, then TPE takes
    over. With `trials` (this round's trials), at most trials - 1 are seeds (but at least one), so TPE has a turn.
    A grid runs every combination of its own: nothing is seeded. (Each round draws fresh training samples, which
    changes the data part of the fingerprint: a study continues when a round's data is the same draw.)"""
    if previous is not None and dict(previous) == dict(current):
        return StudyPlan(StudyAction.CONTINUE, (), f"round {round_number}: continues the last round's study (same "
                                                   "starting model, data, search space and competition)")
    why = "no earlier round" if previous is None else f"{' and '.join(changed_parts(previous, current))} changed"
    if space.sampler == "grid":
        return StudyPlan(StudyAction.NEW, (), f"round {round_number}: a new study ({why}); a grid runs every "
                                              "combination, nothing seeded")
    if trials is not None:
        k = min(k, max(1, trials - 1))
    seeds = tuple(best_earlier(rows, space, k)) if k > 0 else ()
    if not seeds:
        nothing = "" if previous is None else "; no earlier trial fits this search space"
        return StudyPlan(StudyAction.NEW, (), f"round {round_number}: a new study ({why}){nothing}, TPE from the start")
    return StudyPlan(StudyAction.SEED, seeds, f"round {round_number}: a new study ({why}), seeded with the "
                     f"{len(seeds)} best earlier set{'s' if len(seeds) > 1 else ''} "
                     f"({'; '.join(s.describe() for s in seeds)}), then TPE")


def enqueue_seeds(study, seeds: Iterable[Seed]) -> int:
    """Enqueue each seed into the Optuna study (optuna.Study.enqueue_trial): its next trials asked for are these,
    in order, then its sampler's own. A set the study already holds (a --resume that seeds again) is skipped.
    Returns how many were added."""
    from optuna.trial import TrialState

    def waiting() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    before = waiting()
    for seed in seeds:
        study.enqueue_trial(dict(seed.params), skip_if_exists=True,
                            user_attrs={"seeded_from": f"round {seed.round} trial {seed.trial_id}"})
    return waiting() - before


# --- 3. the round record and rounds.csv ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RoundRecord:
    """One finished round: one row of rounds.csv (columns in this order; rounds.csv's header is these names)."""
    round: int
    started_at: float              # unix seconds (rounds.csv: ISO 8601 UTC, to the second)
    ended_at: float
    start_source: Source
    start_model: str
    start_score: float             # nan: not scored (the base model)
    start_reason: str
    leader_uid: int | None         # None: no leader on chain
    leader_score: float
    ours_score: float              # our best merged model before the round; nan: none yet
    committed_score: float         # our committed model, where it differs; nan: none or the same as ours
    data_seed: int
    study: str                     # StudyPlan.record: continue, seed 3, new
    best_trial: str                # the round's best trial's id; empty: no trial reported a loss
    best_score: float
    published: bool
    publish_reason: str
    compute_hours: float
    compute_unit: str              # GPU-hours, or CPU-hours where the round had no GPU
    experiment: str                # the round's sweep folder (round_folder)


COLUMNS = tuple(f.name for f in fields(RoundRecord))
GPU_HOURS, CPU_HOURS = "GPU-hours", "CPU-hours"
_FLOATS = {"start_score", "leader_score", "ours_score", "committed_score", "best_score", "compute_hours"}
_TIMES = {"started_at", "ended_at"}
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def round_compute(wall_s: float, gpus: int, cpus: int) -> tuple[float, str]:
    """What a round used: GPU-hours (wall time x GPUs), or CPU-hours (wall time x CPUs) where it had no GPU."""
    if gpus > 0:
        return wall_s * gpus / 3600, GPU_HOURS
    return wall_s * max(cpus, 1) / 3600, CPU_HOURS


def round_folder(round_number: int, run: str | None = None) -> str:
    """The sweep folder (--experiment_name) of round `round_number` under the mining folder: round-001, or, for the
    run `run` (the mining folder's name), run.round-001. A sweep's name is also its coordinator actor's, its W&B
    group and its gauges' tag: the run's name in it keeps two runs on one cluster apart."""
    return f"{run + '.' if run else ''}round-{round_number:03d}"


def folder_round(name: str, run: str | None = None) -> int | None:
    """round_folder's inverse: the round of a folder's name, or None for any other folder (or another run's)."""
    match = (re.match(rf"^{re.escape(run)}\.round-(\d{{3,}})$", name) if run else ROUND_FOLDER.match(name))
    return int(match.group(1)) if match and int(match.group(1)) >= 1 else None


def _cell(name: str, value) -> str:
    if name in _TIMES:
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if name in _FLOATS:
        return "" if math.isnan(value) else repr(float(value))
    if name == "published":
        return "yes" if value else "no"
    if value is None:
        return ""
    return re.sub(r"[\r\n]+", " ", str(value))  # one line a row: a damaged file is read line by line


def _parse_cell(name: str, text: str):
    if name in _TIMES:
        if not _ISO.match(text):
            raise ValueError(f"{name} {text!r} is not a time (YYYY-MM-DDTHH:MM:SSZ)")
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    if name in _FLOATS:
        value = math.nan if text == "" else float(text)
        if name == "compute_hours" and not value >= 0:
            raise ValueError(f"compute_hours {text!r} is not a number of hours")
        return value
    if name == "published":
        if text not in ("yes", "no"):
            raise ValueError(f"published {text!r} is neither yes nor no")
        return text == "yes"
    if name in ("round", "data_seed"):
        value = int(text)
        if name == "round" and value < 1 or name == "data_seed" and not 0 <= value < SEED_MODULUS:
            raise ValueError(f"{name} {text!r} is out of range")
        return value
    if name == "leader_uid":
        return None if text == "" else int(text)
    if name == "start_source":
        return Source(text)
    if name == "compute_unit" and text not in (GPU_HOURS, CPU_HOURS):
        raise ValueError(f"compute_unit {text!r} is neither {GPU_HOURS} nor {CPU_HOURS}")
    return text


def rounds_csv_text(records: Iterable[RoundRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for record in sorted(records, key=lambda r: r.round):
        writer.writerow([_cell(name, getattr(record, name)) for name in COLUMNS])
    return out.getvalue()


@dataclass(frozen=True)
class RoundsRead:
    records: tuple[RoundRecord, ...]  # by round, one each
    problems: tuple[str, ...]         # what was wrong with the file; empty when it read whole
    where: str = ROUNDS_CSV

    @property
    def warning(self) -> str | None:
        """The one warning line a damaged file costs, or None."""
        if not self.problems:
            return None
        more = len(self.problems) - 3
        shown = "; ".join(self.problems[:3]) + (f"; and {more} more" if more > 0 else "")
        kept = len(self.records)
        rounds = "no round reads whole" if not kept else \
            "the round that reads whole is kept" if kept == 1 else f"the {kept} rounds that read whole are kept"
        return f"warning: {self.where} is damaged ({shown}); {rounds}"


def parse_rounds_csv(data: bytes, where: str = ROUNDS_CSV) -> RoundsRead:
    """rounds.csv's bytes as records, never raising: each line is read on its own, so a garbled row (not UTF-8, too
    few or too many cells, a cell that does not parse), a last line cut short (no line end: it is never read, since
    a cut in its last cell could still parse) or a wrong header costs that line and a problem; every row that
    parses is kept. Under a header that is not COLUMNS but names them all (in another order, or with more), rows are
    read by name; under any other first line, every line is read as COLUMNS. A round recorded twice keeps its later
    row."""
    if not data:
        return RoundsRead((), ("it is empty",), where)
    problems = []
    lines = data.split(b"\n")
    cut = lines.pop() != b""  # every row ends its line: one that does not was cut short, whatever it reads as
    texts = []
    for number, raw in enumerate(lines, start=1):
        try:
            texts.append((number, raw.decode("utf-8").rstrip("\r")))
        except UnicodeDecodeError:
            problems.append(f"line {number} is not UTF-8")
            texts.append((number, None))
    order, quiet = COLUMNS, None  # quiet: a first line that is not a header, and not a row either: said once
    first = _cells(texts[0][1]) if texts and texts[0][1] is not None else None
    if first is not None and tuple(first) == COLUMNS:
        texts = texts[1:]
    elif first is not None and set(COLUMNS) <= set(first) and len(set(first)) == len(first):
        order = tuple(first)
        texts = texts[1:]
        extra = [c for c in first if c not in COLUMNS]
        if extra:
            problems.append(f"its header has unknown columns ({', '.join(extra)}), ignored")
    else:
        problems.append("its header is not rounds.csv's (its lines are read as rounds.csv's columns)")
        if texts and texts[0][1] is None:
            texts = texts[1:]  # already counted as not UTF-8
        elif texts:
            quiet = texts[0][0]
    by_round: dict[int, RoundRecord] = {}
    for number, text in texts:
        if text is None:
            continue
        if not text.strip():
            continue
        cells = _cells(text)
        if cells is None or len(cells) != len(order):
            got = "an unreadable row" if cells is None else f"{len(cells)} cells, not {len(order)}"
            if number != quiet:
                problems.append(f"line {number} has {got}")
            continue
        try:
            values = {name: _parse_cell(name, cell) for name, cell in zip(order, cells) if name in COLUMNS}
            record = RoundRecord(**values)
        except (ValueError, TypeError, OverflowError) as e:
            if number != quiet:
                problems.append(f"line {number}: {one_line(str(e))[:100]}")
            continue
        if record.round in by_round:
            problems.append(f"round {record.round} is recorded twice (the later row kept)")
        by_round[record.round] = record
    if cut:
        problems.append(f"its last line ({len(lines) + 1}) is cut short (no line end)")
    return RoundsRead(tuple(by_round[n] for n in sorted(by_round)), tuple(problems), where)


def _cells(text: str) -> list[str] | None:
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error:
        return None
    return rows[0] if len(rows) == 1 else None


def read_rounds(location: str) -> RoundsRead:
    """rounds.csv at `location` (local, or object storage through publishing.storage); a missing file is no rounds
    and no problem; one that cannot be read, or is damaged, is a problem (RoundsRead.warning), never an exception."""
    try:
        data = store.read_bytes(location)
    except FileNotFoundError:
        return RoundsRead((), (), location)
    except Exception as e:  # noqa: BLE001 - an unreadable file (a folder, permissions, storage) costs a warning
        return RoundsRead((), (f"it cannot be read ({type(e).__name__}: {one_line(str(e))[:100]})",), location)
    return parse_rounds_csv(data, location)


def append_round(location: str, record: RoundRecord, now: float | None = None) -> str | None:
    """Add `record` to rounds.csv, whole or not at all (publishing.storage: a temporary file renamed over the old
    one; one PUT in object storage); returns the warning line to print, or None.

    The file is rewritten from the rows that read, with this round's row replacing any earlier row of the same
    round (a --resume that records a round again does not repeat it). A damaged file is first kept beside it, whole,
    as rounds.csv.damaged-<time>, and the warning says so. A file that exists but cannot be read is never
    overwritten (that would lose every earlier row): the round is not recorded, and the warning says so; its sweep
    folder still holds its results, and resume_step asks for it to be recorded. Never raises for an OSError."""
    try:
        data = store.read_bytes(location)
    except FileNotFoundError:
        data = None
    except Exception as e:  # noqa: BLE001
        return (f"warning: {location} cannot be read ({type(e).__name__}: {one_line(str(e))[:100]}); round "
                f"{record.round} is not recorded in it (left as it is)")
    existing = parse_rounds_csv(data, location) if data is not None else RoundsRead((), (), location)
    warning = existing.warning
    try:
        if existing.problems:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
            aside = f"{location}.damaged-{stamp}"
            store.write_bytes(aside, data)
            warning += f"; the damaged file is kept as {store.name(aside)}"
        records = [r for r in existing.records if r.round != record.round] + [record]
        store.write_text(location, rounds_csv_text(records))
    except OSError as e:
        return ((warning + "; ") if warning else "warning: ") + \
            f"round {record.round} could not be recorded in {location} ({one_line(str(e))[:100]})"
    return warning


# --- 4. --resume: what comes next ---------------------------------------------------------------------------------

class Next(enum.StrEnum):
    START = "start"      # start round `round` (a new sweep folder)
    RESUME = "resume"    # resume round `round`'s sweep (its folder, --resume)
    RESTART = "restart"  # round `round`'s sweep stopped before it saved any state: start it over (set its folder aside)


UNFINISHED = (RUNNING, INTERRUPTED, FAILED)  # orchestrator.experiment's marker statuses that --resume continues


@dataclass(frozen=True)
class SweepFolder:
    """A round's sweep folder as --resume finds it."""
    round: int
    status: str | None  # its marker's status (orchestrator.experiment.read_marker); None: none that reads
    has_state: bool     # Tune's state is there (orchestrator.experiment.has_tune_state)


@dataclass(frozen=True)
class ResumeStep:
    action: Next
    round: int
    to_record: tuple[int, ...]  # finished rounds without a row in rounds.csv: record them from their folders first
    line: str


def resume_step(records: Iterable[RoundRecord], folders: Iterable[SweepFolder]) -> ResumeStep:
    """What --resume does next, so that no round is lost or repeated.

    The last round is the highest with a row in rounds.csv or a sweep folder. Recorded, or its sweep finished: the
    next round starts (a finished sweep without a row, the driver stopped before writing it, is recorded from its
    folder first, not run again). Unfinished (running, interrupted or failed) with Tune's state: its sweep resumes.
    Unfinished without state (stopped before Tune saved anything), or no marker that reads: it starts over, nothing
    of it having been kept. An earlier round missing from rounds.csv (a damaged row) is never run again: its number
    is used, and the line says so."""
    recorded = {r.round for r in records}
    by_round = {f.round: f for f in folders}
    to_record = tuple(sorted(n for n, f in by_round.items() if f.status == FINISHED and n not in recorded))
    last = max(recorded | set(by_round), default=0)
    missing = [n for n in range(1, last) if n not in recorded and n not in to_record]
    notes = []
    if to_record:
        notes.append(f"round{'s' if len(to_record) > 1 else ''} {_listed(to_record)} finished without a row in "
                     f"rounds.csv: recorded from {'their folders' if len(to_record) > 1 else 'its folder'} first")
    if missing:
        notes.append(f"round{'s' if len(missing) > 1 else ''} {_listed(missing)} left no row and no finished sweep: "
                     "not run again")
    note = f" ({'; '.join(notes)})" if notes else ""
    if last == 0:
        return ResumeStep(Next.START, 1, (), "resume: no round yet; round 1 starts")
    folder = by_round.get(last)
    if last in recorded or last in to_record:
        return ResumeStep(Next.START, last + 1, to_record, f"resume: round {last} ended; round {last + 1} starts{note}")
    if folder.status in UNFINISHED and folder.has_state:
        return ResumeStep(Next.RESUME, last, to_record,
                          f"resume: round {last}'s sweep was {folder.status} when it stopped; it resumes{note}")
    what = "has no marker that reads" if folder.status not in UNFINISHED else "stopped before Tune saved any state"
    return ResumeStep(Next.RESTART, last, to_record, f"resume: round {last}'s sweep {what}; it starts over{note}")


def _listed(numbers) -> str:
    numbers = list(numbers)
    return ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}" if len(numbers) > 1 else str(numbers[0])


# --- 5. stop conditions -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RoundGo:
    go: bool
    budget_s: float | None  # the round's time (its sweep's --time_budget); None: no limit, its trials end it
    line: str               # with go: the round and its time; without: why the run ends


def next_round(round_number: int, *, max_rounds: int | None = None, time_budget_s: float | None = None,
               round_budget_s: float | None = None, elapsed_s: float = 0.0, stop_requested: bool = False,
               min_round_s: float = MIN_SECONDS) -> RoundGo:
    """Whether round `round_number` starts (or resumes), and with how much time.

    `max_rounds` (--rounds) counts the run's rounds by number, those before a --resume included: --rounds 5 ends the
    run after round 5. `time_budget_s` (--time_budget) is the whole run's, counted from this invocation's start as a
    sweep's --time_budget is counted from its resume; `elapsed_s` is the time since. Each round gets
    `round_budget_s` (--round_budget), the last one min(round_budget, what is left); with what is left below
    `min_round_s` (the shortest --time_budget a sweep takes) the run ends rather than start a round that cannot
    evaluate. `stop_requested`: Ctrl-C arrived between rounds."""
    if round_number < 1:
        raise ValueError(f"round numbers start at 1, got {round_number}")
    elapsed_s = max(elapsed_s, 0.0)
    if stop_requested:
        return RoundGo(False, None, f"run ends: stopped before round {round_number}; --resume starts it")
    if max_rounds is not None and round_number > max_rounds:
        return RoundGo(False, None, f"run ends: --rounds {max_rounds} done")
    left = None
    if time_budget_s is not None:
        left = time_budget_s - elapsed_s
        spent = f"--time_budget {format_duration(time_budget_s)}"
        if left <= 0:
            return RoundGo(False, None, f"run ends: {spent} spent ({format_duration(elapsed_s)} elapsed)")
        if left < min_round_s:
            return RoundGo(False, None, f"run ends: {format_duration(left)} of {spent} left, less than a round needs "
                                        f"({format_duration(min_round_s)})")
    of = f" of {max_rounds}" if max_rounds is not None else ""
    head = f"round {round_number}{of}"
    if left is None and round_budget_s is None:
        return RoundGo(True, None, f"{head}: no time limit (its sweep's trials end it)")
    if left is None:
        return RoundGo(True, round_budget_s, f"{head}: {format_duration(round_budget_s)} (--round_budget)")
    if round_budget_s is None or left < round_budget_s:
        cap = "" if round_budget_s is None else f", less than --round_budget {format_duration(round_budget_s)}"
        return RoundGo(True, left, f"{head}: {format_duration(left)}, what is left of {spent}{cap}")
    return RoundGo(True, round_budget_s, f"{head}: {format_duration(round_budget_s)} (--round_budget; "
                                         f"{format_duration(left)} of {spent} left)")


# --- 6. a fresh draw of training samples each round ---------------------------------------------------------------

def round_seed(run_seed: int, round_number: int) -> int:
    """Round `round_number`'s --seed (its data draw, eval split, data order and sampler) from the run's --seed.

    Round 1 uses the run's seed itself, so a first round draws what a one-shot sweep with that --seed draws; each
    later round adds an odd stride modulo 2**32, so no two rounds of a run share a seed (for 2**32 rounds). A
    function of the two numbers only: a --resume draws each round as before."""
    if isinstance(run_seed, bool) or not isinstance(run_seed, int) or not 0 <= run_seed < SEED_MODULUS:
        raise ValueError(f"--seed must be between 0 and 2**32 - 1, got {run_seed!r}")
    if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 1:
        raise ValueError(f"round numbers start at 1, got {round_number!r}")
    return (run_seed + (round_number - 1) * SEED_STRIDE) % SEED_MODULUS
