"""One typed, validated config for a sweep: dataclass defaults < YAML file < command-line flags.

Every field is a YAML key and a flag of the same name (`--num_epochs 3`), so the two never
drift apart. Validation happens here, once, before Ray starts; everything after trusts it.
"""

import argparse
import dataclasses
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from publishing.subnet.constants import VALIDATOR_EPSILON

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = CONFIGS_DIR / "default.yaml"


class ConfigError(ValueError):
    """Bad input: the message says what is wrong and how to fix it, in one line."""


def _help(text: str, flag: str | None = None, **kwargs):
    """A documented setting; `flag` names it on the command line and in YAML when that differs (wallet.name)."""
    return field(metadata={"help": text, "flag": flag}, **kwargs)


@dataclass(frozen=True)
class SweepConfig:
    # what to search
    search: str = _help("search space: a name under configs/search/ (default, seed_grid) or a YAML path",
                        default="default")
    num_samples: int | None = _help("trials to run; default: the search file's num_samples, or the grid's size",
                                    default=None)
    max_concurrent_trials: int | None = _help("trials running at once; default: one per free GPU or CPU slot",
                                              default=None)
    scheduler: str = _help("asha stops trials whose eval loss lags; fifo runs every trial to the end",
                           default="asha")
    grace_period: int = _help("evaluations every trial gets before ASHA may stop it", default=2)
    reduction_factor: int = _help("ASHA keeps the best 1/reduction_factor of trials at each rung", default=2)
    seed: int = _help("seed of the sampler, the eval split and the data order", default=0)
    # the starting model (at most one of these; none: the embedded tiny model)
    load_model_dir: str | None = _help("local Hugging Face model folder to start from; default: the embedded tiny model",
                                       default=None)
    load_repo: str | None = _help("Hugging Face repo to start from (with --download_repo_latest_commit)", default=None)
    download_repo_latest_commit: str | None = _help("the 40-character commit of --load_repo to download",
                                                    default=None)
    load_uid: int | None = _help("start from the model uid N has committed on the chain", default=None)
    load_best: bool = _help("start from the model of the uid with the highest incentive", default=False)
    # the data (at most one source; none: the bundled dataset)
    dataset_path: str | None = _help("local JSONL or Parquet of question/response pairs; default: the bundled dataset",
                                     default=None)
    dataset_repo_id: str | None = _help("Hugging Face dataset repo of question/response pairs", default=None)
    question_column: str = _help("column holding the prompts", default="question")
    response_column: str = _help("column holding the responses", default="response")
    use_cortex: bool = _help("train on Cortex subnet data read from W&B", default=False)
    cortex_steps: int = _help("latest history steps read from each Cortex validator run", default=5)
    cortex_samples_per_epoch: int = _help("Cortex pairs used", default=4096)
    tokenizer: str = _help("model: the starting model's own; competition: the competition's, which validators score "
                           "with (downloaded once); auto: the competition's, but the embedded model's own",
                           default="auto")
    eval_fraction: float = _help("share of the pairs held out as the eval set every trial is scored on",
                                 default=0.15)
    max_length: int = _help("tokens per pair after truncation (validators use 2048)", default=2048)
    # training, inside each trial
    num_epochs: int = _help("passes over the training pairs per trial", default=1)
    batch_size: int = _help("pairs per micro-batch", default=1)
    accumulation_steps: int = _help("micro-batches per optimizer step", default=32)
    eval_steps: int = _help("optimizer steps between evaluations, checkpoints and reports", default=10)
    eval_batch_size: int = _help("pairs per evaluation batch", default=8)
    warmup_ratio: float = _help("share of the steps spent warming the learning rate up", default=0.05)
    weight_decay: float = _help("AdamW weight decay", default=0.01)
    lora_dropout: float = _help("dropout on the LoRA layers", default=0.0)
    # where it runs
    device: str = _help("auto (every GPU Ray sees, else CPU), cpu, cuda, or cuda:N", default="auto")
    cpus_per_trial: int = _help("CPU cores per trial; torch uses this many threads on CPU", default=1)
    address: str | None = _help("Ray cluster address (auto on a cluster's head); default: start Ray here",
                                default=None)
    storage_path: str = _help("where experiments, checkpoints and the best model are written",
                              default="~/ray_results")
    experiment_name: str | None = _help("folder name of this experiment; default: lora-sweep-<timestamp>",
                                        default=None)
    resume: bool = _help("continue the experiment --experiment_name (default: the latest in --storage_path) after "
                         "the driver stopped; run the same command again with --resume", default=False)
    max_failures: int = _help("times a failing trial is restarted from its last checkpoint", default=2)
    dashboard: bool = _help("start the Ray dashboard when Ray is started here", default=True)
    # publishing (the best model to the Hub, its id to the chain)
    offline: bool = _help("never upload or commit; the best model is still packaged and described in publish.json",
                          default=False)
    hf_repo_id: str | None = _help("Hugging Face repo to publish to (namespace/name, at most 38 characters); "
                                   "without it the sweep runs offline", default=None)
    competition_id: str = _help("competition to publish for (see configs/competitions.yaml)", default="m1")
    avg_loss_upload_threshold: float | None = _help("publish only a model whose eval loss is at most this",
                                                    default=None)
    publish_min_improvement: float = _help("publish only a model this much better than the hotkey's committed one "
                                           "(the validators' epsilon)", default=VALIDATOR_EPSILON)
    use_hotkey_in_hash: bool = _help("commit the hotkey-salted hash of later subnet versions", default=False)
    wait_for_publish: bool = _help("at the end, wait for the 20-minute window to publish the best model",
                                   default=False)
    subtensor_network: str = _help("finney, test, local, or a ws:// address", flag="subtensor.network",
                                   default="finney")
    netuid: int = _help("the subnet's uid", default=6)
    wallet_name: str | None = _help("coldkey (wallet) name of the miner", flag="wallet.name", default=None)
    wallet_hotkey: str | None = _help("hotkey name of the miner, registered on the subnet", flag="wallet.hotkey",
                                      default=None)
    wallet_path: str = _help("folder of bittensor wallets", flag="wallet.path", default="~/.bittensor/wallets")
    env_file: str = _help("file with HF_ACCESS_TOKEN (or HF_TOKEN) and WANDB_API_KEY", default=".env")
    list_competitions: bool = _help("print the competitions and exit", default=False)
    # head-to-head and tracking
    comparison_uid: int | None = _help("compare the best model with this uid's committed model at the end",
                                       default=None)
    require_win: bool = _help("publish only a model whose win rate against --comparison_uid is above 0.5",
                              default=False)
    wandb_entity: str | None = _help("W&B entity; with --wandb_project, every trial is logged as a run", default=None)
    wandb_project: str | None = _help("W&B project; with --wandb_entity", default=None)


