"""The fences around our libraries' private parts (trainables/compat/): each fenced use works on the installed library
(real calls), and where the internal is gone the product either fails loudly in one line or says in one line, once,
which feature it turned off. A library upgrade that moves an internal fails here first, not in a sweep."""

import logging
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import trainables.compat as compat
from trainables.compat import MissingInternal, bittensor_internals, liger_internals, optuna_internals, ray_internals
from trainables.compat import transformers_internals

ROOT = Path(__file__).resolve().parents[1]
CREDENTIALS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    """Each test sees a process that has printed no "turned off" line yet."""
    monkeypatch.setattr(compat, "_ANNOUNCED", set())


def one_line_once(capsys, *needles: str) -> str:
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "has no" in line]
    assert len(lines) == 1, out
    assert all(needle in lines[0] for needle in needles), lines[0]
    return lines[0]


def loud(error: pytest.ExceptionInfo, library: str, *needles: str) -> None:
    message = str(error.value)
    assert "\n" not in message and f"{library} " in message and "has no" in message and "checked on" in message
    assert all(needle in message for needle in needles), message


# --- the fences stay cheap, and nothing outside them touches a private name ------------------------------------------

def test_importing_the_fences_imports_none_of_their_libraries():
    probe = ("import sys\n"
             "from trainables.compat import (bittensor_internals, liger_internals, optuna_internals, ray_internals,\n"
             "                               transformers_internals)\n"
             "print(sorted(m for m in ('torch', 'transformers', 'optuna', 'ray', 'bittensor', 'wandb', 'liger_kernel')\n"
             "             if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# What a private use of these libraries looks like in source: a private module or attribute of theirs
PRIVATE = re.compile(r"\b(?:ray|optuna|transformers|torch|bittensor|wandb|liger_kernel)\.[\w.]*\b_[a-z]\w*"
                     r"|\b(?:class_cache|ENV_VARS_TO_PROPAGATE|_ot_trials|_ot_study|_completed_trials|_setup_study"
                     r"|_WandbLoggingActor|_start_logging_actor|_logger_actor_cls|_contains|_attn_implementation"
                     r"|_get_ray_train_session_dir|_set_search_properties_backwards_compatible|_apply_liger\w*"
                     r"|_python_dispatch|_generated)\b|\bbase\._name\b")


def test_no_product_module_touches_a_private_name_outside_its_fence():
    """Code only: a comment may name what a fence stands for."""
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for package in ("orchestrator", "publishing", "trainables")
             for path in sorted((ROOT / package).rglob("*.py")) if "compat" not in path.relative_to(ROOT).parts
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if PRIVATE.search(line.split("#", 1)[0])]
    assert not found, "private names outside trainables/compat/:\n" + "\n".join(found)


# --- Ray -------------------------------------------------------------------------------------------------------------

def test_draining_nodes_asks_the_local_rays_gcs(local_ray):
    from trainables.preemption import drain_deadline

    assert ray_internals.draining_nodes() == {}  # nothing drains this session's one node
    assert drain_deadline(local_ray.get_runtime_context().get_node_id()) is None


def test_without_get_draining_nodes_preemption_moves_are_off_in_one_line(monkeypatch, capsys):
    from ray._private.state import state

    from trainables.preemption import drain_deadline

    monkeypatch.delattr(type(state), "get_draining_nodes")
    assert ray_internals.draining_nodes() is None
    assert drain_deadline("ab" * 28) is None
    one_line_once(capsys, "ray 2.", "ray._private.state.state.get_draining_nodes", "preemption moves are off")


def _trial_runtime_env(monkeypatch) -> dict:
    """The env_vars Tune puts into a trial actor's runtime_env (ray.remote is only watched, nothing starts)."""
    from ray.tune.execution import class_cache

    seen = {}

    def remote(**options):
        seen.update(options)
        return lambda cls: cls

    monkeypatch.setattr(class_cache.ray, "remote", remote)
    class_cache._ActorClassCache().get(type("Trial", (), {}))
    return seen["runtime_env"]["env_vars"]


