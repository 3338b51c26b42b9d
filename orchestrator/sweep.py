"""One sweep on the Ray this process is connected to (orchestrator.ray_start starts or joins it), as a recipe:
plan, build the tuner, fit, collect.

Ray Tune's own parts do the work: OptunaSearch suggests (orchestrator.search_space), ASHA stops early, checkpoints
are kept by eval loss, each trial runs in an actor named for it, and a progress block (orchestrator.progress)
replaces Tune's table. The decisions live elsewhere, each in its own module: what each trial asks of the cluster
(cluster_plan), the memory it has (memory_budget), whether every node reaches the storage (storage_probes), how each
trial ended (trial_records), what the sweep ends with (outcome), which checkpoints go (checkpoint_cleanup).
"""

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from orchestrator.cluster_plan import ClusterPlan, plan_cluster
from orchestrator.checkpoint_cleanup import delete_leftover_checkpoints
from orchestrator.config import SweepConfig
from orchestrator.experiment import FINISHED, INTERRUPTED, RUNNING, Experiment, choose_experiment, write_marker
from orchestrator.outcome import HeadToHead, SweepOutcome, collect_outcome, interrupted_outcome, summary_record
from orchestrator.search_space import SearchSpace, optuna_search
from orchestrator.trial_records import TrialRecord, TrialStatus, count, records_from_results, write_trials_csv
from publishing.setup import PublishSetup
from trainables.checkpoint_retention import kept_line
from trainables.data import SweepData
from trainables.lora_trial import lora_trainable
from trainables.settings import TrialSettings
from trainables.trial_contract import RANK_LOSS, TRAINING_ITERATION
from trainables.trial_plan import planned_reports

if TYPE_CHECKING:
    from orchestrator.study import StudyChoice

# What Tune ranks by (ASHA's rungs, Optuna's values, TuneConfig): rank_loss, in every report and scored on the same
# pairs in every trial. eval_loss, the whole set's, is in full evaluations only: what is published and merged.
METRIC, MODE = RANK_LOSS, "min"
# Ray Tune (2.60, ray.tune.execution.class_cache) copies these from the driver's environment into every trial actor's
# runtime environment, which each node's runtime_env_agent.log and the dashboard then show. They are left out: trials
# read credentials where every Ray process does, from their node's environment, ~/.aws or role.
CREDENTIAL_ENV_VARS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                                 "AWS_SESSION_TOKEN"})


def keep_credentials_out_of_runtime_envs() -> None:
    """Stop Ray Tune from putting the driver's cloud credentials into the trials' runtime environment."""
    from trainables.compat import ray_internals

    ray_internals.keep_out_of_trial_runtime_envs(CREDENTIAL_ENV_VARS)


