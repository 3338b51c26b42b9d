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
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import ConfigError, OneLineParser, SweepConfig, load_config
from orchestrator.durations import parse_duration
from orchestrator.contenders import gather, score_contenders
from orchestrator.mining_folder import (as_float, carry_publish_state, choose_mining_folder, draw_rounds,
                                        free_round_disk, read_round_file, record_from_folder, record_round,
                                        sweep_folders, write_mining, write_round_file)
from orchestrator.rounds import (ROUNDS_CSV, Candidate, Next, RoundRecord, Source, Start, append_round, decide_start,
                                 next_round, read_rounds, resume_step, round_folder, round_seed)
from publishing import storage as store

INTERRUPTED_EXIT = 130


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m orchestrator.mine", allow_abbrev=False, add_help=False,
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


def cluster_size(config: SweepConfig) -> tuple[int, int]:
    """(GPUs, CPUs) the rounds run on: what a round's compute is counted in."""
    import ray

    resources = ray.cluster_resources()
    gpus = 0 if config.run.device == "cpu" else int(resources.get("GPU", 0))
    return gpus, int(resources.get("CPU", 1))


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

            # the round's sweep continues with the run (orchestrator.run's command would not take mine's flags)
            print(render_interrupted(outcome, resume_line(request, folder)))
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
        chosen = Candidate(Source(saved["start_source"]), saved["start_model"], as_float(saved.get("start_score")))
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
                        merged=lambda o: (merged(), print(summary_head(o, cfg), flush=True)),
                        progress_title=f"round {number}")  # the job log shows the round in progress
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


if __name__ == "__main__":
    sys.exit(main())
