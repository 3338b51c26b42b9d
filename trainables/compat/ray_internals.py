"""The fence around Ray's private parts (checked on ray 2.60.0): every private name of Ray the product uses is here.

Cheap to import (trials import it): Ray is imported inside each function. The classes that subclass Ray's own
(`OptunaSearchBase`, `WandbLoggingActor`, `WandbCallbackBase`) are built on first use (this module's `__getattr__`),
under their own names here, so pickle and Ray find them by reference.

What is gone, and what then happens:
- `draining_nodes`                   feature off, one line: trials no longer move off a draining node at a checkpoint
- `keep_out_of_trial_runtime_envs`   loud (MissingInternal) where a credential is in the environment; else one line
- `ray_train_session_dir`            loud (MissingInternal); its one caller prints one line and carries on
- `ray_logger`, `storage_sync_loggers`   feature off, one line: what the driver's log filter condensed prints whole
- `set_searcher_objective`           loud (MissingInternal)
- `function_trainable_name`          feature off, one line: trial actors keep Tune's names
- `OptunaSearchBase`                 loud (MissingInternal) when the searcher is made
- `WandbLoggingActor`, `WandbCallbackBase`   loud (MissingInternal) when the callback is made (W&B only)
"""

import importlib
import logging
import os
from collections.abc import Collection

from trainables.compat import gone, missing, turned_off

RAY = "ray"
CHECKED = "2.60.0"


def draining_nodes() -> dict[str, int] | None:
    """The nodes being drained: {node id hex: the drain's deadline in ms since the epoch, 0 for none}, or None where
    it cannot be known.

    Relies on `ray._private.state.state.get_draining_nodes()` (Ray 2.60: the GCS's DrainNode state, the call Ray Data
    and Serve make to avoid draining nodes; Ray has no public API for it). A call that fails (Ray not connected, a busy
    GCS) is None, silently: the next checkpointed report asks again. Where the internal is gone: None, and one line,
    once per process, says preemption moves are off (trials still restart after a preemption through Tune's own
    handling, from their last checkpoint, without counting a failure).
    """
    def off() -> None:
        turned_off(gone(RAY, "ray._private.state.state.get_draining_nodes", CHECKED,
                        "preemption moves are off: a trial on a draining node stays there until the node goes, and "
                        "Tune restarts it from its last checkpoint"))

    try:
        from ray._private.state import state

        get = state.get_draining_nodes
    except (ImportError, AttributeError):
        off()
        return None
    try:
        return dict(get())
    except AttributeError:  # the call is there, but what it calls in Ray's GCS client is not
        off()
        return None
    except Exception:  # noqa: BLE001: not connected, or the GCS did not answer: no news, never a failed trial
        return None


def keep_out_of_trial_runtime_envs(names: Collection[str]) -> None:
    """Stop Ray Tune from copying the environment variables `names` (cloud credentials) from the driver's environment
    into every trial actor's runtime environment, which each node's runtime_env_agent.log and the dashboard show.

    Relies on `ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE` (Ray 2.60: a set of names, AWS's credentials
    among them, that `_ActorClassCache.get` copies from os.environ into the trial actors' runtime_env when Tune
    registers the trainable): it is replaced by the same set less `names`.

    Security-relevant, so never passes silently. Where the internal is gone (the module, the set, or the cache no
    longer reading it) this Ray propagates variables some other way we cannot see into: MissingInternal (loud) when
    any of `names` is set in this environment, as it would then reach the runtime envs; when none is set, nothing can
    be copied (Ray copies only what the driver's environment holds), so it is safe: one line says so, once.
    """
    names = frozenset(names)
    try:
        from ray.tune.execution import class_cache

        current = class_cache.ENV_VARS_TO_PROPAGATE
        reads = class_cache._ActorClassCache.get.__code__.co_names
    except (ImportError, AttributeError):
        current, reads = None, ()
    if (isinstance(current, (set, frozenset)) and all(isinstance(n, str) for n in current)
            and "ENV_VARS_TO_PROPAGATE" in reads):
        class_cache.ENV_VARS_TO_PROPAGATE = frozenset(current) - names
        return
    internal = "ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE (read by _ActorClassCache.get)"
    present = sorted(n for n in names if n in os.environ)
    if present:
        raise missing(RAY, internal, CHECKED,
                      f"cannot keep {', '.join(present)} out of the trials' runtime environments (the Ray dashboard "
                      f"shows them); unset them here (nodes read ~/.aws or their role) or install ray {CHECKED}")
    turned_off(gone(RAY, internal, CHECKED, f"nothing keeps {', '.join(sorted(names))} out of the trials' runtime "
                                            "environments, and none is set in this driver's environment"))


def ray_train_session_dir() -> str:
    """Where Ray Train and Tune stage files on this node in this Ray session: `<Ray session>/artifacts` (Ray Tune stages
    each experiment's state and trial logs under `<that>/<time>/<experiment>/driver_artifacts` before uploading them).

    Relies on `ray.train.constants._get_ray_train_session_dir` (Ray 2.60). Where it is gone: MissingInternal (the
    one caller, orchestrator.storage_failure, prints one line: what Tune's last upload cut short stays so).
    """
    try:
        from ray.train.constants import _get_ray_train_session_dir
    except ImportError:
        raise missing(RAY, "ray.train.constants._get_ray_train_session_dir", CHECKED,
                      "Tune's staging folder cannot be found") from None
    return _get_ray_train_session_dir()


