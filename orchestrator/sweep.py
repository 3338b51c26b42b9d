"""The Ray edge: start or join Ray, run the Tuner, and bring back what the summary needs.

The decisions (how many trials run at once, what each asks of the cluster) are pure
functions; `run_sweep` only wires Ray Tune's own parts together: OptunaSearch for the
suggestions, ASHA for early stopping, checkpoints kept by eval loss, one actor per trial named for it, and a
progress block (orchestrator.progress) instead of Tune's table.
"""

import dataclasses
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import ConfigError, SweepConfig
from orchestrator.experiment import FINISHED, INTERRUPTED, RUNNING, Experiment, choose_experiment, write_marker
from orchestrator.search_space import SearchSpace, optuna_search
from orchestrator.trial_records import TrialRecord, TrialStatus, count, records_from_results, write_trials_csv
from publishing.coordinator import CoordinatorReport
from publishing.setup import PublishSetup
from publishing.subnet.iswin import Comparison
from trainables.data import SweepData
from trainables.lora_trial import lora_trainable
from trainables.settings import TrialSettings
from trainables.trial_plan import EVAL_LOSS, RANK_LOSS, planned_reports

# What Tune ranks by (ASHA's rungs, Optuna's values, TuneConfig): rank_loss, in every report and scored on the same
# pairs in every trial. eval_loss, the whole set's, is in full evaluations only: what is published and merged.
METRIC, MODE = RANK_LOSS, "min"
TRIAL_THREAD_TIMEOUT_ENV = "TUNE_FUNCTION_THREAD_TIMEOUT_S"
# Quiet libraries keep the progress block readable. (Trials load only local folders, with local_files_only;
# the Hub stays reachable for the coordinator, which publishes.)
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning",
              # A stopped trial's actor waits this long for the trial's thread to end (2 s by default) while it
              # frees its model; on a busy machine that took longer than 2 s. (When actors were reused across
              # trials, Tune then failed the next trial: "Trainable runner reuse requires reset_config()".)
              TRIAL_THREAD_TIMEOUT_ENV: "600"}
# Ray Tune (2.60, ray.tune.execution.class_cache) copies these from the driver's environment into every trial actor's
# runtime environment, which each node's runtime_env_agent.log and the dashboard then show. They are left out: trials
# read credentials where every Ray process does, from their node's environment, ~/.aws or role.
CREDENTIAL_ENV_VARS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                                 "AWS_SESSION_TOKEN"})


def trial_resources(device: str, cpus_per_trial: int, cluster_gpus: float) -> dict:
    """One GPU per trial wherever the cluster has GPUs (unless told to use the CPU)."""
    if device == "cpu" or cluster_gpus < 1:
        return {"cpu": cpus_per_trial}
    return {"cpu": cpus_per_trial, "gpu": 1}


def concurrent_slots(resources: dict, cluster: dict) -> int:
    """How many trials fit in the cluster at once."""
    return max(1, min(math.floor(cluster.get(k.upper(), 0) / v) for k, v in resources.items()))


def unshared_nodes(nodes: list[dict], can_see) -> list[str]:
    """Addresses of the alive nodes for which `can_see(node)` is False."""
    return [n["NodeManagerAddress"] for n in nodes if n.get("Alive") and not can_see(n)]


def check_shared_storage(storage_path: str) -> None:
    """On a multi-node cluster, every node must reach --storage_path: trials resume from checkpoints there
    on whichever node survives. A probe file written here must be visible on every node."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2 or "://" in storage_path:
        return
    storage = Path(storage_path).expanduser()
    storage.mkdir(parents=True, exist_ok=True)
    probe = storage / f".lora-sweep-probe-{uuid.uuid4().hex}"
    probe.write_text("probe")
    exists = ray.remote(os.path.exists)

    def can_see(node):
        pinned = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        return ray.get(exists.options(num_cpus=0, scheduling_strategy=pinned).remote(str(probe)), timeout=60)

    try:
        blind = unshared_nodes(nodes, can_see)
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise ConfigError(f"--storage_path {storage_path} is not shared: node(s) {', '.join(blind)} cannot see it; "
                          "on a multi-node cluster use s3://, gs:// or a folder every node mounts")


def _sees_object(location: str) -> bool:
    """On a node: can it read `location` with its own credentials (the environment, ~/.aws or its role)?"""
    from publishing import storage

    try:
        return storage.is_file(location)
    except Exception:  # noqa: BLE001: no credentials, no route, a bad endpoint: all mean "cannot see it"
        return False


def keep_credentials_out_of_runtime_envs() -> None:
    """Stop Ray Tune from putting the driver's cloud credentials into the trials' runtime environment."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE) - CREDENTIAL_ENV_VARS


