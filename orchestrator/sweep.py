"""The Ray edge: start or join Ray, run the Tuner, and bring back what the summary needs.

The decisions (how many trials run at once, what each asks of the cluster) are pure
functions; `run_sweep` only wires Ray Tune's own parts together: OptunaSearch for the
suggestions, ASHA for early stopping, checkpoints kept by eval loss, and CLIReporter's table.
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
from orchestrator.search_space import SearchSpace, optuna_sampler, tune_param_space
from orchestrator.trial_records import TrialRecord, TrialStatus, count, records_from_results, write_trials_csv
from publishing.setup import PublishSetup
from trainables.data import SweepData
from trainables.lora_trial import TrialSettings, lora_trainable, planned_reports

METRIC, MODE = "eval_loss", "min"
TRIAL_THREAD_TIMEOUT_ENV = "TUNE_FUNCTION_THREAD_TIMEOUT_S"
PARAMETERS = ["learning_rate", "r", "alpha"]
# Quiet libraries keep the live table readable. (Trials load only local folders, with local_files_only;
# the Hub stays reachable for the coordinator, which publishes.)
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning",
              # A reused worker waits this long for its previous trial's thread to end (2 s by default). A stopped
              # trial's thread is still freeing its model then; on a busy machine that took longer than 2 s, and
              # Tune failed the next trial ("Trainable runner reuse requires reset_config()") without a retry.
              TRIAL_THREAD_TIMEOUT_ENV: "600"}


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


def start_ray(config: SweepConfig) -> bool:
    """Start or join Ray; False when the caller's Ray is already up (tests, notebooks) and stays theirs."""
    import ray

    if ray.is_initialized():  # embedded use (tests, notebooks): the caller's Ray is the cluster
        return False
    if config.device.startswith("cuda:") and config.address is None:
        # Ray hands out the GPUs CUDA_VISIBLE_DEVICES shows; restricting it pins the sweep to one GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = config.device.split(":", 1)[1]
    # Checkpoints are kept by score, so Tune snapshots its state often; that is cheap here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray Tune and Optuna are imported while Ray starts: ray.init mostly waits for its processes (seconds).
    tune_imports = threading.Thread(target=_import_tune, daemon=True, name="import-tune")
    tune_imports.start()
    # Without --address, "local" starts a Ray here, rather than joining one `ray start` left on this machine.
    context = ray.init(address=config.address or "local",
                       include_dashboard=config.dashboard if config.address is None else None,
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
    trials: list              # TrialRecord of every trial, in trial order
    interrupted: bool         # Ctrl-C (or a stop signal) ended the sweep before every trial ended
    best_trial: TrialRecord | None   # the trial whose checkpoint was merged (None when interrupted)
    best_hyperparameters: dict
    best_eval_loss: float
    best_step: int
    base_eval_loss: float
    best_model_dir: str | None
    wall_s: float
    plots: list               # PNG files in the experiment folder
    comparison: object        # publishing.subnet.iswin.Comparison with --comparison_uid, else None
    publish: dict             # the coordinator's report: outcome lines, what was published, publish.json
    trials_csv: str = ""

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
    def errored(self) -> int:
        return count(self.trials, TrialStatus.FAILED)

    @property
    def interrupted_trials(self) -> int:
        return count(self.trials, TrialStatus.INTERRUPTED)


def _remote_options(resources: dict) -> dict:
    return {"num_cpus": resources.get("cpu", 1), "num_gpus": resources.get("gpu", 0)}


class _NoTunerRestoreHint(logging.Filter):
    """Tune's own hint after an interruption names `Tuner.restore(...)`; ours names the `--resume` command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "interrupted, but the most recent state was saved" not in record.getMessage()


def new_tuner(config: SweepConfig, space: SearchSpace, trainable, experiment: Experiment, callbacks: list,
              scheduler, num_trials: int, max_concurrent: int):
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    reporter = tune.CLIReporter(
        parameter_columns=PARAMETERS, metric_columns=["step", METRIC, "train_loss", "tokens_per_s"],
        max_report_frequency=10, sort_by_metric=True, max_progress_rows=30, print_intermediate_tables=True)
    return tune.Tuner(
        trainable,
        param_space=tune_param_space(space),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=num_trials, max_concurrent_trials=max_concurrent,
            search_alg=OptunaSearch(sampler=optuna_sampler(space, config.seed)), scheduler=scheduler,
            reuse_actors=True),  # a worker imports torch and transformers once, not once per trial
        run_config=tune.RunConfig(
            name=experiment.name, storage_path=experiment.storage, callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            progress_reporter=reporter, verbose=1),
    )


def run_sweep(config: SweepConfig, space: SearchSpace, settings: TrialSettings, data: SweepData,
              publishing: PublishSetup, opponent=None, trial_function=lora_trainable,
              experiment: Experiment | None = None, command: list[str] | None = None) -> SweepOutcome:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from publishing.head_to_head import WinGate, head_to_head, remote_pair_losses
    from orchestrator.plots import write_plots
    from orchestrator.tracking import log_sweep_summary, wandb_callback
    from publishing.coordinator_actor import start_coordinator
    from publishing.tune_callback import PublishCallback

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # CLIReporter's live table of trials
    logging.getLogger("ray.tune.tune").addFilter(_NoTunerRestoreHint())
    started = time.perf_counter()
    experiment = experiment or choose_experiment(config)
    cluster = ray.cluster_resources()
    resources = trial_resources(config.device, config.cpus_per_trial, cluster.get("GPU", 0))
    if config.device.startswith("cuda") and "gpu" not in resources:
        raise ConfigError(f"--device {config.device} but Ray sees no GPU; use --device cpu or auto")
    slots = concurrent_slots(resources, cluster)
    if "gpu" not in resources and config.cpus_per_trial > cluster.get("CPU", 0):
        raise ConfigError(f"--cpus_per_trial {config.cpus_per_trial} is more than the cluster's "
                          f"{int(cluster.get('CPU', 0))} CPUs")
    check_shared_storage(config.storage_path)
    max_concurrent = config.max_concurrent_trials or slots
    num_trials = space.trials(config.num_samples)
    max_reports = planned_reports(settings, len(data.train))

    their_losses = None
    if opponent is not None:
        their_losses = remote_pair_losses(opponent.model_dir, settings, data.eval, _remote_options(resources))
        if config.require_win:
            gate = WinGate(opponent, their_losses, settings, data.eval, _remote_options(resources))
            publishing = dataclasses.replace(publishing, gate=gate)

    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=max_reports,
                               grace_period=min(config.grace_period, max_reports),
                               reduction_factor=config.reduction_factor)
                 if config.scheduler == "asha" else FIFOScheduler())
    trainable = tune.with_resources(tune.with_parameters(trial_function, settings=settings, data=data), resources)
    experiment_dir = Path(experiment.path)
    write_marker(experiment, RUNNING, command)
    coordinator = start_coordinator(publishing, settings.model_dir, str(experiment_dir), experiment.name)
    callbacks = [PublishCallback(experiment.name)]
    if config.wandb_project:
        experiment_dir.mkdir(parents=True, exist_ok=True)
        callbacks.append(wandb_callback(config.wandb_entity, config.wandb_project, experiment.name, config.env_file,
                                        str(experiment_dir)))
    if experiment.resume:
        # Tune restores the trials, their checkpoints and the searcher's state; finished trials stay finished.
        print(f"resuming {experiment_dir}")
        tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = new_tuner(config, space, trainable, experiment, callbacks, scheduler, num_trials, max_concurrent)
    try:
        results = tuner.fit()
        records = records_from_results(results, max_reports)
        trials_csv = str(write_trials_csv(records, experiment_dir))
        interrupted = len(records) < num_trials or count(records, TrialStatus.INTERRUPTED) > 0
        if interrupted:
            # Nothing half-trained is merged or published: the coordinator goes without its end-of-sweep publish.
            write_marker(experiment, INTERRUPTED)
            return SweepOutcome(
                experiment_path=str(experiment_dir), experiment_name=experiment.name, trials=records,
                interrupted=True, best_trial=None, best_hyperparameters={}, best_eval_loss=math.nan, best_step=0,
                base_eval_loss=_base_eval_loss(results), best_model_dir=None,
                wall_s=time.perf_counter() - started, plots=[], comparison=None,
                publish={"lines": [], "published": None, "publish_json": None, "not_before": None,
                         "best_model_dir": None, "offline": publishing.target.repo_id is None},
                trials_csv=trials_csv)
        if count(records, TrialStatus.FAILED) == len(records):
            raise RuntimeError(f"all {len(records)} trials failed; the first error: {records[0].reason}")
        # The coordinator saw every checkpoint: it publishes (or, offline, packages) the best and merges it.
        report = ray.get(coordinator.finish.remote(config.wait_for_publish))
    finally:
        ray.kill(coordinator)  # its state is on disk; the name is free for the next sweep in this Ray session
    write_marker(experiment, FINISHED)

    best = _merged_trial(report, records)
    outcome = SweepOutcome(
        experiment_path=str(experiment_dir), experiment_name=experiment.name, trials=records, interrupted=False,
        best_trial=best, best_hyperparameters=report.get("best_hyperparameters") or {},
        best_eval_loss=report.get("best_eval_loss", math.nan), best_step=report.get("best_step", 0),
        base_eval_loss=_base_eval_loss(results), best_model_dir=report["best_model_dir"],
        wall_s=time.perf_counter() - started, plots=[str(p) for p in write_plots(results.experiment_path)],
        publish=report, trials_csv=trials_csv, comparison=None if opponent is None or not report["best_model_dir"]
        else head_to_head(opponent, their_losses, report["best_model_dir"], settings, data.eval,
                          _remote_options(resources), results.experiment_path))
    if config.wandb_project:
        log_sweep_summary(config.wandb_entity, config.wandb_project, experiment.name, config.env_file,
                          str(experiment_dir), summary_record(outcome))
    return outcome


def _base_eval_loss(results) -> float:
    # every trial reports the untrained model's loss, measured by its worker (the driver never holds a model)
    return next((r.metrics["base_eval_loss"] for r in results if "base_eval_loss" in (r.metrics or {})), math.nan)


def _merged_trial(report: dict, records: list[TrialRecord]) -> TrialRecord | None:
    """The trial whose checkpoint the coordinator merged into best_model/."""
    return next((r for r in records if r.trial_id == report.get("best_trial")), None)


def summary_record(outcome: SweepOutcome) -> dict:
    """The outcome as plain values, for W&B's summary run (nothing secret is in it)."""
    published = outcome.publish.get("published")
    return {"best_hyperparameters": outcome.best_hyperparameters, "best_eval_loss": outcome.best_eval_loss,
            "base_eval_loss": outcome.base_eval_loss, "best_step": outcome.best_step,
            "best_trial": outcome.best_trial.trial_id if outcome.best_trial else None,
            "num_trials": outcome.num_trials, "stopped_early": outcome.stopped_early, "errored": outcome.errored,
            "best_model_dir": outcome.best_model_dir, "published_model_id": published["model_id"] if published else None,
            "wall_s": outcome.wall_s, **({"comparison": outcome.comparison.record()} if outcome.comparison else {})}
