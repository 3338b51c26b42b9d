"""One typed, validated config for a sweep: dataclass defaults < YAML file < command-line flags.

The config is in groups (search, data, training, run, publishing, comparison, tracking), each a
dataclass that documents and checks its own settings; the training group belongs to the trainable
(`trainables.lora_trial.TrainingSettings`) and the publishing group to the publisher
(`publishing.setup.PublishOptions`), so what a trial or the publisher receives is the group itself,
not a copy. Flags and YAML keys stay flat (`--num_epochs 3`, `wallet.name: cold`): every field of
every group is a flag of its name. Validation happens here, once, before Ray starts.
"""

import argparse
import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from publishing.setup import PublishOptions
from publishing.subnet.competitions import CompetitionError, follow_competition, get_competition
from publishing.subnet.constants import VALIDATOR_EVAL_SAMPLES
from trainables.documented import add_flag, check_choices, flag_name, scalar_type, setting
from trainables.errors import one_line
from trainables.settings import TrainingSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = CONFIGS_DIR / "default.yaml"
# An experiment's folder name: one path component, so it can never point outside --storage_path.
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ConfigError(ValueError):
    """Bad input: the message says what is wrong and how to fix it, in one line."""


@dataclass(frozen=True)
class SearchConfig:
    """What to search, and how trials are stopped early."""
    search: str = setting("default", "search space: a name under configs/search/ (default: Optuna TPE; seed_grid: "
                                     "the original miner's grid) or a YAML path")
    num_samples: int | None = setting(None, "trials to run", unset="the search file's num_samples, or the grid's size")
    max_concurrent_trials: int | None = setting(None, "trials running at once", unset="one per free GPU or CPU slot")
    scheduler: str = setting("asha", "asha stops trials whose eval loss lags; fifo runs every trial to the end",
                             choices=("asha", "fifo"))
    grace_period: int = setting(2, "evaluations every trial gets before ASHA may stop it")
    reduction_factor: int = setting(2, "ASHA keeps the best 1/reduction_factor of trials at each rung")
    seed: int = setting(0, "seed of the sampler, the eval split and the data order")
    pruned_trials: str = setting("complete", "how trials the scheduler stopped reach Optuna: complete (as stock Ray "
                                             "Tune: their last, partial-budget loss as their value) or pruned (their "
                                             "losses at their steps; TPE ranks them below finished ones); "
                                             "BENCHMARKS.md section 2 measured pruned slightly worse",
                                  choices=("complete", "pruned"))
    study: str | None = setting(None, "keep the Optuna study in a journal file (a relative path is under "
                                      "--storage_path) or an Optuna storage URL, and continue it in later sweeps "
                                      "on the same model, data, search space and competition",
                                unset="in memory, for this sweep only")

    def check(self) -> None:
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"--num_samples must be at least 1, got {self.num_samples}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError(f"--max_concurrent_trials must be at least 1, got {self.max_concurrent_trials}")
        if self.grace_period < 1:
            raise ValueError(f"--grace_period must be at least 1, got {self.grace_period}")
        if not 0 <= self.seed < 2**32:  # numpy's and Optuna's seeds
            raise ValueError(f"--seed must be between 0 and 2**32 - 1, got {self.seed}")
        if self.reduction_factor < 2:
            raise ValueError(f"--reduction_factor must be at least 2, got {self.reduction_factor}")


