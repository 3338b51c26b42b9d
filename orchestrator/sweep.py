"""The Ray edge: start or join Ray, run the Tuner, and bring back what the summary needs.

The decisions (how many trials run at once, what each asks of the cluster) are pure
functions; `run_sweep` only wires Ray Tune's own parts together: OptunaSearch for the
suggestions, ASHA for early stopping, checkpoints kept by eval loss, and CLIReporter's table.
"""

import dataclasses
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import ConfigError, SweepConfig
from orchestrator.search_space import SearchSpace, optuna_sampler, tune_param_space
from publishing.setup import PublishSetup
from trainables.data import SweepData
from trainables.lora_trial import TrialSettings, lora_trainable, planned_reports

METRIC, MODE = "eval_loss", "min"
PARAMETERS = ["learning_rate", "r", "alpha"]
# Quiet libraries keep the live table readable. (Trials load only local folders, with local_files_only;
# the Hub stays reachable for the coordinator, which publishes.)
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning"}


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


def start_ray(config: SweepConfig) -> None:
    import ray

    if ray.is_initialized():  # embedded use (tests, notebooks): the caller's Ray is the cluster
        return
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


def _import_tune() -> None:
    import ray.tune.schedulers  # noqa: F401
    import ray.tune.search.optuna  # noqa: F401


@dataclass(frozen=True)
class SweepOutcome:
    experiment_path: str
    num_trials: int
    finished: int             # ran every planned step
    stopped_early: int        # stopped by ASHA
    errored: int
    best_hyperparameters: dict
    best_eval_loss: float
    best_step: int
    base_eval_loss: float
    best_model_dir: str
    wall_s: float
    plots: list               # PNG files in the experiment folder
    comparison: object        # publishing.head_to_head.Comparison with --comparison_uid, else None
    publish: dict             # the coordinator's report: outcome lines, what was published, publish.json


def _remote_options(resources: dict) -> dict:
    return {"num_cpus": resources.get("cpu", 1), "num_gpus": resources.get("gpu", 0)}


def experiment_name(config: SweepConfig, storage: Path) -> str:
    """The experiment's folder name; resuming without a name picks the newest experiment in storage."""
    if config.experiment_name:
        return config.experiment_name
    if config.resume:
        from ray import tune

        previous = sorted((p for p in storage.glob("lora-sweep-*") if tune.Tuner.can_restore(str(p))),
                          key=lambda p: p.stat().st_mtime)
        if not previous:
            raise ConfigError(f"--resume found no experiment in {storage}; pass --experiment_name and --storage_path")
        return previous[-1].name
    return time.strftime("lora-sweep-%Y%m%d-%H%M%S")


def new_tuner(config: SweepConfig, space: SearchSpace, trainable, name: str, storage: Path, callbacks: list,
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
            name=name, storage_path=str(storage), callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            progress_reporter=reporter, verbose=1),
    )


def run_sweep(config: SweepConfig, space: SearchSpace, settings: TrialSettings, data: SweepData,
              publishing: PublishSetup, opponent=None, trial_function=lora_trainable) -> SweepOutcome:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from orchestrator.head_to_head import WinGate, head_to_head, remote_pair_losses
    from orchestrator.plots import write_plots
    from orchestrator.tracking import log_sweep_summary, wandb_callback
    from publishing.actor import PublishCallback, start_coordinator

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # CLIReporter's live table of trials
    started = time.perf_counter()
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
    storage = Path(config.storage_path).expanduser()
    name = experiment_name(config, storage)
    experiment_dir = storage / name
    coordinator = start_coordinator(publishing, settings.model_dir, str(experiment_dir), name)
    callbacks = [PublishCallback(name)]
    if config.wandb_project:
        experiment_dir.mkdir(parents=True, exist_ok=True)
        callbacks.append(wandb_callback(config.wandb_entity, config.wandb_project, name, config.env_file,
                                        str(experiment_dir)))
    if config.resume:
        # Tune restores the trials, their checkpoints and the searcher's state; finished trials stay finished.
        print(f"resuming {experiment_dir}")
        tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = new_tuner(config, space, trainable, name, storage, callbacks, scheduler, num_trials, max_concurrent)
    try:
        results = tuner.fit()
        errored = sum(1 for r in results if r.error is not None)
        if errored == len(results):
            raise RuntimeError(f"all {errored} trials failed; the first error: {results[0].error}")
        best = results.get_best_result(metric=METRIC, mode=MODE, scope="all")
        best_metrics = min((metrics for _, metrics in best.best_checkpoints), key=lambda m: m[METRIC])
        # The coordinator saw every checkpoint: it publishes (or, offline, packages) the best and merges it.
        report = ray.get(coordinator.finish.remote(config.wait_for_publish))
    finally:
        ray.kill(coordinator)  # its state is on disk; the name is free for the next sweep in this Ray session

    done = [r for r in results if r.error is None]
    # every trial reports the untrained model's loss, measured by its worker (the driver never holds a model)
    base_loss = next((r.metrics["base_eval_loss"] for r in results if "base_eval_loss" in (r.metrics or {})), math.nan)
    finished = sum(1 for r in done if r.metrics.get("training_iteration", 0) >= max_reports)
    outcome = SweepOutcome(
        experiment_path=results.experiment_path, num_trials=len(results), finished=finished,
        stopped_early=len(done) - finished, errored=errored,
        best_hyperparameters={k: best.config[k] for k in PARAMETERS}, best_eval_loss=best_metrics[METRIC],
        best_step=best_metrics["step"], base_eval_loss=base_loss, best_model_dir=report["best_model_dir"],
        wall_s=time.perf_counter() - started, plots=[str(p) for p in write_plots(results.experiment_path)],
        publish=report, comparison=None if opponent is None else head_to_head(
            opponent, their_losses, report["best_model_dir"], settings, data.eval, _remote_options(resources),
            results.experiment_path))
    if config.wandb_project:
        log_sweep_summary(config.wandb_entity, config.wandb_project, name, config.env_file, str(experiment_dir),
                          summary_record(outcome))
    return outcome


def summary_record(outcome: SweepOutcome) -> dict:
    """The outcome as plain values, for W&B's summary run (nothing secret is in it)."""
    published = outcome.publish.get("published")
    return {"best_hyperparameters": outcome.best_hyperparameters, "best_eval_loss": outcome.best_eval_loss,
            "base_eval_loss": outcome.base_eval_loss, "best_step": outcome.best_step,
            "num_trials": outcome.num_trials, "stopped_early": outcome.stopped_early, "errored": outcome.errored,
            "best_model_dir": outcome.best_model_dir, "published_model_id": published["model_id"] if published else None,
            "wall_s": outcome.wall_s, **({"comparison": outcome.comparison.record()} if outcome.comparison else {})}