class _NoTunerRestoreHint(logging.Filter):
    """Tune's own hint after an interruption names `Tuner.restore(...)`; ours names the `--resume` command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "interrupted, but the most recent state was saved" not in record.getMessage()


_NO_TUNER_RESTORE_HINT = _NoTunerRestoreHint()  # one instance: adding it again (a second sweep) changes nothing


def new_tuner(config: SweepConfig, space: SearchSpace, trainable, experiment: Experiment, callbacks: list,
              scheduler, num_trials: int, max_concurrent: int, max_reports: int | None = None, study=None,
              progress_title: str = ""):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from orchestrator.progress import ProgressBlock
    from orchestrator.sealed_search import SealedSearch
    from orchestrator.time_budget import TimeBudgetSearcher, TimeBudgetStopper
    from trainables.trial_telemetry import named_trials, trial_dirname

    # --pruned_trials: `complete` (the default) reports stopped trials as stock Ray Tune does; `pruned` as PRUNED
    full_reports = max_reports if config.search.pruned_trials == "pruned" else None
    searcher = optuna_search(space, config.search.seed, METRIC, MODE, full_reports=full_reports, study=study)
    return tune.Tuner(
        # one actor per trial, named for it on the dashboard's Actors page (no param_space: the searcher holds the
        # space, and each trial's config is its suggestion); with --reuse_workers, actors named for their purpose
        named_trials(trainable, per_trial=not config.run.reuse_workers),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=num_trials,
            # --time_budget: declines trials that would not finish in time (a pass-through without a budget; always
            # there, and found by name, so a --resume may bring a budget of its own). Tune's own concurrency limit,
            # and a seal on the state each save writes (orchestrator.state_seal), so a --resume loads only ours.
            search_alg=SealedSearch(ConcurrencyLimiter(TimeBudgetSearcher(searcher, experiment.name), max_concurrent),
                                    experiment.path),
            scheduler=scheduler,
            # Ray names an actor once, when it starts: a reused actor would show its first trial's name for
            # every later one. A new actor costs a trial its process's start and imports (about 4 s on a CPU):
            # little beside trials of minutes to hours, most of a sweep of trials of seconds (--reuse_workers).
            reuse_actors=config.run.reuse_workers,
            trial_dirname_creator=trial_dirname),  # trial_<id>_lr=6.90e-04_r=64_alpha=64
        run_config=tune.RunConfig(
            name=experiment.name, storage_path=experiment.storage, callbacks=callbacks,
            stop=TimeBudgetStopper(experiment.name),  # --time_budget: stops trials at their next report once spent
            # Tune keeps every checkpoint: each trial deletes its own stale ones (trainables.checkpoint_retention),
            # so the driver's loop makes no storage call per checkpoint and forces no experiment snapshots
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None, checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=config.run.max_failures),
            progress_reporter=ProgressBlock(num_trials, max_reports or 0, max_concurrent, title=progress_title),
            verbose=1),
    )


def measure_opponent(config: SweepConfig, opponent, settings: TrialSettings, data: SweepData,
                     plan: ClusterPlan, publishing: PublishSetup) -> tuple[HeadToHead | None, PublishSetup]:
    """The opponent's losses on our eval set; with --require_win, the coordinator's gate against them."""
    from publishing.head_to_head import WinGate, remote_pair_losses

    if opponent is None:
        return None, publishing
    their_losses = remote_pair_losses(opponent.model_dir, settings, data.eval, plan.task_options)
    if config.comparison.require_win:
        gate = WinGate(opponent, their_losses, settings, data.eval, plan.task_options, data.tasks)
        publishing = dataclasses.replace(publishing, gate=gate)
    return HeadToHead(opponent, their_losses), publishing


def build_tuner(config: SweepConfig, space: SearchSpace, trainable, experiment: Experiment, plan: ClusterPlan,
                max_reports: int, study=None, progress_title: str = ""):
    """A new Tuner, or, with --resume, Tune's own restore of the experiment (trials, checkpoints, searcher)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from orchestrator.fault_lines import ProgressKeeper
    from orchestrator.storage_failure import StorageWatch
    from orchestrator.sweep_metrics import SweepMetricsCallback
    from orchestrator.tracking import wandb_callback
    from publishing.tune_callback import PublishCallback

    if experiment.resume:
        # finished trials stay finished; the callbacks saved with the experiment reach the new coordinator by name
        print(f"resuming {experiment.path}")
        from orchestrator.state_seal import check_sealed
        from trainables.trial_telemetry import named_trials

        check_sealed(experiment.path)  # again, just before Tune reads: the folder may have changed since the input checks

        return tune.Tuner.restore(experiment.path, trainable=named_trials(trainable,
                                                                         per_trial=not config.run.reuse_workers),
                                  resume_unfinished=True,
                                  resume_errored=True)
    callbacks = [PublishCallback(experiment.name),
                 SweepMetricsCallback(experiment.name, space.trials(config.search.num_samples)),  # Grafana's gauges
                 ProgressKeeper(),  # each trial's step and checkpoint, for the one line a failed attempt gets
                 StorageWatch(experiment.name)]  # a trial the storage failed (full, read-only) stops the sweep
    if config.tracking.wandb_project:
        Path(experiment.local_dir).mkdir(parents=True, exist_ok=True)  # W&B's run folders need a file system
        callbacks.append(wandb_callback(config.tracking.wandb_entity, config.tracking.wandb_project, experiment.name, config.publishing.env_file,
                                        experiment.local_dir))
    scheduler = (ASHAScheduler(time_attr=TRAINING_ITERATION, max_t=max_reports,
                               grace_period=min(config.search.grace_period, max_reports),
                               reduction_factor=config.search.reduction_factor)
                 if config.search.scheduler == "asha" else FIFOScheduler())
    return new_tuner(config, space, trainable, experiment, callbacks, scheduler, space.trials(config.search.num_samples),
                     plan.max_concurrent, max_reports, study, progress_title)


