"""Mine on: rounds of sweeps that follow the competition's leader (issue 25).

    python -m orchestrator.mine --rounds 3                  # the embedded default, offline: three rounds
    python -m orchestrator.mine --competition_id 4 --hf_repo_id me/model --wallet.name cold --wallet.hotkey hot \\
        --round_budget 6h --require_win                     # a miner on competition 4, for as long as it runs

A round is one sweep (orchestrator.sweep.run_sweep, the same as `python -m orchestrator.run`), in its own folder
<run>.round-NNN under one mining folder <run> (--storage_path/--experiment_name). Before each round the competition is read from
the chain: the leader's model, our best merged model so far and our committed model are scored on the round's held-out
samples (orchestrator.score's functions), and the round starts from the best of them (orchestrator.rounds.decide_start;
--start pins it). Each round draws fresh training samples (rounds.round_seed), continues the study or seeds a new one
with the best hyperparameters of earlier rounds (rounds.plan_study), and publishes by the coordinator's rules, which
hold across rounds: its publish_state.json is carried from round to round, with our committed model's loss re-scored
on the new round's samples, so "never worse than our commitment" compares numbers of the same samples; the 20-minute
window and the evaluation delay are read from the chain as in any sweep; with --require_win, a model must beat the
round's leader under the competition's epsilon.

Every sweep flag means what it means for a sweep, except three that name the whole run: --experiment_name (the mining
folder), --time_budget (the whole run; --round_budget is each round's) and --resume (continue the run: mid-round, that
round's sweep resumes; between rounds, the next starts). The chain is read where publishing is on (--hf_repo_id and a
wallet, without --offline); offline, each round starts from our best model so far.
"""

import argparse
import dataclasses
import json
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import ConfigError, SweepConfig, load_config
from orchestrator.durations import parse_duration
from orchestrator.rounds import (ROUNDS_CSV, Candidate, Next, RoundRecord, Source, Start, StartDecision,
                                 SweepFolder, append_round, decide_start, folder_round, next_round, read_rounds,
                                 resume_step, round_compute, round_folder, round_seed)
from publishing import storage as store

MINING_FILE = "mining.json"  # the run's marker: its command and status; what --resume looks for
ROUND_FILE = "round.json"    # a round's decision, written before its sweep: a resume restarts it from the same model
RUN_FLAGS = ("rounds", "round_budget", "start")
INTERRUPTED_EXIT = 130


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message}; run with --help to see every flag")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m orchestrator.mine", allow_abbrev=False, add_help=False,
                            description="Rounds of sweeps that follow the competition's leader. Every other flag is "
                                        "the sweep's (python -m orchestrator.run --help); --experiment_name names the "
                                        "mining folder, --time_budget is the whole run's, --resume continues the run.")
    parser.add_argument("--rounds", type=int, metavar="N", help="end the run after round N (default: no limit)")
    parser.add_argument("--round_budget", metavar="DURATION",
                        help="each round's time, e.g. 90m or 6h (default: a round ends when its trials end)")
    parser.add_argument("--start", choices=[s.value for s in Start], default=Start.BEST.value,
                        help="where each round starts: best (whichever of the leader's, ours and our committed "
                             "model scores lowest), or pinned to the leader's model or ours (default: best)")
    parser.add_argument("--require_win", action="store_true",
                        help="publish only a model that beats the round's leader under the competition's epsilon")
    return parser


@dataclass(frozen=True)
class MineRequest:
    config: SweepConfig      # the sweep's settings, as the run's (experiment_name: the mining folder; resume: the run's)
    argv: list[str]
    rounds: int | None
    round_budget_s: float | None
    start: Start
    require_win: bool