def ray_logger(module: str, lost: str) -> logging.Logger | None:
    """The logger of Ray's module `module` (its `logging.getLogger(__name__)`), to filter what it logs; None where
    this Ray has no such module or the module no longer logs under its own name, and then one line, once per
    process, says what is lost (`lost`: e.g. "failed trial attempts print whole tracebacks again").

    Relies on Ray's module layout (Ray 2.60: `ray.tune.tune`, `ray.tune.execution.tune_controller`,
    `ray.tune.execution.experiment_state`, `ray.train._internal.syncer` each log through `logger` of their own
    name): module paths and log records are not Ray's API. Imports the module (Tune imports them anyway).
    """
    try:
        log = getattr(importlib.import_module(module), "logger", None)
    except ImportError:
        log = None
    if isinstance(log, logging.Logger) and log.name == module:
        return log
    turned_off(gone(RAY, f"module {module} logging as itself", CHECKED, lost))
    return None


# The modules whose loggers report a failed upload of Tune's state to storage (Ray 2.60)
STORAGE_SYNC_MODULES = ("ray.train._internal.syncer", "ray.tune.execution.experiment_state")


def storage_sync_loggers() -> list[logging.Logger]:
    """The loggers through which Ray Tune reports a failed upload of its state to storage (STORAGE_SYNC_MODULES',
    through `ray_logger`: one that is gone is left out, with one line saying its failures print whole tracebacks)."""
    found = (ray_logger(module, "Tune's failed uploads of its state to storage print whole tracebacks again, not "
                                "one line") for module in STORAGE_SYNC_MODULES)
    return [log for log in found if log is not None]


def set_searcher_objective(searcher, metric: str | None, mode: str | None) -> None:
    """Set a Tune `Searcher`'s metric and mode, as a searcher that wraps another does (Tune's ConcurrencyLimiter too).

    Relies on `Searcher._metric` and `Searcher._mode` (Ray 2.60: what its read-only `metric` and `mode` return; no
    setter). Where that no longer holds: MissingInternal (loud): a searcher reporting the wrong objective would rank
    trials wrongly."""
    searcher._metric, searcher._mode = metric, mode
    if searcher.metric != metric or searcher.mode != mode:
        raise missing(RAY, "ray.tune.search.Searcher._metric/_mode behind its metric and mode", CHECKED,
                      "a wrapping searcher cannot set its objective")


def function_trainable_name(trainable_class: type) -> str | None:
    """The name Tune registers a function trainable by (a --resume finds the experiment's trainable by it).

    Relies on the `_name` that `ray.tune.trainable.function_trainable.wrap_function` gives the class it makes, which
    Tune's `Experiment.get_trainable_name` reads before `__name__` (Ray 2.60). Where it is gone: None, and one line,
    once, says trial actors are not named by trial (the caller keeps Tune's class as it is)."""
    name = vars(trainable_class).get("_name")
    if isinstance(name, str):
        return name
    turned_off(gone(RAY, "ray.tune.trainable.function_trainable.wrap_function's class attribute _name", CHECKED,
                    "trial actors keep Tune's names, not `trial <id> <hyperparameters>`"))
    return None


# --- classes over Ray's, built on first use -------------------------------------------------------------------


def _optuna_search_problem(optuna_search: type) -> str | None:
    """The private part of OptunaSearch (Ray 2.60) that OptunaSearchBase relies on and this Ray lacks, or None."""
    if not callable(getattr(optuna_search, "_setup_study", None)):
        return "OptunaSearch._setup_study"
    if "_setup_study" not in optuna_search.set_search_properties.__code__.co_names:
        return "OptunaSearch.set_search_properties calling _setup_study"
    if "_ot_trials" not in optuna_search.suggest.__code__.co_names:
        return "OptunaSearch.suggest keeping its Optuna trials in _ot_trials"
    return None


