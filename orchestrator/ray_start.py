"""Start or join Ray for the driver. Light to import: the driver imports it before anything of Ray's, and the
modules the sweep needs (Ray Tune, Optuna, the sweep's own) are imported in a thread while Ray starts, which is
mostly waiting for Ray's processes."""

import os
import threading

from orchestrator.stop_signal import stop_means_ctrl_c

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
# What the sweep imports once Ray is up: Ray Tune (half a second and more), Optuna, and the driver's own modules
# that import them
SWEEP_MODULES = ("ray.tune.schedulers", "ray.tune.search.optuna", "orchestrator.sweep", "orchestrator.fault_lines",
                 "orchestrator.storage_failure", "orchestrator.summary")


def start_ray(config) -> bool:
    """Start or join Ray (`config`: the SweepConfig); False when the caller's Ray is already up (tests, notebooks)
    and stays theirs."""
    import ray

    if ray.is_initialized():  # embedded use (tests, notebooks): the caller's Ray is the cluster
        return False
    if config.run.device.startswith("cuda:") and config.run.address is None:
        # Ray hands out the GPUs CUDA_VISIBLE_DEVICES shows; restricting it pins the sweep to one GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = config.run.device.split(":", 1)[1]
    # Checkpoints are kept by score, so Tune snapshots its state often; that is cheap here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    imports = threading.Thread(target=import_sweep_modules, daemon=True, name="import-sweep")
    imports.start()
    # Without --address, "local" starts a Ray here, rather than joining one `ray start` left on this machine.
    context = ray.init(address=config.run.address or "local",
                       include_dashboard=config.run.dashboard if config.run.address is None else None,
                       runtime_env={"env_vars": WORKER_ENV}, logging_level="WARNING", log_to_driver=True)
    imports.join()
    # ray.init set SIGTERM to end this process on the spot; `ray job stop` sends SIGTERM: make it Ctrl-C
    stop_means_ctrl_c()
    if context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}")
        # Ray 2.60 turns token authentication on for a new local Ray (ray.init sets RAY_AUTH_MODE=token here);
        # the dashboard then opens on a login page that wants the token, which nothing else tells the user about.
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            source = ("$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN")
                      else os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
            print(f"  it asks for a token: paste what `ray get-auth-token` prints (the token in {source})")
    return True


def import_sweep_modules() -> None:
    import importlib

    for name in SWEEP_MODULES:
        importlib.import_module(name)
