"""W&B: every trial a run, grouped by sweep (Ray Tune's WandbLoggerCallback), plus one summary run.

Ray's callback copies WANDB_API_KEY into its logging actors' runtime_env, and the Ray dashboard
shows every actor's runtime_env. So the key never goes there: the logging actors (which Ray
places on this node) read it from the environment or the .env file themselves.
"""

import os

from publishing.subnet.secrets import read_env_file
from trainables.compat.ray_internals import WandbCallbackBase, WandbLoggingActor

WANDB_KEY = "WANDB_API_KEY"


class _DotenvWandbLoggingActor(WandbLoggingActor):
    def __init__(self, *args, env_file: str | None = None, **kwargs):
        if not os.environ.get(WANDB_KEY) and env_file:
            key = read_env_file(env_file).get(WANDB_KEY)
            if key:
                os.environ[WANDB_KEY] = key  # this process only, never a runtime_env
        super().__init__(*args, **kwargs)

    def run(self):
        try:
            super().run()
        finally:
            # Ray kills this actor as soon as run() returns, and W&B writes a run's records from a service process of
            # its own: wandb.finish() can return before they are on disk (under load a trial's offline run file was
            # left with its header only). teardown waits for the service to write everything and stop.
            self._wandb.teardown()


class SecretSafeWandbCallback(WandbCallbackBase):  # Tune's WandbLoggerCallback, its private hooks under public names
    logging_actor_class = _DotenvWandbLoggingActor

    def __init__(self, env_file: str, **kwargs):
        super().__init__(**kwargs)
        self.env_file = env_file

    def setup(self, *args, **kwargs):
        # The key is checked at the edge (wandb_key_available); Ray's setup would export it to os.environ.
        self.api_key_file, self.api_key = None, None

    def start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
        key = os.environ.pop(WANDB_KEY, None)  # Ray copies it into the actor's runtime_env if present
        try:
            super().start_logging_actor(trial, exclude_results, env_file=self.env_file, **wandb_init_kwargs)
        finally:
            if key is not None:
                os.environ[WANDB_KEY] = key


def wandb_mode() -> str | None:
    return os.environ.get("WANDB_MODE")


def wandb_key_available(env_file: str) -> bool:
    if wandb_mode() in ("offline", "disabled"):
        return True
    if os.environ.get(WANDB_KEY) or read_env_file(env_file).get(WANDB_KEY):
        return True
    try:
        import wandb

        return bool(wandb.Api().api_key)  # logged in with `wandb login`
    except Exception:
        return False


def wandb_callback(entity: str, project: str, group: str, env_file: str, run_dir: str) -> SecretSafeWandbCallback:
    extra = {"mode": wandb_mode()} if wandb_mode() else {}
    return SecretSafeWandbCallback(env_file=env_file, project=project, entity=entity, group=group, log_config=True,
                                   dir=run_dir, **extra)


def log_sweep_summary(entity: str, project: str, group: str, env_file: str, run_dir: str, summary: dict) -> None:
    """One run per sweep holding its outcome: the best hyperparameters, losses and where the model is."""
    import wandb

    key = os.environ.get(WANDB_KEY) or read_env_file(env_file).get(WANDB_KEY)
    settings = wandb.Settings(api_key=key) if key else None
    run = wandb.init(entity=entity, project=project, group=group, name=f"{group}-summary", job_type="sweep-summary",
                     config=summary.get("best_hyperparameters", {}), dir=run_dir, mode=wandb_mode(),
                     settings=settings, reinit="create_new")
    run.summary.update(summary)
    run.finish()