def _optuna_search_base() -> type:
    from ray.tune.search.optuna import OptunaSearch

    class OptunaSearchBase(OptunaSearch):
        """Ray Tune's OptunaSearch with its private state under public names (Ray 2.60):

        - `study`: the Optuna study (`_ot_study`), None until the search space is known;
        - `optuna_trials`: Tune trial id -> the Optuna trial asked for it (`_ot_trials`);
        - `ended_trials`: the Tune trial ids already told to the study (`_completed_trials`);
        - `study_ready()`: a hook, called each time OptunaSearch creates or loads its study (`_setup_study`).

        Where any of it is gone: MissingInternal (loud) when a searcher is made, before any trial: a searcher that
        reads a stale trial table would tell Optuna wrong outcomes.
        """

        def __init__(self, *args, **kwargs):
            if problem := _optuna_search_problem(OptunaSearch):
                raise missing(RAY, f"ray.tune.search.optuna.{problem}", CHECKED,
                              f"the sweep's searcher cannot tell Optuna how trials ended; install ray {CHECKED}")
            super().__init__(*args, **kwargs)
            state = vars(self)
            if not (isinstance(state.get("_ot_trials"), dict) and isinstance(state.get("_completed_trials"), set)
                    and "_ot_study" in state):
                raise missing(RAY, "ray.tune.search.optuna.OptunaSearch's _ot_trials, _completed_trials, _ot_study",
                              CHECKED, f"the sweep's searcher cannot tell Optuna how trials ended; install ray "
                                       f"{CHECKED}")

        def _setup_study(self, mode):
            super()._setup_study(mode)
            self.study_ready()

        def study_ready(self) -> None:
            """Called each time the study is created or loaded (whenever the search space becomes known)."""

        @property
        def study(self):
            return self._ot_study

        @property
        def optuna_trials(self) -> dict:
            return self._ot_trials

        @property
        def ended_trials(self) -> set:
            return self._completed_trials

    return OptunaSearchBase


_WANDB_GONE = "W&B logging would put WANDB_API_KEY into the logging actors' runtime env, which the Ray dashboard shows"


def _wandb_logging_actor() -> type:
    """Ray's `ray.air.integrations.wandb._WandbLoggingActor` (Ray 2.60): the actor class that holds a trial's W&B
    run. Where it is gone: a stand-in whose construction raises MissingInternal (and WandbCallbackBase refuses to be
    made), so importing this never fails: only using W&B does, loudly."""
    try:
        from ray.air.integrations.wandb import _WandbLoggingActor

        return _WandbLoggingActor
    except ImportError:
        class WandbLoggingActor:
            def __init__(self, *args, **kwargs):
                raise missing(RAY, "ray.air.integrations.wandb._WandbLoggingActor", CHECKED, _WANDB_GONE)

        return WandbLoggingActor


def _wandb_callback_problem(callback: type) -> str | None:
    """The private part of Ray's W&B integration (Ray 2.60) that WandbCallbackBase relies on and this Ray lacks."""
    try:
        from ray.air.integrations.wandb import _WandbLoggingActor  # noqa: F401
    except ImportError:
        return "ray.air.integrations.wandb._WandbLoggingActor"
    if not hasattr(callback, "_logger_actor_cls") or not callable(getattr(callback, "_start_logging_actor", None)):
        return "WandbLoggerCallback._logger_actor_cls and _start_logging_actor"
    if "_start_logging_actor" not in callback.log_trial_start.__code__.co_names:
        return "WandbLoggerCallback.log_trial_start calling _start_logging_actor"
    if "_logger_actor_cls" not in callback._start_logging_actor.__code__.co_names:
        return "WandbLoggerCallback._start_logging_actor starting _logger_actor_cls"
    return None


def _wandb_callback_base() -> type:
    from ray.air.integrations.wandb import WandbLoggerCallback

    class WandbCallbackBase(WandbLoggerCallback):
        """Ray Tune's WandbLoggerCallback with public names over its private parts (Ray 2.60):

        - `logging_actor_class` (set it in a subclass): the actor class each trial's W&B run lives in, a subclass of
          `WandbLoggingActor` (Ray's `_logger_actor_cls`); it gets the keyword arguments `start_logging_actor` passes;
        - `start_logging_actor(trial, exclude_results, **wandb_init_kwargs)`: where Ray starts a trial's logging actor
          (`_start_logging_actor`); the first one makes the actors' runtime_env, copying WANDB_API_KEY from os.environ
          if it is there. Override it and call `super().start_logging_actor(...)`.

        Security-relevant: where any of it is gone, MissingInternal (loud) when the callback is made: a subclass that
        keeps the key out of the runtime env would silently stop doing so.
        """

        logging_actor_class: type | None = None

        def __init_subclass__(cls, **kwargs):
            super().__init_subclass__(**kwargs)
            if vars(cls).get("logging_actor_class") is not None:
                cls._logger_actor_cls = cls.logging_actor_class

        def __new__(cls, *args, **kwargs):  # refused before there is a half-made callback for Ray's __del__
            if problem := _wandb_callback_problem(WandbLoggerCallback):
                raise missing(RAY, problem if problem.startswith("ray.") else f"ray.air.integrations.wandb.{problem}",
                              CHECKED, f"{_WANDB_GONE}; install ray {CHECKED} or run without W&B")
            return super().__new__(cls)

        def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
            self.start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

        def start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
            WandbLoggerCallback._start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs)

    return WandbCallbackBase


_BUILT = {"OptunaSearchBase": _optuna_search_base, "WandbLoggingActor": _wandb_logging_actor,
          "WandbCallbackBase": _wandb_callback_base}


def __getattr__(name: str):
    """`OptunaSearchBase`, `WandbLoggingActor`, `WandbCallbackBase`: built (importing Ray's integration) on first use,
    then kept here under that name, so pickle and cloudpickle find the class by reference."""
    if name not in _BUILT:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    built = _BUILT[name]()
    if built.__module__ == __name__:
        built.__qualname__ = built.__name__ = name
    globals()[name] = built
    return built