def parse(argv: list[str]) -> MineRequest:
    if "--help" in argv or "-h" in argv:
        build_parser().print_help()
        print("\nthe sweep's flags:")
        load_config(["--help"])  # prints the sweep's flags and exits
    own, rest = build_parser().parse_known_args(argv)
    if "--comparison_uid" in rest or any(a.startswith("--comparison_uid=") for a in rest):
        raise ConfigError("--comparison_uid: each round compares with the competition's leader; use --require_win to "
                          "publish only a model that beats it")
    config = load_config(rest)
    if own.rounds is not None and own.rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {own.rounds}")
    try:
        round_budget_s = parse_duration(own.round_budget) if own.round_budget is not None else None
    except ValueError as e:
        raise ConfigError(f"--round_budget: {e}") from None
    if own.require_win and (config.publishing.offline or config.publishing.hf_repo_id is None):
        raise ConfigError("--require_win decides what is published: it needs --hf_repo_id and a wallet, without "
                          "--offline")
    return MineRequest(config, argv, own.rounds, round_budget_s, Start(own.start), own.require_win)


# --- the mining folder -------------------------------------------------------------------------------------------

def new_mining_name() -> str:
    return time.strftime("mine-%Y%m%d-%H%M%S")


def choose_mining_folder(config: SweepConfig) -> str:
    """The run's folder: --storage_path/--experiment_name (default mine-<time>); with --resume, the named one or the
    newest unfinished run there. One line for what is wrong."""
    from orchestrator.experiment import check_local_storage, check_remote_storage

    if store.is_remote(config.run.storage_path):
        check_remote_storage(config.run.storage_path)
        where = config.run.storage_path
    else:
        where = str(check_local_storage(config.run.storage_path))
    name = config.run.experiment_name
    if not config.run.resume:
        name = name or new_mining_name()
        if read_mining(store.join(where, name)) is not None:
            raise ConfigError(f"--experiment_name {name!r} is a mining run in {where}; add --resume to continue it, "
                              "or give a new --experiment_name")
        return store.join(where, name)
    if name:
        if read_mining(store.join(where, name)) is None:
            raise ConfigError(f"--resume: no mining run {name!r} in {where}; check --experiment_name and "
                              "--storage_path")
        return store.join(where, name)
    runs = sorted((m.get("updated_at", 0), n) for n in store.folders(where)
                  if (m := read_mining(store.join(where, n))) is not None and m.get("status") != "finished")
    if not runs:
        raise ConfigError(f"--resume found no unfinished mining run in {where}; pass --experiment_name of the one "
                          "to continue")
    return store.join(where, runs[-1][1])


def read_mining(folder: str) -> dict | None:
    try:
        data = json.loads(store.read_text(store.join(folder, MINING_FILE)))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_mining(folder: str, **fields) -> None:
    data = read_mining(folder) or {"created_at": time.time()}
    data.update(fields, updated_at=time.time())
    store.write_text(store.join(folder, MINING_FILE), json.dumps(data, indent=2))


def read_round_file(folder: str, number: int) -> tuple[dict | None, str | None]:
    """<run>.round-NNN/round.json, or (None, the warning a damaged one costs)."""
    path = store.join(folder, round_folder(number, store.name(folder)), ROUND_FILE)
    try:
        data = json.loads(store.read_text(path))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data, None
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        return None, f"warning: {path} is damaged ({type(e).__name__}); that round's choices are not reused"


def write_round_file(folder: str, number: int, **fields) -> None:
    path = store.join(folder, round_folder(number, store.name(folder)), ROUND_FILE)
    data = read_round_file(folder, number)[0] or {}
    data.update(fields)
    store.write_text(path, json.dumps(data, indent=2, default=str))


def sweep_folders(folder: str) -> list[SweepFolder]:
    from orchestrator.experiment import has_tune_state, read_marker

    found = []
    for name in store.folders(folder):
        if (number := folder_round(name, store.name(folder))) is not None:
            sub = store.join(folder, name)
            found.append(SweepFolder(number, (read_marker(sub) or {}).get("status"), has_tune_state(sub)))
    return found


def our_best(folder: str, records: list[RoundRecord]) -> tuple[str, int] | None:
    """Our best merged model so far, (folder, round): a round's best replaces the one before where it scored lower on
    that round's samples (its ours_score was the earlier best's score there) or there was none."""
    best = None
    for record in records:
        data, _ = read_round_file(folder, record.round)
        model = (data or {}).get("best_model_dir")
        if not record.best_trial or not model or not Path(model).is_dir():
            continue
        if best is None or math.isnan(record.ours_score) or record.best_score < record.ours_score:
            best = (model, record.round)
    return best


# --- the chain's view: the leader, our commitment ------------------------------------------------------------------