def test_credentials_stay_out_of_the_trials_runtime_envs(monkeypatch):
    from ray.tune.execution import class_cache

    # as Ray 2.60 ships it (a sweep earlier in this process has already taken the credentials out); put back after
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", frozenset(class_cache.ENV_VARS_TO_PROPAGATE) | CREDENTIALS)
    assert isinstance(class_cache.ENV_VARS_TO_PROPAGATE, (set, frozenset))
    assert all(isinstance(name, str) for name in class_cache.ENV_VARS_TO_PROPAGATE)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-for-the-test")
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR_PROPAGATED", "x")  # not a credential: unknown names are not copied
    monkeypatch.setenv("RAY_CHDIR_TO_TRIAL_DIR", "0")
    assert _trial_runtime_env(monkeypatch)["AWS_SECRET_ACCESS_KEY"] == "secret-for-the-test"  # what Ray 2.60 does

    ray_internals.keep_out_of_trial_runtime_envs(CREDENTIALS)
    env = _trial_runtime_env(monkeypatch)
    assert not CREDENTIALS & set(env) and env["RAY_CHDIR_TO_TRIAL_DIR"] == "0"  # the rest is still copied


def test_without_tunes_list_a_credential_here_fails_loudly_and_none_here_is_one_line(monkeypatch, capsys):
    from ray.tune.execution import class_cache

    monkeypatch.delattr(class_cache, "ENV_VARS_TO_PROPAGATE")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    with pytest.raises(MissingInternal) as error:
        ray_internals.keep_out_of_trial_runtime_envs(CREDENTIALS)
    loud(error, "ray", "ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE", "AWS_SESSION_TOKEN", "unset them")
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    ray_internals.keep_out_of_trial_runtime_envs(CREDENTIALS)
    ray_internals.keep_out_of_trial_runtime_envs(CREDENTIALS)
    one_line_once(capsys, "ENV_VARS_TO_PROPAGATE", "none is set")


def test_a_tune_that_no_longer_reads_its_list_is_gone_too(monkeypatch):
    from ray.tune.execution import class_cache

    monkeypatch.setattr(class_cache._ActorClassCache, "get", lambda self, cls: cls)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    with pytest.raises(MissingInternal, match="read by _ActorClassCache.get"):
        ray_internals.keep_out_of_trial_runtime_envs(CREDENTIALS)


def test_tunes_staging_folder_is_under_the_ray_sessions_artifacts(local_ray, monkeypatch):
    import ray.train.constants

    from orchestrator.storage_failure import tune_staging_dir

    where = Path(ray_internals.ray_train_session_dir())
    assert where.name == "artifacts" and "session_" in str(where)
    assert tune_staging_dir("no-such-experiment") is None
    monkeypatch.delattr(ray.train.constants, "_get_ray_train_session_dir")
    with pytest.raises(MissingInternal) as error:
        tune_staging_dir("no-such-experiment")
    loud(error, "ray", "ray.train.constants._get_ray_train_session_dir")


# The Ray modules whose log records the driver rewrites, and the text each filter looks for
FILTERED = {"ray.train._internal.syncer": "Last sync command failed",
            "ray.tune.execution.experiment_state": "Saving experiment state to storage",
            "ray.tune.execution.tune_controller": "Trial task failed for trial",
            "ray.tune.tune": "interrupted, but the most recent state was saved"}


@pytest.mark.parametrize("module", FILTERED)
def test_the_loggers_the_driver_filters_are_there_and_log_what_it_looks_for(module):
    import importlib
    import inspect

    log = ray_internals.ray_logger(module, "lost")
    assert isinstance(log, logging.Logger) and log.name == module
    assert FILTERED[module] in inspect.getsource(importlib.import_module(module))