@dataclass(frozen=True)
class DataConfig:
    """The starting model (at most one source; none: the embedded tiny model) and the data (the same)."""
    load_model_dir: str | None = setting(None, "local Hugging Face model folder to start from",
                                         unset="the embedded tiny model, unless --load_repo, --load_uid or "
                                               "--load_best choose")
    load_repo: str | None = setting(None, "Hugging Face repo to start from (with --download_repo_latest_commit)")
    download_repo_latest_commit: str | None = setting(None, "the 40-character commit of --load_repo to download")
    load_uid: int | None = setting(None, "start from the model uid N has committed on the chain (of the competition)")
    load_best: bool = setting(False, "start from the model of the uid with the highest incentive")
    dataset_path: str | None = setting(None, "local JSONL or Parquet of question/response pairs",
                                       unset="the bundled pairs (m1, g1); a competition's own tasks (4)")
    dataset_repo_id: str | None = setting(None, "Hugging Face dataset repo of question/response pairs")
    question_column: str = setting("question", "column holding the prompts")
    response_column: str = setting("response", "column holding the responses")
    use_cortex: bool = setting(False, "train on Cortex subnet data read from W&B")
    cortex_steps: int = setting(5, "latest history steps read from each Cortex validator run")
    cortex_samples_per_epoch: int = setting(4096, "Cortex pairs used")
    tokenizer: str = setting("auto", "model: the starting model's own; competition: the competition's, which "
                                     "validators score with (downloaded once); auto: the competition's, but the "
                                     "embedded model's own", choices=("auto", "model", "competition"))
    eval_fraction: float = setting(0.15, "share of the pairs held out as the eval set every trial is scored on")
    max_length: int | None = setting(None, "tokens per training pair (longer ones are truncated, or dropped for "
                                           "reference_loss)",
                                     unset="the competition's sequence length: 2048 for m1 and g1, 16384 for 4")
    task_data: str | None = setting(None, "local rows for a competition's tasks, NAME=PATH[,NAME=PATH] (.jsonl or "
                                          ".parquet in the data set's own schema)", unset="each task's Hub data set")
    eval_samples_per_task: int | None = setting(None, "held-out samples drawn per task of a reference_loss "
                                                      "competition",
                                                unset=f"the competition's (validators draw {VALIDATOR_EVAL_SAMPLES})")
    train_samples_per_task: int = setting(20000, "at most this many training samples read per task")

    @property
    def embedded_model(self) -> bool:
        """No starting model was chosen: the embedded tiny model."""
        return not (self.load_model_dir or self.load_repo or self.load_uid is not None or self.load_best)

    def check(self) -> None:
        loads = [flag for flag, given in [("--load_model_dir", self.load_model_dir), ("--load_repo", self.load_repo),
                                          ("--load_uid", self.load_uid is not None), ("--load_best", self.load_best)]
                 if given]
        if len(loads) > 1:
            raise ValueError(f"{' and '.join(loads)} both choose the starting model; pass only one")
        if self.load_repo and not self.download_repo_latest_commit:
            raise ValueError("--load_repo needs --download_repo_latest_commit (the 40-character commit to download)")
        commit = self.download_repo_latest_commit
        if commit and not (len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)):
            raise ValueError(f"--download_repo_latest_commit must be a 40-character hex commit, got {commit!r}")
        sources = [flag for flag, given in [("--dataset_path", self.dataset_path),
                                            ("--dataset_repo_id", self.dataset_repo_id),
                                            ("--use_cortex", self.use_cortex)] if given]
        if len(sources) > 1:
            raise ValueError(f"{' and '.join(sources)} both choose the training data; pass only one")
        if self.cortex_steps < 1 or self.cortex_samples_per_epoch < 1:
            raise ValueError("--cortex_steps and --cortex_samples_per_epoch must be at least 1")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"--eval_fraction must be between 0 and 1, got {self.eval_fraction}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"--max_length must be at least 1, got {self.max_length}")
        if (self.eval_samples_per_task is not None and self.eval_samples_per_task < 1) or \
                self.train_samples_per_task < 1:
            raise ValueError("--eval_samples_per_task and --train_samples_per_task must be at least 1")
        self.task_sources()  # a malformed --task_data fails here

    def task_sources(self) -> dict[str, str]:
        """--task_data as {task name: path}."""
        sources = {}
        for item in (self.task_data or "").split(","):
            if not item.strip():
                continue
            name, sep, path = item.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"--task_data takes NAME=PATH pairs separated by commas, got {item.strip()!r}")
            sources[name.strip()] = path.strip()
        return sources