def check_object_storage_reachable(storage_path: str, joined: bool = True) -> None:
    """With --storage_path in object storage, on a cluster this driver joined (or of several nodes): every node reads
    its credentials itself (they are never sent to it), and trials upload checkpoints from every node, so each must
    read a probe object here. (A Ray this driver started shares its environment.)"""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from publishing import storage

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if (len(nodes) < 2 and not joined) or not storage.is_remote(storage_path):
        return
    probe = storage.join(storage_path, f".lora-sweep-probe-{uuid.uuid4().hex}")
    storage.write_text(probe, "probe")
    sees = ray.remote(_sees_object)

    def can_see(node):
        pinned = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        return ray.get(sees.options(num_cpus=0, scheduling_strategy=pinned).remote(probe), timeout=120)

    try:
        blind = unshared_nodes(nodes, can_see)
    finally:
        storage.delete(probe)
    if blind:
        raise ConfigError(f"--storage_path {storage_path} cannot be read from node(s) {', '.join(blind)}; each node "
                          "needs the storage's credentials in its own environment, ~/.aws or role (and "
                          "AWS_ENDPOINT_URL for an S3-compatible server)")


def start_ray(config: SweepConfig) -> bool:
    """Start or join Ray; False when the caller's Ray is already up (tests, notebooks) and stays theirs."""
    import ray

    if ray.is_initialized():  # embedded use (tests, notebooks): the caller's Ray is the cluster
        return False
    if config.run.device.startswith("cuda:") and config.run.address is None:
        # Ray hands out the GPUs CUDA_VISIBLE_DEVICES shows; restricting it pins the sweep to one GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = config.run.device.split(":", 1)[1]
    # Checkpoints are kept by score, so Tune snapshots its state often; that is cheap here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray Tune and Optuna are imported while Ray starts: ray.init mostly waits for its processes (seconds).
    tune_imports = threading.Thread(target=_import_tune, daemon=True, name="import-tune")
    tune_imports.start()
    # Without --address, "local" starts a Ray here, rather than joining one `ray start` left on this machine.
    context = ray.init(address=config.run.address or "local",
                       include_dashboard=config.run.dashboard if config.run.address is None else None,
                       runtime_env={"env_vars": WORKER_ENV}, logging_level="WARNING", log_to_driver=True)
    tune_imports.join()
    if context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}")
        # Ray 2.60 turns token authentication on for a new local Ray (ray.init sets RAY_AUTH_MODE=token here);
        # the dashboard then opens on a login page that wants the token, which nothing else tells the user about.
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            source = ("$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN")
                      else os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
            print(f"  it asks for a token: paste what `ray get-auth-token` prints (the token in {source})")
    return True


def _import_tune() -> None:
    import ray.tune.schedulers  # noqa: F401
    import ray.tune.search.optuna  # noqa: F401


