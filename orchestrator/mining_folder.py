"""A mining run's folder (orchestrator.mine): its marker (mining.json), each round's decision (<run>.round-NNN/
round.json), what --resume finds there, our best model so far, and each round's record, from its outcome or, where
the driver stopped before writing it, from its folder. Files are written whole (publishing.storage), local or in
object storage.
"""

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

from orchestrator.config import ConfigError, SweepConfig
from orchestrator.rounds import (RoundRecord, Source, StartDecision, SweepFolder, folder_round, round_compute,
                                 round_folder)
from publishing import storage as store

MINING_FILE = "mining.json"  # the run's marker: its command and status; what --resume looks for
ROUND_FILE = "round.json"    # a round's decision, written before its sweep: a resume restarts it from the same model


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
        start_score=as_float(data.get("start_score")), start_reason=data.get("start_reason", "unknown"),
        leader_uid=data.get("leader_uid"), leader_score=as_float(data.get("leader_score")),
        ours_score=as_float(data.get("ours_score", nan)), committed_score=as_float(data.get("committed_score", nan)),
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
        start_score=as_float(data.get("start_score")), start_reason=data.get("start_reason", "unknown"),
        leader_uid=data.get("leader_uid"), leader_score=as_float(data.get("leader_score")),
        ours_score=as_float(data.get("ours_score")), committed_score=as_float(data.get("committed_score")),
        data_seed=int(data.get("data_seed", 0)), study=data.get("study", "new"), best_trial="",
        best_score=as_float(data.get("best_score")), published=False,
        publish_reason="unknown: the driver stopped before the round was recorded (see its publish_state.json)",
        compute_hours=0.0, compute_unit="GPU-hours", experiment=round_folder(number, store.name(folder)))


def as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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


def draw_rounds(folder: str, records: list[RoundRecord]) -> str | None:
    """rounds.png: our best score and the leader's, round by round (each round's samples)."""
    if store.is_remote(folder):
        return None
    from orchestrator.plots import rounds_figure

    figure = rounds_figure(records)
    path = Path(folder, "rounds.png")
    figure.savefig(path, dpi=110)
    return str(path)