def test_storage_sync_loggers_are_both_found():
    assert [log.name for log in ray_internals.storage_sync_loggers()] == list(ray_internals.STORAGE_SYNC_MODULES)


def test_a_logger_that_is_gone_is_one_line_saying_what_prints_whole_again(monkeypatch, capsys):
    import ray.tune.execution.experiment_state as experiment_state

    assert ray_internals.ray_logger("ray.tune.no_such_module", "tracebacks print whole") is None
    one_line_once(capsys, "ray.tune.no_such_module", "tracebacks print whole")
    monkeypatch.setattr(experiment_state, "logger", logging.getLogger("ray.tune.elsewhere"))
    assert [log.name for log in ray_internals.storage_sync_loggers()] == ["ray.train._internal.syncer"]
    one_line_once(capsys, "ray.tune.execution.experiment_state", "print whole tracebacks again")


def test_a_wrapping_searcher_sets_its_objective_or_fails_loudly():
    from ray.tune.search import Searcher

    searcher = Searcher(metric="rank_loss", mode="min")
    ray_internals.set_searcher_objective(searcher, "eval_loss", "max")
    assert (searcher.metric, searcher.mode) == ("eval_loss", "max")

    class Elsewhere(Searcher):
        metric = property(lambda self: "kept somewhere else")

    with pytest.raises(MissingInternal) as error:
        ray_internals.set_searcher_objective(Elsewhere(), "eval_loss", "min")
    loud(error, "ray", "Searcher._metric")


def a_trial(config):
    pass


def test_trial_actors_are_named_and_keep_the_functions_name(monkeypatch, capsys):
    import ray.tune.trainable.function_trainable as function_trainable

    from trainables.trial_telemetry import named_trials

    assert ray_internals.function_trainable_name(function_trainable.wrap_function(a_trial)) == "a_trial"
    named = named_trials(a_trial)
    assert named.__name__ == "a_trial" and "__repr__" in vars(named)  # the actor's repr names the trial

    wrap = function_trainable.wrap_function

    def without_name(train_func):
        cls = wrap(train_func)
        del cls._name
        return cls

    monkeypatch.setattr(function_trainable, "wrap_function", without_name)
    assert named_trials(a_trial).__name__ == "ImplicitFunc"  # Tune's class, as it is
    one_line_once(capsys, "wrap_function", "_name", "trial actors keep Tune's names")


def optuna_space():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    return {"learning_rate": FloatDistribution(1e-5, 1e-3, log=True), "r": CategoricalDistribution([8, 16])}


def test_optuna_search_base_names_tunes_private_state():
    import optuna
    from ray import tune

    from orchestrator.optuna_searcher import RAY_TRIAL_ID, TruthfulOptunaSearch

    searcher = TruthfulOptunaSearch(space=optuna_space(), metric="eval_loss", mode="min", seed=0)
    assert isinstance(searcher.study, optuna.Study) and searcher.study.metric_names == ["eval_loss"]  # study_ready ran
    config = searcher.suggest("t1")
    assert set(config) == {"learning_rate", "r"}
    assert searcher.optuna_trials["t1"].user_attrs[RAY_TRIAL_ID] == "t1"
    searcher.on_trial_complete("t1", {"eval_loss": 0.5, "training_iteration": 1, "step": 4})
    assert "t1" in searcher.ended_trials
    [trial] = searcher.study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.5

    later = TruthfulOptunaSearch(seed=0)  # the space comes with set_search_properties: the study is made then
    assert later.study is None
    assert later.set_search_properties("eval_loss", "min", {"r": tune.choice([8])})
    assert later.study.metric_names == ["eval_loss"]