@dataclass(frozen=True)
class SweepOutcome:
    experiment_path: str
    experiment_name: str
    trials: list[TrialRecord]   # every trial, in trial order
    interrupted: bool           # Ctrl-C (or a stop signal) ended the sweep before every trial ended
    best_trial: TrialRecord | None  # the trial whose checkpoint was merged (None when interrupted)
    base_eval_loss: float
    wall_s: float
    plots: list[str]            # PNG files in the experiment folder
    comparison: Comparison | None   # the head-to-head against --comparison_uid
    publish: CoordinatorReport  # the coordinator's report: what it published and merged, one line per outcome
    trials_csv: str = ""
    best_task_losses: dict = dataclasses.field(default_factory=dict)  # a competition of weighted tasks: each one's
    study: object = None  # --study: the orchestrator.study.StudyChoice this sweep continued
    time_budget: object = None  # --time_budget: the orchestrator.time_budget.BudgetEnd (None without a budget)
    what_mattered: object = None  # orchestrator.study_report.StudyReport: importances, compute, early stopping

    @property
    def best_model_dir(self) -> str | None:
        return self.publish.best.model_dir if self.publish.best else None

    @property
    def best_eval_loss(self) -> float:
        return self.publish.best.eval_loss if self.publish.best else math.nan

    @property
    def best_step(self) -> int:
        return self.publish.best.step if self.publish.best else 0

    @property
    def best_hyperparameters(self) -> dict:
        return self.publish.best.hyperparameters if self.publish.best else {}

    @property
    def num_trials(self) -> int:
        return len(self.trials)

    @property
    def finished(self) -> int:
        return count(self.trials, TrialStatus.FINISHED)

    @property
    def stopped_early(self) -> int:
        return count(self.trials, TrialStatus.STOPPED)

    @property
    def out_of_memory(self) -> int:
        return count(self.trials, TrialStatus.OUT_OF_MEMORY)

    @property
    def errored(self) -> int:
        return count(self.trials, TrialStatus.FAILED)

    @property
    def interrupted_trials(self) -> int:
        return count(self.trials, TrialStatus.INTERRUPTED)

    @property
    def stopped_by_budget(self) -> int:
        return count(self.trials, TrialStatus.TIME_BUDGET)