@dataclass(frozen=True)
class Contenders:
    """The models a round may start from, fetched (orchestrator.score.Contender), before they are scored."""
    leader: object | None = None      # Contender
    ours: object | None = None
    committed: object | None = None
    committed_is_ours: bool = False
    our_uid: int | None = None
    notes: tuple[str, ...] = ()       # what could not be read or fetched, one line each


def gather(config: SweepConfig, chain, folder: str, records: list[RoundRecord], hub_endpoint: str | None,
           say=print, sleep=time.sleep) -> Contenders:
    """Fetch the leader's model and our committed model (each with every check --load_uid applies), and find our
    best merged model. An outage is retried (orchestrator.retry); what stays unreachable is left out with a note:
    the round goes on without it."""
    from orchestrator.inputs import fetch_committed_model
    from orchestrator.retry import Unreachable, retried
    from orchestrator.score import Contender
    from publishing.subnet.chain import ChainError
    from publishing.subnet.competitions import CompetitionError
    from publishing.subnet.remote_model import RemoteModelError, best_uid

    notes = []
    best = our_best(folder, records)
    ours = Contender(f"round {best[1]}'s best model", Path(best[0])) if best else None
    if chain is None:
        return Contenders(ours=ours)
    competition_id = config.publishing.competition_id

    def fetch(uid: int, role: str):
        try:
            committed = retried(f"fetching {role}'s model (uid {uid})",
                                lambda: fetch_committed_model(config, chain, uid, hub_endpoint), say=say, sleep=sleep)
        except (RemoteModelError, ChainError, CompetitionError, ConfigError, Unreachable) as e:
            notes.append(f"{role} (uid {uid}) left out: {e}")
            return None
        model = committed.model_id
        return Contender(f"uid {uid} ({model.repo_id}@{model.commit[:8]})", committed.folder, block=committed.block,
                         uid=uid, model_id=model.to_compressed_str())

    try:
        neurons = retried("reading the subnet's neurons", chain.neurons, say=say, sleep=sleep)
        our_uid = next((n.uid for n in neurons if chain.hotkey_ss58 and n.hotkey == chain.hotkey_ss58), None)
        try:
            leader_uid = retried("finding the leader", lambda: best_uid(chain, competition_id), say=say, sleep=sleep)
        except RemoteModelError as e:
            leader_uid = None
            notes.append(f"no leader: {e}")
        ours_committed = (retried("reading our commitment", lambda: chain.read_commitment(chain.hotkey_ss58),
                                  say=say, sleep=sleep) if our_uid is not None else None)
    except (Unreachable, ChainError) as e:
        return Contenders(ours=ours, notes=(f"the chain is unreachable ({e}); this round starts from our own best",))
    leader = fetch(leader_uid, "the leader") if leader_uid is not None and leader_uid != our_uid else None
    committed, committed_is_ours = None, False
    if ours_committed is not None:
        published = read_round_file(folder, best[1])[0].get("best_model_id") if best else None
        if ours is not None and published == ours_committed.data:
            committed_is_ours = True
        else:
            committed = fetch(our_uid, "our committed model")
    if leader_uid is not None and leader_uid == our_uid and committed is None and not committed_is_ours:
        committed = fetch(our_uid, "our committed model")
    return Contenders(leader, ours, committed, committed_is_ours, our_uid, tuple(notes))


def score_contenders(config: SweepConfig, contenders: Contenders, base_model_dir: Path, base_embedded: bool,
                     hub_endpoint: str | None):
    """Each contender scored on the round's held-out samples (its --seed), as orchestrator.score scores: (leader,
    ours, committed) as rounds.Candidate, the base model's score where there is none of them (nan otherwise), and
    the held-out set's size."""
    from transformers.utils import logging as hf_logging

    from orchestrator.inputs import data_competition, prepare_eval_data
    from orchestrator.score import Contender, check_vocabulary, score_model

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model is noise between the round's lines

    competition = data_competition(config)
    eval_split, tasks = prepare_eval_data(config, base_model_dir, hub_endpoint)
    present = [c for c in (contenders.leader, contenders.ours, contenders.committed) if c is not None]
    check_vocabulary(present, eval_split)

    def candidate(contender, source: Source) -> Candidate | None:
        if contender is None:
            return None
        scored = score_model(config, contender, eval_split, tasks, competition)
        block = None if math.isinf(contender.block) else int(contender.block)
        return Candidate(source, str(contender.folder), scored.score, contender.uid, block, scored.rejected)

    scored = (candidate(contenders.leader, Source.LEADER), candidate(contenders.ours, Source.OURS),
              candidate(contenders.committed, Source.COMMITTED))
    base_score = math.nan
    if not present:  # the round starts from the base model: its score is the start's
        base = Contender(str(base_model_dir), base_model_dir, embedded=base_embedded)
        base_score = score_model(config, base, eval_split, tasks, competition).score
    return (*scored, base_score, len(eval_split))