def test_an_optuna_search_without_its_private_state_fails_loudly(monkeypatch):
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.optuna_searcher import TruthfulOptunaSearch

    init = OptunaSearch.__init__

    def forgets(self, *args, **kwargs):
        init(self, *args, **kwargs)
        del self._completed_trials

    monkeypatch.setattr(OptunaSearch, "__init__", forgets)
    with pytest.raises(MissingInternal) as error:
        TruthfulOptunaSearch(space=optuna_space(), metric="eval_loss", mode="min")
    loud(error, "ray", "_completed_trials")
    monkeypatch.setattr(OptunaSearch, "__init__", init)
    monkeypatch.delattr(OptunaSearch, "_setup_study")
    with pytest.raises(MissingInternal) as error:
        TruthfulOptunaSearch(space=optuna_space(), metric="eval_loss", mode="min")
    loud(error, "ray", "OptunaSearch._setup_study")


class _Trial:
    """What WandbLoggerCallback.log_trial_start reads of a trial."""
    trial_id, experiment_dir_name, local_path, config = "t1", "sweep", "/tmp", {"r": 8}


def _logging_actor_env(monkeypatch, callback) -> dict:
    """The env_vars of the runtime_env Ray's W&B callback gives its logging actors (ray.remote is watched, and the
    actor is never started)."""
    import ray.air.integrations.wandb as ray_wandb

    seen = {}

    class Watched(Exception):
        pass

    def remote(**options):
        seen.update(options)
        raise Watched

    monkeypatch.setattr(ray_wandb.ray, "remote", remote)
    with pytest.raises(Watched):
        callback.log_trial_start(_Trial())
    return seen["runtime_env"]["env_vars"]


def test_the_wandb_key_stays_out_of_the_logging_actors_runtime_env(local_ray, monkeypatch, tmp_path):
    from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

    from orchestrator.tracking import WANDB_KEY, SecretSafeWandbCallback, _DotenvWandbLoggingActor

    monkeypatch.setenv(WANDB_KEY, "key-for-the-test")
    assert _logging_actor_env(monkeypatch, WandbLoggerCallback(project="p"))[WANDB_KEY] == "key-for-the-test"  # Ray's

    callback = SecretSafeWandbCallback(env_file=str(tmp_path / ".env"), project="p")
    assert issubclass(_DotenvWandbLoggingActor, _WandbLoggingActor)
    assert callback._logger_actor_cls is _DotenvWandbLoggingActor
    assert WANDB_KEY not in _logging_actor_env(monkeypatch, callback)
    assert os.environ[WANDB_KEY] == "key-for-the-test"  # put back for this process


def test_without_rays_wandb_hooks_wandb_fails_loudly(monkeypatch):
    import ray.air.integrations.wandb as ray_wandb

    from orchestrator.tracking import SecretSafeWandbCallback

    with monkeypatch.context() as patched:
        patched.setattr(ray_wandb.WandbLoggerCallback, "log_trial_start", lambda self, trial: None)
        with pytest.raises(MissingInternal) as error:
            SecretSafeWandbCallback(env_file=".env", project="p")
    loud(error, "ray", "log_trial_start calling _start_logging_actor", "WANDB_API_KEY")
    monkeypatch.delattr(ray_wandb, "_WandbLoggingActor")
    with pytest.raises(MissingInternal, match="_WandbLoggingActor"):
        SecretSafeWandbCallback(env_file=".env", project="p")
    with pytest.raises(MissingInternal, match="_WandbLoggingActor"):
        ray_internals._wandb_logging_actor()()  # the stand-in: using W&B fails, importing tracking does not


# --- Optuna ----------------------------------------------------------------------------------------------------------

def test_distribution_holds_a_value_or_not():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    rate, rank, steps = FloatDistribution(1e-5, 1e-3, log=True), CategoricalDistribution([8, 16]), IntDistribution(1, 9)
    assert optuna_internals.distribution_holds(rate, 1e-4) and not optuna_internals.distribution_holds(rate, 0.1)
    assert optuna_internals.distribution_holds(rank, 16) and not optuna_internals.distribution_holds(rank, 32)
    assert optuna_internals.distribution_holds(steps, 9) and not optuna_internals.distribution_holds(steps, 10)