class _NoTunerRestoreHint(logging.Filter):
    """Tune's own hint after an interruption names `Tuner.restore(...)`; ours names the `--resume` command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "interrupted, but the most recent state was saved" not in record.getMessage()


_NO_TUNER_RESTORE_HINT = _NoTunerRestoreHint()  # one instance: adding it again (a second sweep) changes nothing


def new_tuner(config: SweepConfig, space: SearchSpace, trainable, experiment: Experiment, callbacks: list,
              scheduler, num_trials: int, max_concurrent: int, max_reports: int | None = None, study=None):
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
        # space, and each trial's config is its suggestion)
        named_trials(trainable),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=num_trials,
            # --time_budget: declines trials that would not finish in time (a pass-through without a budget; always
            # there, and found by name, so a --resume may bring a budget of its own). Tune's own concurrency limit,
            # and a seal on the state each save writes (orchestrator.state_seal), so a --resume loads only ours.
            search_alg=SealedSearch(ConcurrencyLimiter(TimeBudgetSearcher(searcher, experiment.name), max_concurrent),
                                    experiment.path),
            scheduler=scheduler,
            # Ray names an actor once, when it starts: a reused actor would show its first trial's name for
            # every later one. A new actor costs a trial a second or two of imports; trials run minutes to hours.
            reuse_actors=False,
            trial_dirname_creator=trial_dirname),  # trial_<id>_lr=6.90e-04_r=64_alpha=64
        run_config=tune.RunConfig(
            name=experiment.name, storage_path=experiment.storage, callbacks=callbacks,
            stop=TimeBudgetStopper(experiment.name),  # --time_budget: stops trials at their next report once spent
            # Tune keeps every checkpoint: each trial deletes its own stale ones (trainables.checkpoint_retention),
            # so the driver's loop makes no storage call per checkpoint and forces no experiment snapshots
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None, checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=config.run.max_failures),
            progress_reporter=ProgressBlock(num_trials, max_reports or 0, max_concurrent), verbose=1),
    )


@dataclass(frozen=True)
class ClusterPlan:
    """What each trial asks of the cluster and how many run at once, decided from what Ray sees."""
    resources: dict           # per trial: {"cpu": n} or {"cpu": n, "gpu": 1}
    max_concurrent: int

    @property
    def task_options(self) -> dict:
        """The same resources for a Ray task (the head-to-head's evaluations)."""
        return {"num_cpus": self.resources.get("cpu", 1), "num_gpus": self.resources.get("gpu", 0)}


def plan_cluster(config: SweepConfig) -> ClusterPlan:
    """Checks that need the running cluster (its GPUs, CPUs and nodes), done before anything trains."""
    import ray

    cluster = ray.cluster_resources()
    resources = trial_resources(config.run.device, config.run.cpus_per_trial, cluster.get("GPU", 0))
    if config.run.device.startswith("cuda") and "gpu" not in resources:
        raise ConfigError(f"--device {config.run.device} but Ray sees no GPU; use --device cpu or auto")
    if "gpu" not in resources and config.run.cpus_per_trial > cluster.get("CPU", 0):
        raise ConfigError(f"--cpus_per_trial {config.run.cpus_per_trial} is more than the cluster's "
                          f"{int(cluster.get('CPU', 0))} CPUs")
    check_shared_storage(config.run.storage_path)
    check_object_storage_reachable(config.run.storage_path, joined=config.run.address is not None)
    return ClusterPlan(resources, config.search.max_concurrent_trials or concurrent_slots(resources, cluster))


@dataclass(frozen=True)
class HeadToHead:
    """--comparison_uid: the opponent and its per-pair losses, measured once before the sweep."""
    opponent: object          # publishing.head_to_head.Opponent
    their_losses: list


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
                max_reports: int, study=None):
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

        return tune.Tuner.restore(experiment.path, trainable=named_trials(trainable), resume_unfinished=True,
                                  resume_errored=True)
    callbacks = [PublishCallback(experiment.name),
                 SweepMetricsCallback(experiment.name, space.trials(config.search.num_samples)),  # Grafana's gauges
                 ProgressKeeper(),  # each trial's step and checkpoint, for the one line a failed attempt gets
                 StorageWatch(experiment.name)]  # a trial the storage failed (full, read-only) stops the sweep
    if config.tracking.wandb_project:
        Path(experiment.local_dir).mkdir(parents=True, exist_ok=True)  # W&B's run folders need a file system
        callbacks.append(wandb_callback(config.tracking.wandb_entity, config.tracking.wandb_project, experiment.name, config.publishing.env_file,
                                        experiment.local_dir))
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=max_reports,
                               grace_period=min(config.search.grace_period, max_reports),
                               reduction_factor=config.search.reduction_factor)
                 if config.search.scheduler == "asha" else FIFOScheduler())
    return new_tuner(config, space, trainable, experiment, callbacks, scheduler, space.trials(config.search.num_samples),
                     plan.max_concurrent, max_reports, study)