@dataclass(frozen=True)
class RunConfig:
    """Where the sweep runs and where it writes."""
    device: str = setting("auto", "where trials train: auto (one trial per GPU Ray sees, else the CPU), cpu, cuda, "
                                  "or cuda:N (that GPU only)")
    cpus_per_trial: int = setting(1, "CPU cores per trial; torch uses this many threads on CPU")
    address: str | None = setting(None, "Ray cluster address (auto on a cluster's head)", unset="start Ray here")
    storage_path: str = setting("~/ray_results", "where experiments, checkpoints and the best model are written: a "
                                                 "folder every node sees, or s3://bucket/prefix")
    experiment_name: str | None = setting(None, "folder name of this experiment", unset="lora-sweep-<timestamp>")
    resume: bool = setting(False, "continue the experiment --experiment_name (without it: the newest unfinished "
                                  "sweep of this miner in --storage_path) after Ctrl-C or a dead driver")
    max_failures: int = setting(2, "times a failing trial is restarted from its last checkpoint")
    time_budget: str | None = setting(None, "the whole sweep's time, e.g. 45s, 90m, 6h, 1h30m or 5400 (seconds): no "
                                            "trial starts that would not finish in it, running ones stop at their "
                                            "next report once it is spent, and the best is still merged and "
                                            "published; counted from the start (or --resume)", unset="no limit")
    dashboard: bool = setting(True, "start the Ray dashboard when Ray is started here")
    reuse_workers: bool = setting(False, "run each trial in the worker process of the trial before it, where one "
                                         "has ended: saves a new process's start and imports (about 4 s a trial "
                                         "on a CPU); the dashboard's Actors page then calls a worker by its purpose, "
                                         "not by trial (each log line still names its trial)")

    @property
    def time_budget_s(self) -> float | None:
        """--time_budget in seconds (None: no budget)."""
        if self.time_budget is None:
            return None
        from orchestrator.durations import parse_duration

        return parse_duration(self.time_budget)

    def check(self) -> None:
        device = self.device
        if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
        if self.cpus_per_trial < 1:
            raise ValueError(f"--cpus_per_trial must be at least 1, got {self.cpus_per_trial}")
        if self.address is None and self.cpus_per_trial > (os.cpu_count() or 1):
            raise ValueError(f"--cpus_per_trial {self.cpus_per_trial} is more than this machine's "
                             f"{os.cpu_count()} CPUs; pass at most {os.cpu_count()}")
        if self.experiment_name is not None and not EXPERIMENT_NAME.fullmatch(self.experiment_name):
            raise ValueError(f"--experiment_name {self.experiment_name!r} must be a plain folder name (letters, "
                             "digits, '.', '_', '-'; no '/' or '..'): it is a folder inside --storage_path")
        if self.max_failures < 0:
            raise ValueError(f"--max_failures must be 0 or more, got {self.max_failures}")
        self.time_budget_s  # noqa: B018 (a malformed --time_budget fails here)


@dataclass(frozen=True)
class ComparisonConfig:
    """The best model against another miner's, the validators' way."""
    comparison_uid: int | None = setting(None, "compare the best model with this uid's committed model at the end",
                                         unset="no comparison")
    require_win: bool = setting(False, "publish only a model whose win rate against --comparison_uid is above 0.5")

    def check(self) -> None:
        if self.require_win and self.comparison_uid is None:
            raise ValueError("--require_win needs --comparison_uid (the uid to win against)")


@dataclass(frozen=True)
class TrackingConfig:
    """W&B: every trial a run, grouped by sweep, and a summary run."""
    wandb_entity: str | None = setting(None, "W&B entity; with --wandb_project, every trial is logged as a run")
    wandb_project: str | None = setting(None, "W&B project; with --wandb_entity")

    def check(self) -> None:
        if bool(self.wandb_entity) != bool(self.wandb_project):
            raise ValueError("W&B logging needs both --wandb_entity and --wandb_project")


@dataclass(frozen=True)
class CommandConfig:
    """Commands instead of a sweep."""
    list_competitions: bool = setting(False, "print the competitions and exit")

    def check(self) -> None:
        pass


@dataclass(frozen=True)
class SweepConfig:
    search: SearchConfig = SearchConfig()
    data: DataConfig = DataConfig()
    training: TrainingSettings = TrainingSettings()
    run: RunConfig = RunConfig()
    publishing: PublishOptions = PublishOptions()
    comparison: ComparisonConfig = ComparisonConfig()
    tracking: TrackingConfig = TrackingConfig()
    command: CommandConfig = CommandConfig()

    @classmethod
    def from_flat(cls, settings: dict) -> "SweepConfig":
        """Field name -> value, as flags and YAML give them, into the groups."""
        grouped = {group: {} for group in GROUPS}
        for name, value in settings.items():
            grouped[FIELD_GROUP[name]][name] = value
        return cls(**{group: GROUPS[group](**values) for group, values in grouped.items()})

    def groups(self):
        return [getattr(self, group) for group in GROUPS]


GROUPS = {f.name: f.type for f in dataclasses.fields(SweepConfig)}
FIELDS = {f.name: f for cls in GROUPS.values() for f in dataclasses.fields(cls)}
FIELD_GROUP = {f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)}
# the name a setting has on the command line and in YAML -> its field
KEYS = {flag_name(f): f.name for f in FIELDS.values()}