def test_without_contains_the_study_check_fails_loudly(monkeypatch):
    from optuna.distributions import BaseDistribution, FloatDistribution

    monkeypatch.delattr(FloatDistribution, "_contains")
    monkeypatch.delattr(BaseDistribution, "_contains")
    with pytest.raises(MissingInternal) as error:
        optuna_internals.distribution_holds(FloatDistribution(0.0, 1.0), 0.5)
    loud(error, "optuna", "FloatDistribution._contains", "--study")


# --- transformers ----------------------------------------------------------------------------------------------------

def test_attention_implementation_of_a_config_and_of_a_model(model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainables.lora_trial import _attention

    assert transformers_internals.attention_implementation(AutoConfig.from_pretrained(model_dir)) is None
    assert transformers_internals.attention_implementation(
        AutoConfig.from_pretrained(model_dir, attn_implementation="eager")) == "eager"
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    assert transformers_internals.attention_implementation(model) == "sdpa"
    with _attention(model, "eager"):  # the trial's packing check switches it, through the public setter
        assert transformers_internals.attention_implementation(model) == "eager"
    assert transformers_internals.attention_implementation(model) == "sdpa"


def test_without_attn_implementation_a_trial_fails_loudly(model_dir, monkeypatch):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, attn_implementation="sdpa")
    owner = next(c for c in type(config).__mro__ if "_attn_implementation" in vars(c))
    monkeypatch.delattr(owner, "_attn_implementation")
    with pytest.raises(MissingInternal) as error:
        transformers_internals.attention_implementation(types.SimpleNamespace(config=config))
    loud(error, "transformers", "._attn_implementation")


# --- bittensor -------------------------------------------------------------------------------------------------------

def test_the_sdks_error_catalog_explains_chain_errors():
    from publishing.subnet.bittensor_chain import describe_chain_error

    catalog = bittensor_internals.error_catalog()
    assert len(catalog) > 100 and catalog["InvalidSpecName"]
    line = describe_chain_error(RuntimeError("dispatch failed: Module error InvalidSpecName"))
    assert line.startswith("the chain refused the call: InvalidSpecName (The name of specification")


def test_without_the_catalog_chain_errors_are_named_only_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bittensor._generated.errors", None)  # import fails as if it were gone
    assert bittensor_internals.error_catalog() == {}
    assert bittensor_internals.error_catalog() == {}
    one_line_once(capsys, "bittensor 11.", "bittensor._generated.errors.ERRORS", "no longer explained")


# --- Liger Kernel (not installed here: only its fence's behaviour) ---------------------------------------------------

def test_liger_without_its_instance_patch_is_off_under_auto_and_loud_when_asked_for(monkeypatch):
    from trainables import fused_kernels

    liger = types.ModuleType("liger_kernel")
    liger.transformers = types.ModuleType("liger_kernel.transformers")
    monkeypatch.setitem(sys.modules, "liger_kernel", liger)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", liger.transformers)
    monkeypatch.setattr(fused_kernels, "liger_installed", lambda: True)
    monkeypatch.setattr(fused_kernels, "choose", lambda requested, *rest: (True, "Liger's fused kernels"))
    cpu = types.SimpleNamespace(type="cpu")
    line = fused_kernels.apply(object(), "auto", cpu)
    assert line.startswith("fused kernels off: liger-kernel") and "_apply_liger_kernel_to_instance" in line
    with pytest.raises(MissingInternal, match="_apply_liger_kernel_to_instance"):
        fused_kernels.apply(object(), "liger", cpu)

    patched = []
    liger.transformers._apply_liger_kernel_to_instance = lambda model, **kernels: patched.append((model, kernels))
    assert fused_kernels.apply("model", "liger", cpu) == "Liger's fused kernels"
    assert patched == [("model", fused_kernels.LIGER_KWARGS)]
    liger_internals.apply_to_instance("again", rope=True)
    assert patched[-1] == ("again", {"rope": True})