def run_sweep(config: SweepConfig, space: SearchSpace, settings: TrialSettings, data: SweepData,
              publishing: PublishSetup, opponent=None, trial_function=lora_trainable,
              experiment: Experiment | None = None, command: list[str] | None = None,
              plan: ClusterPlan | None = None, study=None) -> SweepOutcome:
    """Run the sweep on the Ray this process is connected to; publishing happens in the coordinator actor."""
    from ray import tune

    from orchestrator.fault_lines import condense_trial_failures
    from orchestrator.storage_failure import STORAGE_ERRORS, raise_if_storage_failed
    from orchestrator.time_budget import release_clock, start_clock
    from publishing.coordinator_actor import start_coordinator

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's newer output ignores a progress reporter: ours is kept
    logging.getLogger("ray.tune.tune").addFilter(_NO_TUNER_RESTORE_HINT)
    condense_trial_failures()  # a failed attempt's traceback becomes one line (the trial's error.txt keeps it)
    started = time.perf_counter()
    experiment = experiment or choose_experiment(config)
    plan = plan or plan_cluster(config)
    if config.run.address is not None:  # joined a cluster: plan memory against its smallest GPU (or node)
        from orchestrator.memory_budget import cluster_budget, plan_trial_memory

        settings = plan_trial_memory(config, settings, space, data, cluster_budget(config, "gpu" in plan.resources))
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
        try:
            results = build_tuner(config, space, trainable, experiment, plan, max_reports, study).fit()
            records = records_from_results(results, max_reports, budget_stopped=budget.stopped)
        except Exception as error:  # a full or unwritable storage ends the sweep as an outcome; anything else is raised
            raise_if_storage_failed(experiment, [error])
            raise
        if count(records, TrialStatus.FAILED) or experiment.name in STORAGE_ERRORS:  # the storage's doing?
            raise_if_storage_failed(experiment, [result.error for result in results if result.error is not None]
                                    + ([STORAGE_ERRORS[experiment.name]] if experiment.name in STORAGE_ERRORS else []))
        budget_end = budget.report(records, space.trials(config.search.num_samples))
        trials_csv = experiment.keep(write_trials_csv(records, experiment.local_dir))
        # Trials the time budget never started or stopped are its end, not an interruption (Ctrl-C still is one).
        missing = len(records) < space.trials(config.search.num_samples) and not budget.ended
        if missing or count(records, TrialStatus.INTERRUPTED):
            # Nothing half-trained is merged or published: the coordinator goes without its end-of-sweep publish.
            write_marker(experiment, INTERRUPTED)
            return SweepOutcome(experiment.path, experiment.name, records, interrupted=True, best_trial=None,
                                base_eval_loss=_base_eval_loss(results), wall_s=time.perf_counter() - started,
                                plots=[], comparison=None,
                                publish=CoordinatorReport(lines=[], offline=publishing.target.repo_id is None),
                                trials_csv=trials_csv)
        if records and count(records, TrialStatus.FAILED) + count(records, TrialStatus.OUT_OF_MEMORY) == len(records):
            raise RuntimeError(f"all {len(records)} trials failed; the first error: {records[0].reason}")
        # The coordinator saw every checkpoint: it publishes (or, offline, packages) the best and merges it.
        # (the link reaches the actor alive now: a restarted one, if the first died during the sweep)
        report = coordinator.finish(config.publishing.wait_for_publish)
    finally:
        coordinator.stop()  # kills the actor (its state is on disk; the name is free) and releases the link
        release_clock(experiment.name)
        STORAGE_ERRORS.pop(experiment.name, None)  # a resume in this process starts with a clean slate
    write_marker(experiment, FINISHED)
    deleted = delete_leftover_checkpoints(results)
    if deleted:
        print(f"checkpoints: kept each trial's 2 best and its latest; deleted {deleted} more", flush=True)
    outcome = collect_outcome(config, experiment, records, results, report, comparison, settings, data, plan,
                              trials_csv, time.perf_counter() - started, space=space)
    outcome = dataclasses.replace(outcome, study=study)
    outcome = dataclasses.replace(outcome, time_budget=budget_end)
    if config.tracking.wandb_project:
        from orchestrator.tracking import log_sweep_summary

        log_sweep_summary(config.tracking.wandb_entity, config.tracking.wandb_project, experiment.name, config.publishing.env_file,
                          experiment.local_dir, summary_record(outcome))
    return outcome


def delete_leftover_checkpoints(results) -> int:
    """After a finished sweep, whose best model is merged: each trial keeps its 2 best checkpoints and its latest
    (trainables.checkpoint_retention.leftovers); the rest go, in parallel (each is a storage call or two). A
    deletion that fails leaves that checkpoint where it is. How many went."""
    from concurrent.futures import ThreadPoolExecutor

    from trainables.checkpoint_retention import leftovers

    doomed = []
    for result in results:
        saved = sorted(result.best_checkpoints or [], key=lambda pair: pair[1].get("training_iteration", 0))
        # by the whole set's loss, as each trial kept them: a checkpoint of a subset evaluation is a resume point only
        doomed += leftovers([(checkpoint, metrics.get(EVAL_LOSS, math.nan)) for checkpoint, metrics in saved])

    def delete(checkpoint) -> bool:
        try:
            checkpoint.filesystem.delete_dir(checkpoint.path)
            return True
        except OSError:  # already gone (the trial deleted it), or storage refused: left as it is
            return False

    with ThreadPoolExecutor(max_workers=16) as pool:
        return sum(pool.map(delete, doomed))


