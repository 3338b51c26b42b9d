"""Search spaces as YAML: parsed, checked, and turned once into Optuna distributions and Tune's OptunaSearch.

    sampler: tpe | grid
    num_samples: 8                 # tpe only; a grid runs each combination once
    n_startup_trials: 3            # tpe only: random trials before TPE models the results
    space:
      learning_rate: {loguniform: [1.0e-6, 1.0e-3]}   # or a list of values
      r: [8, 16, 32, 64, 128]
      alpha: [8, 16, 32, 64]
"""

import math
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from orchestrator.config import CONFIGS_DIR, ConfigError
from trainables.errors import one_line
from trainables.hyperparameters import NAMES, TYPES

RANGES = {"loguniform": True, "uniform": False}  # a range's name -> whether it is sampled on a log scale


@dataclass(frozen=True)
class SearchSpace:
    sampler: str
    distributions: dict[str, BaseDistribution]  # every hyperparameter's, in the order of NAMES
    num_samples: int | None = None
    n_startup_trials: int = 3
    source: str = ""

    @property
    def grid(self) -> dict[str, list]:
        """A grid's values by name (every distribution of a grid is categorical)."""
        return {name: list(d.choices) for name, d in self.distributions.items()}

    @property
    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid.values())

    def trials(self, num_samples_flag: int | None) -> int:
        """How many trials to run: the flag, else the file, else (for a grid) every combination once."""
        if num_samples_flag is not None:
            return num_samples_flag
        if self.sampler == "grid":
            return self.grid_size
        return self.num_samples or 8


def resolve_search_path(search: str) -> Path:
    named = CONFIGS_DIR / "search" / f"{search}.yaml"
    if named.is_file():
        return named
    path = Path(search)
    if path.is_file():
        return path
    known = ", ".join(sorted(p.stem for p in (CONFIGS_DIR / "search").glob("*.yaml")))
    raise ConfigError(f"--search {search!r} is neither a search under configs/search/ ({known}) nor a YAML file")


def _check_value(name: str, value, where: str) -> None:
    if TYPES[name] is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
            raise ConfigError(f"{name} values must be positive numbers (write 1.0e-5, not 1e-5), "
                              f"got {value!r} in {where}")
    elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} values must be positive integers, got {value!r} in {where}")


def parse_search_space(raw: dict, where: str) -> SearchSpace:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping with sampler and space")
    unknown = sorted(set(raw) - {"sampler", "num_samples", "n_startup_trials", "space"})
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; use sampler, num_samples, n_startup_trials, space")
    sampler = raw.get("sampler", "tpe")
    if sampler not in ("tpe", "grid"):
        raise ConfigError(f"sampler in {where} must be tpe or grid, got {sampler!r}")
    space = raw.get("space")
    if not isinstance(space, dict):
        raise ConfigError(f"{where} needs a 'space' mapping of {', '.join(NAMES)}")
    missing = [p for p in NAMES if p not in space]
    extra = sorted(set(space) - set(NAMES))
    if missing or extra:
        raise ConfigError(f"the space in {where} must define exactly {', '.join(NAMES)}; "
                          + (f"missing {missing[0]}" if missing else f"unknown {extra[0]}"))
    distributions = {}
    for name in NAMES:
        spec = space[name]
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{name} in {where} is an empty list; give at least one value")
            for value in spec:
                _check_value(name, value, where)
            distributions[name] = CategoricalDistribution(spec)
        elif isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in RANGES and TYPES[name] is float:
            kind, bounds = next(iter(spec.items()))
            if not (isinstance(bounds, list) and len(bounds) == 2):
                raise ConfigError(f"{name}: {kind} in {where} needs [low, high]")
            for value in bounds:
                _check_value(name, value, where)
            if not bounds[0] < bounds[1]:
                raise ConfigError(f"{name}: {kind} in {where} needs low < high, got {bounds}")
            distributions[name] = FloatDistribution(float(bounds[0]), float(bounds[1]), log=RANGES[kind])
        else:
            allowed = "a list of values or {loguniform: [low, high]}" if TYPES[name] is float else "a list of values"
            raise ConfigError(f"{name} in {where} must be {allowed}, got {spec!r}")
    if sampler == "grid" and any(isinstance(d, FloatDistribution) for d in distributions.values()):
        raise ConfigError(f"a grid search in {where} needs a list of values for every parameter, not a range")
    num_samples = raw.get("num_samples")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1):
        raise ConfigError(f"num_samples in {where} must be at least 1, got {num_samples!r}")
    n_startup = raw.get("n_startup_trials", 3)
    if not isinstance(n_startup, int) or n_startup < 1:
        raise ConfigError(f"n_startup_trials in {where} must be at least 1, got {n_startup!r}")
    return SearchSpace(sampler=sampler, distributions=distributions, num_samples=num_samples,
                       n_startup_trials=n_startup, source=where)


def load_search_space(search: str) -> SearchSpace:
    path = resolve_search_path(search)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"search file {path} is not valid YAML ({one_line(str(e))}); fix its syntax") from None
    except ValueError:  # UnicodeDecodeError
        raise ConfigError(f"search file {path} is not UTF-8 text; pass --search a YAML file") from None
    return parse_search_space(raw, str(path))


def optuna_sampler(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    if space.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid, seed=seed)
    # constant_liar keeps concurrent trials from being handed the same suggestion
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.n_startup_trials, multivariate=True,
                                      constant_liar=True)


def optuna_search(space: SearchSpace, seed: int, metric: str, mode: str, full_reports: int | None = None,
                  study=None):
    """Tune's searcher for the space: Optuna suggests every trial's hyperparameters from the distributions.

    Given its space (and so metric and mode) here, OptunaSearch ignores the Tuner's param_space, which must
    then leave these names out; the searcher is saved with the experiment, so --resume needs nothing else.
    With `study` (an `orchestrator.study.StudyChoice`), the study lives in that durable storage under its
    fingerprint's name, earlier sweeps' trials included; without, in memory. `full_reports`: the evaluations of a
    trial that runs its whole budget, which tells a pruned trial from a complete one.
    """
    from orchestrator.optuna_searcher import TruthfulOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial would interleave with Tune's table
    where = {"storage": study.open_storage(), "study_name": study.name} if study is not None else {}
    return TruthfulOptunaSearch(space=space.distributions, sampler=optuna_sampler(space, seed), metric=metric,
                                mode=mode, full_reports=full_reports, **where)