def run_sweep(config: SweepConfig, space: SearchSpace, settings: TrialSettings, data: SweepData,
              publishing: PublishSetup, opponent=None, trial_function=lora_trainable,
              experiment: Experiment | None = None, command: list[str] | None = None,
              study: "StudyChoice | None" = None,
              merged: Callable[[SweepOutcome], None] = lambda outcome: None,
              progress_title: str = "") -> SweepOutcome:
    """Run the sweep on the Ray this process is connected to: plan, build the tuner, fit, collect. Publishing
    happens in the coordinator actor, fed by the tuner's callbacks. `merged` gets the outcome (less its plots and
    what-mattered) once the best is merged and the sweep needs Ray no more, while the plots are drawn: the driver
    shuts its Ray down and prints the summary's first lines then. `progress_title` opens each progress block's header
    (orchestrator.mine's round: `round 2 · trials: ...`)."""
    from ray import tune

    from orchestrator.memory_budget import plan_trial_memory, trial_budget
    from orchestrator.time_budget import release_clock, start_clock
    from publishing.coordinator_actor import start_coordinator

    started = time.perf_counter()
    quiet_tune_output()
    experiment = experiment or choose_experiment(config)
    num_trials = space.trials(config.search.num_samples)

    # plan: what each trial asks of the cluster, the memory it has, how many reports it makes
    plan = plan_cluster(config)
    settings = plan_trial_memory(config, settings, space, data, trial_budget(config, plan.uses_gpus))
    max_reports = planned_reports(settings, data.train, data.eval, data.tasks)
    # --time_budget counts the whole sweep from here (a resumed one: from its resume); Tune's loop runs in this
    # process, and the budget's searcher and stopper find this clock by the sweep's name
    budget = start_clock(experiment.name, config.run.time_budget_s, max_reports, spent_s=time.perf_counter() - started)
    comparison, publishing = measure_opponent(config, opponent, settings, data, plan, publishing)
    trainable = tune.with_resources(tune.with_parameters(trial_function, settings=settings, data=data),
                                    plan.resources)
    keep_credentials_out_of_runtime_envs()
    write_marker(experiment, RUNNING, command)
    # the merged model needs a file system: experiment.local_dir (the experiment folder, unless that is in s3://...)
    coordinator = start_coordinator(publishing, settings.model_dir, experiment.path, experiment.name,
                                    work_dir=experiment.local_dir)
    try:
        # build the tuner and fit: every trial ends (finished, stopped, failed...) or the sweep is interrupted
        tuner = build_tuner(config, space, trainable, experiment, plan, max_reports, study, progress_title)
        results, records = fit(tuner, experiment, max_reports, budget)
        budget_end = budget.report(records, num_trials)
        trials_csv = experiment.keep(write_trials_csv(records, experiment.local_dir))
        # Trials the time budget never started or stopped are its end, not an interruption (Ctrl-C still is one).
        if (len(records) < num_trials and not budget.ended) or count(records, TrialStatus.INTERRUPTED):
            # Nothing half-trained is merged or published: the coordinator goes without its end-of-sweep publish.
            write_marker(experiment, INTERRUPTED)
            return interrupted_outcome(experiment, records, results, time.perf_counter() - started,
                                       offline=publishing.target.repo_id is None, trials_csv=trials_csv)
        if records and count(records, TrialStatus.FAILED) + count(records, TrialStatus.OUT_OF_MEMORY) == len(records):
            raise RuntimeError(f"all {len(records)} trials failed; the first error: {records[0].reason}")
        # The coordinator saw every checkpoint: it publishes (or, offline, packages) the best and merges it.
        # (the link reaches the actor alive now: a restarted one, if the first died during the sweep)
        report = coordinator.finish(config.publishing.wait_for_publish)
    finally:
        coordinator.stop()  # kills the actor (its state is on disk; the name is free) and releases the link
        release_clock(experiment.name)

    # collect: the merged best, plots, what mattered; the checkpoints no trial keeps go
    write_marker(experiment, FINISHED)
    deleted = delete_leftover_checkpoints(results)
    if deleted:
        print(kept_line(deleted), flush=True)
    outcome = collect_outcome(config, experiment, records, results, report, comparison, settings, data, plan,
                              trials_csv, time.perf_counter() - started, space=space, study=study,
                              time_budget=budget_end, meanwhile=merged)
    if config.tracking.wandb_project:
        from orchestrator.tracking import log_sweep_summary

        log_sweep_summary(config.tracking.wandb_entity, config.tracking.wandb_project, experiment.name,
                          config.publishing.env_file, experiment.local_dir, summary_record(outcome))
    return outcome


def quiet_tune_output() -> None:
    """Tune's output as this sweep shows it: our progress block, our --resume hint, one line per failed attempt."""
    from orchestrator.fault_lines import condense_trial_failures
    from trainables.compat import ray_internals

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's newer output ignores a progress reporter: ours is kept
    if (log := ray_internals.ray_logger("ray.tune.tune", "Tune's hint after an interruption names "
                                        "Tuner.restore(...), not --resume")) is not None:
        log.addFilter(_NO_TUNER_RESTORE_HINT)
    condense_trial_failures()  # a failed attempt's traceback becomes one line (the trial's error.txt keeps it)


def fit(tuner, experiment: Experiment, max_reports: int, budget) -> tuple[object, list[TrialRecord]]:
    """Tune's results and each trial's record. A storage that filled or failed under the sweep is raised as
    StorageFailed (an outcome: one line, --resume continues); any other error as it is."""
    from orchestrator.fault_lines import ended_by_tune
    from orchestrator.storage_failure import STORAGE_ERRORS, raise_if_storage_failed

    try:
        try:
            results = tuner.fit()
            records = records_from_results(results, max_reports, budget_stopped=budget.stopped,
                                           ended_by_tune=ended_by_tune())
        except Exception as error:
            raise_if_storage_failed(experiment, [error])
            raise
        if count(records, TrialStatus.FAILED) or experiment.name in STORAGE_ERRORS:  # the storage's doing?
            raise_if_storage_failed(experiment, [result.error for result in results if result.error is not None]
                                    + ([STORAGE_ERRORS[experiment.name]] if experiment.name in STORAGE_ERRORS else []))
    finally:
        STORAGE_ERRORS.pop(experiment.name, None)  # a resume in this process starts with a clean slate
    return results, records