# --- one round ---------------------------------------------------------------------------------------------------

def with_start(config: SweepConfig, chosen: Candidate) -> SweepConfig:
    """The sweep's config starting from the chosen model (a local folder: fetched and checked already); the base
    model keeps the config's own source."""
    if chosen.source is Source.BASE:
        return config
    data = dataclasses.replace(config.data, load_model_dir=chosen.label, load_repo=None,
                               download_repo_latest_commit=None, load_uid=None, load_best=False)
    return dataclasses.replace(config, data=data)


def round_config(config: SweepConfig, folder: str, number: int, seed: int, budget_s: float | None,
                 resume: bool) -> SweepConfig:
    data = config.data
    if data.tokenizer == "auto" and data.embedded_model:
        # the embedded model's own tokenizer, every round: a round that starts from a model made from it tokenizes as
        # the first did (auto would fetch the competition's from the Hub for any model but the embedded one)
        data = dataclasses.replace(data, tokenizer="model")
    run = dataclasses.replace(config.run, storage_path=folder, experiment_name=round_folder(number, store.name(folder)), resume=resume,
                              time_budget=None if budget_s is None else f"{max(budget_s, 10.0):.0f}")
    search = dataclasses.replace(config.search, seed=seed)
    return dataclasses.replace(config, data=data, run=run, search=search)


def carry_publish_state(folder: str, number: int, decision: StartDecision) -> str | None:
    """The coordinator's state of the round before, copied into this round's folder: what was published and when
    (never twice, the window) holds across rounds. The last published model's loss is re-scored on this round's
    samples where our committed model was scored, so the coordinator's "better than our commitment" compares losses
    of the same samples. Returns the line to print, or None when there is nothing to carry."""
    from publishing.publish_state import STATE_FILE, read_state, write_state

    for earlier in range(number - 1, 0, -1):
        state, problem = read_state(store.join(folder, round_folder(earlier, store.name(folder)), STATE_FILE))
        if problem:
            return f"warning: round {earlier}'s publish state is damaged ({problem}); round {number} starts without " \
                   "it (the 20-minute window is still read from the chain)"
        if state.published or state.uploaded:
            break
    else:
        return None
    rescored = decision.ours.score if decision.committed is None and decision.ours else \
        decision.committed.score if decision.committed else math.nan
    line = f"round {number}: carries round {earlier}'s publish state"
    if state.published and math.isfinite(rescored):
        last = state.published[-1]
        state.published[-1] = dataclasses.replace(last, eval_loss=rescored)
        line += f" (our commitment re-scored on this round's samples: {rescored:.4f}, was {last.eval_loss:.4f})"
    write_state(store.join(folder, round_folder(number, store.name(folder)), STATE_FILE), state)
    return line


def publish_result(outcome, started_at: float) -> tuple[bool, str]:
    report = outcome.publish
    published = report.published
    if published is not None and published.committed_at >= started_at:
        return True, f"committed {published.model_id} at block {published.block}"
    if report.offline:
        return False, "offline (no --hf_repo_id)"
    if report.not_before:
        return False, f"the 20-minute window opens at {time.strftime('%H:%M:%S', time.localtime(report.not_before))}"
    return False, (report.lines[-1] if report.lines else "nothing better to publish")