FIELDS = {f.name: f for f in dataclasses.fields(SweepConfig)}
# the name a setting has on the command line and in YAML -> its field
KEYS = {(f.metadata["flag"] or f.name): f.name for f in dataclasses.fields(SweepConfig)}


def _scalar_type(f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(SweepConfig)[f.name]
    if isinstance(hint, types.UnionType):  # `int | None` -> int
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


# An experiment's folder name: one path component, so it can never point outside --storage_path.
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message}; run with --help to see every flag")


def build_parser(defaults: dict | None = None) -> argparse.ArgumentParser:
    """The flags; `defaults` (field -> value) are the values that apply when a flag is left out, for --help."""
    defaults = {f.name: f.default for f in dataclasses.fields(SweepConfig)} | (defaults or {})
    # allow_abbrev=False: `--num_sample 2` is an unknown flag, not a silent `--num_samples 2`
    parser = _OneLineParser(prog="python -m orchestrator.run", argument_default=argparse.SUPPRESS,
                            description="A LoRA hyperparameter sweep on Ray Tune + Optuna. Defaults shown are "
                                        "those of configs/default.yaml where it sets them.", allow_abbrev=False)
    parser.add_argument("--config", help=f"YAML of settings (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    for key, name in KEYS.items():
        f = FIELDS[name]
        kind = _scalar_type(f)
        default = f" (default: {defaults[name]})"
        if kind is bool:
            parser.add_argument(f"--{key}", dest=name, action=argparse.BooleanOptionalAction,
                                help=f.metadata["help"] + default)
        else:
            parser.add_argument(f"--{key}", dest=name, type=kind, metavar=kind.__name__.upper(),
                                help=f.metadata["help"] + default)
    return parser


def read_yaml_settings(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config an existing YAML file")
    try:
        settings = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}); fix its syntax") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"config file {path} must be a mapping of setting: value")
    unknown = sorted(set(settings) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {path}; known keys are the flags listed by --help")
    for key, value in settings.items():
        kind = _scalar_type(FIELDS[KEYS[key]])
        if value is None or isinstance(value, kind) or (kind is float and isinstance(value, int) and not isinstance(value, bool)):
            continue
        raise ConfigError(f"{key} in {path} must be {kind.__name__}, not {value!r}")
    return {KEYS[key]: value for key, value in settings.items()}


def validate(config: SweepConfig) -> SweepConfig:
    """Checks that need no files or machines; each failure names the flag to fix."""
    for f in dataclasses.fields(SweepConfig):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{f.metadata['flag'] or f.name} must be a finite number, got {value}")
    if config.experiment_name is not None and not EXPERIMENT_NAME.fullmatch(config.experiment_name):
        raise ConfigError(f"--experiment_name {config.experiment_name!r} must be a plain folder name (letters, digits, "
                          "'.', '_', '-'; no '/' or '..'): it is a folder inside --storage_path")
    positive = ["grace_period", "num_epochs", "batch_size", "accumulation_steps", "eval_steps", "eval_batch_size",
                "max_length", "cpus_per_trial"]
    for name in positive:
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(config, name)}")
    if config.num_samples is not None and config.num_samples < 1:
        raise ConfigError(f"--num_samples must be at least 1, got {config.num_samples}")
    if config.max_concurrent_trials is not None and config.max_concurrent_trials < 1:
        raise ConfigError(f"--max_concurrent_trials must be at least 1, got {config.max_concurrent_trials}")
    if config.scheduler not in ("asha", "fifo"):
        raise ConfigError(f"--scheduler must be asha or fifo, got {config.scheduler!r}")
    if config.reduction_factor < 2:
        raise ConfigError(f"--reduction_factor must be at least 2, got {config.reduction_factor}")
    if config.max_failures < 0:
        raise ConfigError(f"--max_failures must be 0 or more, got {config.max_failures}")
    if not 0 < config.eval_fraction < 1:
        raise ConfigError(f"--eval_fraction must be between 0 and 1, got {config.eval_fraction}")
    if not 0 <= config.warmup_ratio < 1:
        raise ConfigError(f"--warmup_ratio must be in [0, 1), got {config.warmup_ratio}")
    if not 0 <= config.lora_dropout < 1:
        raise ConfigError(f"--lora_dropout must be in [0, 1), got {config.lora_dropout}")
    if config.weight_decay < 0:
        raise ConfigError(f"--weight_decay must be 0 or more, got {config.weight_decay}")
    loads = [flag for flag, given in [("--load_model_dir", config.load_model_dir), ("--load_repo", config.load_repo),
                                      ("--load_uid", config.load_uid is not None), ("--load_best", config.load_best)]
             if given]
    if len(loads) > 1:
        raise ConfigError(f"{' and '.join(loads)} both choose the starting model; pass only one")
    if config.load_repo and not config.download_repo_latest_commit:
        raise ConfigError("--load_repo needs --download_repo_latest_commit (the 40-character commit to download)")
    commit = config.download_repo_latest_commit
    if commit and not (len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)):
        raise ConfigError(f"--download_repo_latest_commit must be a 40-character hex commit, got {commit!r}")
    sources = [flag for flag, given in [("--dataset_path", config.dataset_path),
                                        ("--dataset_repo_id", config.dataset_repo_id),
                                        ("--use_cortex", config.use_cortex)] if given]
    if len(sources) > 1:
        raise ConfigError(f"{' and '.join(sources)} both choose the training data; pass only one")
    if config.cortex_steps < 1 or config.cortex_samples_per_epoch < 1:
        raise ConfigError("--cortex_steps and --cortex_samples_per_epoch must be at least 1")
    if bool(config.wandb_entity) != bool(config.wandb_project):
        raise ConfigError("W&B logging needs both --wandb_entity and --wandb_project")
    if config.require_win and config.comparison_uid is None:
        raise ConfigError("--require_win needs --comparison_uid (the uid to win against)")
    if config.tokenizer not in ("auto", "model", "competition"):
        raise ConfigError(f"--tokenizer must be auto, model or competition, got {config.tokenizer!r}")
    device = config.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if not 0 <= config.publish_min_improvement < 1:
        raise ConfigError(f"--publish_min_improvement must be in [0, 1), got {config.publish_min_improvement}")
    if config.address is None and config.cpus_per_trial > (os.cpu_count() or 1):
        raise ConfigError(f"--cpus_per_trial {config.cpus_per_trial} is more than this machine's "
                          f"{os.cpu_count()} CPUs; pass at most {os.cpu_count()}")
    return config


def load_config(argv: list[str] | None = None) -> SweepConfig:
    """Flags and YAML -> a validated SweepConfig, or ConfigError with one line saying what to fix."""
    argv = sys.argv[1:] if argv is None else argv
    config_path = Path(_config_flag(argv) or DEFAULT_CONFIG)
    help_asked = "--help" in argv or "-h" in argv
    yaml_settings = _settings_for_help(config_path) if help_asked else read_yaml_settings(config_path)
    flags = vars(build_parser(yaml_settings).parse_args(argv))
    flags.pop("config", None)
    settings = {**yaml_settings, **flags}
    return validate(SweepConfig(**settings))


def _config_flag(argv: list[str]) -> str | None:
    """The --config value, read ahead of parsing: its YAML gives the defaults --help shows."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _settings_for_help(path: Path) -> dict:
    try:
        return read_yaml_settings(path)
    except ConfigError:
        return {}  # --help still helps when the YAML is broken; running reports the YAML's error