def _scalar_type(name: str) -> type:
    return scalar_type(GROUPS[FIELD_GROUP[name]], name)


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is a ConfigError: one line, exit 2 (the sweep's, orchestrator.score's and orchestrator.mine's)."""

    def error(self, message):
        raise ConfigError(f"{message}; run with --help to see every flag")


GROUP_TITLES = {"search": "search", "data": "starting model and data", "training": "training",
                "run": "run: where and how the sweep runs", "publishing": "publishing", "comparison": "comparison",
                "tracking": "tracking", "command": "commands"}
COMMANDS = {"list_competitions"}  # actions rather than settings: no --no- form


def build_parser(defaults: dict | None = None) -> argparse.ArgumentParser:
    """The flags, in the config's groups; `defaults` (field -> value, a config file's) are what --help shows as the
    default where the file sets one."""
    defaults = defaults or {}
    # allow_abbrev=False: `--num_sample 2` is an unknown flag, not a silent `--num_samples 2`
    parser = OneLineParser(prog="python -m orchestrator.run", argument_default=argparse.SUPPRESS,
                           usage="python -m orchestrator.run [--config FILE] [--FLAG VALUE ...]",
                           description="A LoRA hyperparameter sweep on Ray Tune + Optuna for the Bittensor "
                                       "finetuning subnet. With no flags: an offline sweep on a tiny bundled model. "
                                       "Every flag is also a key of the --config YAML; flags win. A default "
                                       f"shown is {DEFAULT_CONFIG.relative_to(REPO_ROOT)}'s where it sets one.",
                           allow_abbrev=False)
    parser.add_argument("--config", metavar="FILE",
                        help=f"YAML of settings (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    for group, cls in GROUPS.items():
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        section = parser.add_argument_group(GROUP_TITLES[group], doc if not doc.startswith(cls.__name__) else None)
        for f in dataclasses.fields(cls):
            add_flag(section, cls, f, shown=defaults.get(f.name, dataclasses.MISSING), command=f.name in COMMANDS)
    return parser


def read_yaml_settings(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config an existing YAML file")
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML ({one_line(str(e))}); fix its syntax") from None
    except ValueError:  # UnicodeDecodeError: not a text file
        raise ConfigError(f"config file {path} is not UTF-8 text; pass --config a YAML file") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"config file {path} must be a mapping of setting: value")
    unknown = sorted(str(key) for key in settings if key not in KEYS)  # str: a key may be a number or a list
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {path}; known keys are the flags listed by --help")
    for key, value in list(settings.items()):
        kind = _scalar_type(KEYS[key])
        if kind is str and isinstance(value, bool):  # YAML 1.1 reads `packing: on` as true
            settings[key] = value = "on" if value else "off"
        # a YAML `true` is an int to Python: a number setting never takes one
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is None or (kind is bool and isinstance(value, bool)) or (kind is str and isinstance(value, str)) \
                or (kind is int and number and isinstance(value, int)) or (kind is float and number):
            continue
        raise ConfigError(f"{key} in {path} must be {kind.__name__}, not {value!r}")
    return {KEYS[key]: value for key, value in settings.items()}


LARGEST_INT = 2**31 - 1


def validate(config: SweepConfig) -> SweepConfig:
    """Each group checks its own settings (no files or machines needed); each failure names the flag to fix."""
    for name, f in FIELDS.items():
        value = getattr(getattr(config, FIELD_GROUP[name]), name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{flag_name(f)} must be a finite number, got {value}")
        # no count, size or id here is near 2**31; beyond it torch, numpy and the tokenizers overflow, mid-run
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > LARGEST_INT:
            raise ConfigError(f"--{flag_name(f)} {value} is out of range: at most {LARGEST_INT}")
    try:
        for group in config.groups():
            check_choices(group)
            group.check()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return config


def load_config(argv: list[str] | None = None) -> SweepConfig:
    """Flags and YAML -> a validated SweepConfig, or ConfigError with one line saying what to fix."""
    argv = sys.argv[1:] if argv is None else argv
    config_path = Path(_config_flag(argv) or DEFAULT_CONFIG)
    help_asked = "--help" in argv or "-h" in argv
    yaml_settings = _settings_for_help(config_path) if help_asked else read_yaml_settings(config_path)
    flags = vars(build_parser(yaml_settings).parse_args(argv))
    flags.pop("config", None)
    config = validate(SweepConfig.from_flat({**yaml_settings, **flags}))
    return config if config.command.list_competitions else validate(with_competition_settings(config))


def with_competition_settings(config: SweepConfig) -> SweepConfig:
    """Every setting the competition defines (sequence length, netuid, hash form, epsilon, evaluation samples) and
    the user's flags and YAML left unset, from the competition."""
    try:
        competition = get_competition(config.publishing.competition_id, config.publishing.competitions_file)
    except CompetitionError as e:
        flag = "--competitions_file" if "cannot read" in str(e) else "--competition_id"
        raise ConfigError(f"{flag}: {e}") from None
    flat = {name: getattr(getattr(config, FIELD_GROUP[name]), name) for name in FIELDS}
    return SweepConfig.from_flat(follow_competition(flat, competition))


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