def collect_outcome(config: SweepConfig, experiment: Experiment, records: list[TrialRecord], results, report,
                    comparison: HeadToHead | None, settings: TrialSettings, data: SweepData, plan: ClusterPlan,
                    trials_csv: str, wall_s: float, space: SearchSpace | None = None) -> SweepOutcome:
    """The finished sweep's outcome: the merged best, the plots, the head-to-head against --comparison_uid, and
    what mattered (importances over the space's distributions, compute spent, what early stopping saved)."""
    from orchestrator.plots import write_plots
    from orchestrator.study_report import study_report
    from publishing.head_to_head import head_to_head
    from trainables.trial_plan import step_plan

    best = report.best
    versus = None
    if comparison is not None and best is not None:
        versus = head_to_head(comparison.opponent, comparison.their_losses, best.model_dir, settings, data.eval,
                              plan.task_options, experiment.path, data.tasks)
    # drawn on this machine (from a copy of each trial's results when the experiment is in s3://...), kept with it
    plots_dir = Path(experiment.local_dir) / "plots"
    plots = [str(p) for p in write_plots(experiment.trial_results_here(), plots_dir,
                                         statuses={r.trial_id: r.status for r in records})]
    # a full trial's steps: the same pure plan every trial trains by; the steps each trial ran come from its reports
    mattered = study_report(records, plan.resources, len(step_plan(settings, data.train)),
                            plots_dir, space.distributions if space else None,
                            config.search.seed)
    return SweepOutcome(experiment.path, experiment.name, records, interrupted=False,
                        best_trial=next((r for r in records if best and r.trial_id == best.trial_id), None),
                        base_eval_loss=_base_eval_loss(results), wall_s=wall_s,
                        plots=[experiment.keep(p) for p in plots + mattered.plots], comparison=versus,
                        publish=report, trials_csv=trials_csv,
                        best_task_losses=_task_losses(results, best.trial_id, best.step) if best else {},
                        what_mattered=mattered)


def _base_eval_loss(results) -> float:
    # every trial reports the untrained model's loss, measured by its worker (the driver never holds a model)
    return next((r.metrics["base_eval_loss"] for r in results if "base_eval_loss" in (r.metrics or {})), math.nan)


def _task_losses(results, trial_id: str, step: int) -> dict[str, float]:
    """Each task's loss at the merged checkpoint (Tune flattens the reported task_losses dict into columns)."""
    for result in results:
        history = result.metrics_dataframe
        if (result.metrics or {}).get("trial_id") != trial_id or history is None or "step" not in history:
            continue
        at_step = history[history["step"] == step]
        return {column.split("/", 1)[1]: float(at_step[column].iloc[-1])
                for column in history.columns if column.startswith("task_losses/") and len(at_step)}
    return {}


def summary_record(outcome: SweepOutcome) -> dict:
    """The outcome as plain values, for W&B's summary run (nothing secret is in it)."""
    published = outcome.publish.published
    return {"best_hyperparameters": outcome.best_hyperparameters, "best_eval_loss": outcome.best_eval_loss,
            "base_eval_loss": outcome.base_eval_loss, "best_step": outcome.best_step,
            "best_task_losses": outcome.best_task_losses,
            "best_trial": outcome.best_trial.trial_id if outcome.best_trial else None,
            "num_trials": outcome.num_trials, "stopped_early": outcome.stopped_early, "errored": outcome.errored,
            "out_of_memory": outcome.out_of_memory, "stopped_by_time_budget": outcome.stopped_by_budget,
            "ended": outcome.time_budget.line() if outcome.time_budget else "every planned trial ran",
            "best_model_dir": outcome.best_model_dir, "published_model_id": published.model_id if published else None,
            "wall_s": outcome.wall_s, **({"comparison": outcome.comparison.record()} if outcome.comparison else {}),
            **(outcome.what_mattered.record() if outcome.what_mattered else {})}