def record_round(folder: str, number: int, outcome, started_at: float, gpus: int, cpus: int) -> RoundRecord:
    """The round's row of rounds.csv, from its round.json (the decision) and its outcome."""
    data, _ = read_round_file(folder, number)
    data = data or {}
    published, reason = publish_result(outcome, started_at)
    best = outcome.best_trial
    hours, unit = round_compute(outcome.wall_s, gpus, cpus)
    model_id = None
    if outcome.publish.published and outcome.publish.best and \
            outcome.publish.published.trial == f"{outcome.publish.best.trial_id}@{outcome.publish.best.step}":
        model_id = outcome.publish.published.model_id  # the merged best is the model committed
    write_round_file(folder, number, best_model_dir=outcome.best_model_dir, best_model_id=model_id,
                     best_score=outcome.best_eval_loss)
    nan = math.nan
    return RoundRecord(
        round=number, started_at=started_at, ended_at=time.time(),
        start_source=Source(data.get("start_source", Source.BASE)), start_model=data.get("start_model", ""),
        start_score=_float(data.get("start_score")), start_reason=data.get("start_reason", "unknown"),
        leader_uid=data.get("leader_uid"), leader_score=_float(data.get("leader_score")),
        ours_score=_float(data.get("ours_score", nan)), committed_score=_float(data.get("committed_score", nan)),
        data_seed=int(data.get("data_seed", 0)), study=data.get("study", "new"),
        best_trial=best.trial_id if best else "", best_score=outcome.best_eval_loss, published=published,
        publish_reason=reason, compute_hours=hours, compute_unit=unit,
        experiment=round_folder(number, store.name(folder)))


def record_from_folder(folder: str, number: int) -> RoundRecord:
    """The row of a round whose sweep finished but whose row was never written (the driver stopped in between):
    its round.json; what only the outcome knew (the best trial, what was published) is marked unknown."""
    data, _ = read_round_file(folder, number)
    data = data or {}
    now = time.time()
    return RoundRecord(
        round=number, started_at=float(data.get("started_at", now)), ended_at=now,
        start_source=Source(data.get("start_source", Source.BASE)), start_model=data.get("start_model", ""),
        start_score=_float(data.get("start_score")), start_reason=data.get("start_reason", "unknown"),
        leader_uid=data.get("leader_uid"), leader_score=_float(data.get("leader_score")),
        ours_score=_float(data.get("ours_score")), committed_score=_float(data.get("committed_score")),
        data_seed=int(data.get("data_seed", 0)), study=data.get("study", "new"), best_trial="",
        best_score=_float(data.get("best_score")), published=False,
        publish_reason="unknown: the driver stopped before the round was recorded (see its publish_state.json)",
        compute_hours=0.0, compute_unit="GPU-hours", experiment=round_folder(number, store.name(folder)))


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def cluster_size(config: SweepConfig) -> tuple[int, int]:
    """(GPUs, CPUs) the rounds run on: what a round's compute is counted in."""
    import ray

    resources = ray.cluster_resources()
    gpus = 0 if config.run.device == "cpu" else int(resources.get("GPU", 0))
    return gpus, int(resources.get("CPU", 1))


def free_round_disk(folder: str, number: int) -> int:
    """A finished round keeps its best model, its summary files and its trials' results; every checkpoint goes (its
    best is merged into best_model/, and a finished sweep is never resumed). How many went."""
    if store.is_remote(folder):
        return 0  # the sweep's own rule (checkpoint_cleanup) has kept each trial's best two there
    gone = 0
    for checkpoint in Path(folder, round_folder(number, store.name(folder))).glob("*/checkpoint_*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
        gone += 1
    return gone


# --- the run -----------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None, chain_factory=None, hub_endpoint: str | None = None) -> int:
    """`chain_factory` and `hub_endpoint`: the chain and Hub the run reads and publishes to (tests pass their own)."""
    argv = sys.argv[1:] if argv is None else argv
    from trainables.compat import MissingInternal

    try:
        request = parse(argv)
        config = request.config
        from orchestrator.inputs import (check_address, check_device, check_env_file, check_fused_kernels,
                                         check_tracking, resolve_model_dir)
        from orchestrator.search_space import load_search_space
        from publishing.setup import SetupError, prepare_publishing

        check_env_file(config)
        check_tracking(config)
        check_device(config)
        check_fused_kernels(config)
        check_address(config)
        space = load_search_space(config.search.search)
        base_model_dir = resolve_model_dir(config, chain_factory, hub_endpoint)
        try:
            publishing = prepare_publishing(config.publishing, base_model_dir, chain_factory, hub_endpoint)
        except SetupError as e:
            raise ConfigError(str(e)) from None
        folder = choose_mining_folder(config)
    except (ConfigError, MissingInternal) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    request = dataclasses.replace(request, config=with_local_parts(config, folder))
    reads_chain = publishing.chain_factory is not None
    chain = publishing.chain_factory() if reads_chain else None
    if not store.is_remote(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
    print(f"mining: {folder}" + ("" if reads_chain else " (offline: no chain read; each round starts from our best)"))

    from orchestrator.ray_start import start_ray

    started_ray = start_ray(config)
    run_started = time.time()
    try:
        return run_rounds(request, folder, space, base_model_dir, publishing, chain, hub_endpoint, run_started)
    except KeyboardInterrupt:
        write_mining(folder, status="interrupted")
        print(f"\ninterrupted: nothing more is published. To continue:\n  {resume_line(request, folder)}",
              file=sys.stderr)
        return INTERRUPTED_EXIT
    except (ConfigError, MissingInternal) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def with_local_parts(config: SweepConfig, folder: str) -> SweepConfig:
    """The run's study (--study, else study.journal in the mining folder) and, where the mining folder is in object
    storage, this machine's folder for what needs a file system: ~/ray_results/<run>/ (each round's best_model/
    under it, and the study's journal file, which a bucket cannot hold): a run's files together, beside its other
    runs'."""
    import os

    from orchestrator.experiment import DEFAULT_LOCAL_DIR, LOCAL_DIR_ENV

    study = config.search.study or "study.journal"
    if store.is_remote(folder):
        local = Path(os.environ.get(LOCAL_DIR_ENV) or DEFAULT_LOCAL_DIR).expanduser().resolve() / store.name(folder)
        os.environ[LOCAL_DIR_ENV] = str(local)
        if config.search.study is None:
            study = str(local / "study.journal")
    return dataclasses.replace(config, search=dataclasses.replace(config.search, study=study))


def resume_line(request: MineRequest, folder: str) -> str:
    from orchestrator.score import without_flags

    kept = without_flags(request.argv, {"--experiment_name", "--resume"}, {"--resume"})
    return " ".join(["python -m orchestrator.mine", *kept, "--experiment_name", store.name(folder), "--resume"])


def run_rounds(request: MineRequest, folder: str, space, base_model_dir: Path, publishing, chain,
               hub_endpoint: str | None, run_started: float) -> int:
    config = request.config
    write_mining(folder, status="running", command=["python", "-m", "orchestrator.mine", *request.argv],
                 seed=config.search.seed)
    rounds = read_rounds(store.join(folder, ROUNDS_CSV))
    if rounds.warning:
        print(rounds.warning)
    step = resume_step(rounds.records, sweep_folders(folder))
    if config.run.resume:
        print(step.line)
    records = list(rounds.records)
    for number in step.to_record:  # finished without a row: the driver stopped between the sweep and the row
        record = record_from_folder(folder, number)
        if warning := append_round(store.join(folder, ROUNDS_CSV), record):
            print(warning)
        records = [r for r in records if r.round != number] + [record]
        print(f"round {number}: finished before the run stopped; recorded from its folder")
    number, action = step.round, step.action
    gpus, cpus = cluster_size(config)
    stop = CtrlC()
    while True:
        stop.install(at_once=True)  # preparing a round (fetching, scoring): Ctrl-C stops now
        go = next_round(number, max_rounds=request.rounds, time_budget_s=config.run.time_budget_s,
                        round_budget_s=request.round_budget_s, elapsed_s=time.time() - run_started,
                        stop_requested=stop.requested)
        print(go.line, flush=True)
        if stop.requested:
            write_mining(folder, status="interrupted")
            print(f"interrupted between rounds. To continue:\n  {resume_line(request, folder)}", file=sys.stderr)
            return INTERRUPTED_EXIT
        if not go.go:
            break
        outcome, started_at = run_one_round(request, folder, number, action, go.budget_s, space, base_model_dir,
                                            publishing, chain, hub_endpoint, records,
                                            merged=lambda: stop.install(at_once=False))
        if outcome.interrupted:
            from orchestrator.summary import render_interrupted

            print(render_interrupted(outcome, request.argv))
            write_mining(folder, status="interrupted")
            print(f"interrupted in round {number}: nothing of it was merged or published. To continue:\n  "
                  f"{resume_line(request, folder)}", file=sys.stderr)
            return INTERRUPTED_EXIT
        record = record_round(folder, number, outcome, started_at, gpus, cpus)
        if warning := append_round(store.join(folder, ROUNDS_CSV), record):
            print(warning)
        records = [r for r in records if r.round != number] + [record]
        gone = free_round_disk(folder, number)
        draw_rounds(folder, records)
        print(round_line(record, gone), flush=True)
        number, action = number + 1, Next.START
    write_mining(folder, status="finished" if request.rounds is not None else "stopped")
    print(f"rounds.csv:      {store.join(folder, ROUNDS_CSV)}")
    return 0


class CtrlC:
    """Ctrl-C in a mining run, outside a sweep (a running sweep's is Ray Tune's own: it saves and stops the sweep).

    Ray Tune (2.60, tune.run) sets its SIGINT handler for a sweep and leaves it set afterwards, where it would swallow
    Ctrl-C: this one is set again before each round and once the round's best is merged. While a round is prepared
    (fetching and scoring models) Ctrl-C stops at once; once its best is merged, it lets the round be recorded (its
    plots, its row in rounds.csv) and the run stops before the next round; a second Ctrl-C stops at once. Between
    Tune's end and the merge (the coordinator's last publish) Tune's handler stays: a commit is not cut in half."""

    def __init__(self):
        self.requested = False
        self.at_once = True

    def install(self, at_once: bool) -> None:
        self.at_once = at_once
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.at_once or self.requested:
            self.requested = True
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: the run stops once this round is recorded (Ctrl-C again: at once)", file=sys.stderr,
              flush=True)


def round_line(record: RoundRecord, checkpoints_gone: int) -> str:
    published = f"published ({record.publish_reason})" if record.published else \
        f"not published: {record.publish_reason}"
    freed = f"; {checkpoints_gone} checkpoint folders deleted (best_model/ kept)" if checkpoints_gone else ""
    return (f"round {record.round} done: best {record.best_score:.4f} (trial {record.best_trial or 'none'}) from "
            f"{record.start_source} {record.start_score:.4f}; {published}; {record.compute_hours:.3f} "
            f"{record.compute_unit}{freed}")


def run_one_round(request: MineRequest, folder: str, number: int, action: Next, budget_s: float | None, space,
                  base_model_dir: Path, publishing, chain, hub_endpoint: str | None, records: list[RoundRecord],
                  merged=lambda: None):
    """Decide (or, resuming, read the decision), then run the round's sweep; (its outcome, when it started)."""
    from orchestrator.experiment import choose_experiment
    from orchestrator.inputs import check_training_size, prepare_data, resolve_model_dir, resolve_opponent, \
        trial_settings
    from orchestrator.study import choose_study, ranking
    from orchestrator.summary import summary_head, summary_tail
    from orchestrator.sweep import run_sweep
    from orchestrator.sweep_metrics import mining_numbers, set_mining_gauges

    config = request.config
    seed = round_seed(config.search.seed, number)
    saved, warning = read_round_file(folder, number) if action is Next.RESUME else (None, None)
    if warning:
        print(warning)
    resume = action is Next.RESUME and saved is not None and "start_model" in saved
    if action is Next.RESTART or (action is Next.RESUME and not resume):
        aside = store.join(folder, f"{round_folder(number, store.name(folder))}.restarted-{int(time.time())}")
        store.move(store.join(folder, round_folder(number, store.name(folder))), aside)
        print(f"round {number}: its unfinished folder is kept as {store.name(aside)}; the round starts over")
    cfg = round_config(config, folder, number, seed, budget_s, resume)
    if resume:
        chosen = Candidate(Source(saved["start_source"]), saved["start_model"], _float(saved.get("start_score")))
        started_at = float(saved.get("started_at", time.time()))
        print(f"round {number}: resumes from {chosen.source} ({chosen.label})")
        decision = None
        study_record = saved.get("study", "continue")
    else:
        started_at = time.time()
        contenders = gather(cfg, chain, folder, records, hub_endpoint)
        for note in contenders.notes:
            print(f"round {number}: {note}")
        leader, ours, committed, base_score, samples = score_contenders(
            cfg, contenders, base_model_dir, config.data.embedded_model, hub_endpoint)
        decision = decide_start(number, request.start, base_label=str(base_model_dir), leader=leader, ours=ours,
                                committed=committed, committed_is_ours=contenders.committed_is_ours,
                                our_uid=contenders.our_uid, base_score=base_score)
        print(f"{decision.line} (on {samples} held-out samples, data seed {seed})", flush=True)
        chosen = decision.chosen
        fields = decision.record_fields()
        set_mining_gauges(mining_numbers(number, fields["leader_score"], chosen.score), store.name(folder))
    cfg = with_start(cfg, chosen)
    model_dir = resolve_model_dir(cfg)
    data = prepare_data(cfg, model_dir, hub_endpoint)
    check_training_size(cfg, data)
    study = choose_study(cfg.search.study, folder, model_dir, data, space, cfg.publishing.competition_id,
                         ranking(cfg.training))
    if not resume:
        study_record = plan_round_study(folder, number, study, space, records, cfg)
        write_round_file(folder, number, round=number, started_at=started_at, data_seed=seed,
                         study=study_record, fingerprint=study.fingerprint, **decision.record_fields())
        if line := carry_publish_state(folder, number, decision):
            print(line)
    opponent, setup = None, publishing
    leader_uid = (saved or {}).get("leader_uid") if resume else (
        decision.leader.uid if decision and decision.leader and not decision.we_lead else None)
    if request.require_win and leader_uid is not None:
        comparison = dataclasses.replace(cfg.comparison, comparison_uid=leader_uid, require_win=True)
        cfg = dataclasses.replace(cfg, comparison=comparison)
        opponent = resolve_opponent(cfg, lambda: chain, hub_endpoint)
    experiment = choose_experiment(cfg)
    settings = trial_settings(cfg, model_dir)
    print(f"model: {model_dir}\ndata: {len(data.train)} training pairs, {len(data.eval)} held-out eval pairs "
          f"(seed {seed})", flush=True)
    outcome = run_sweep(cfg, space, settings, data, setup, opponent, experiment=experiment,
                        command=["python", "-m", "orchestrator.mine", *request.argv], study=study,
                        merged=lambda o: (merged(), print(summary_head(o, cfg), flush=True)))
    if not outcome.interrupted:
        print(summary_tail(outcome, cfg))
    return outcome, started_at


def plan_round_study(folder: str, number: int, study, space, records: list[RoundRecord], config: SweepConfig) -> str:
    """Continue the last round's study, or seed the new one with earlier rounds' best (rounds.plan_study)."""
    import optuna

    from orchestrator.rounds import StudyAction, enqueue_seeds, plan_study, trial_rows
    from orchestrator.study import open_storage

    previous = None
    rows = []
    for record in records:
        data, _ = read_round_file(folder, record.round)
        if record.round == number - 1 and data:
            previous = data.get("fingerprint")
        try:
            text = store.read_bytes(store.join(folder, round_folder(record.round, store.name(folder)), "trials.csv"))
        except OSError:
            continue
        found, problems = trial_rows(text, record.round)
        rows += found
        for problem in problems:
            print(f"warning: {problem}")
    plan = plan_study(number, previous, study.fingerprint, rows, space, trials=space.trials(config.search.num_samples))
    print(plan.line)
    if plan.action is StudyAction.SEED:
        enqueue_seeds(optuna.load_study(study_name=study.name, storage=open_storage(study.storage)), plan.seeds)
    return plan.record


def draw_rounds(folder: str, records: list[RoundRecord]) -> str | None:
    """rounds.png: our best score and the leader's, round by round (each round's samples)."""
    if store.is_remote(folder):
        return None
    from orchestrator.plots import rounds_figure

    figure = rounds_figure(records)
    path = Path(folder, "rounds.png")
    figure.savefig(path, dpi=110)
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
