"""Search spaces as YAML: parsed, checked, and turned into Ray Tune domains and an Optuna sampler.

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

import yaml

from orchestrator.config import CONFIGS_DIR, ConfigError

PARAMETERS = ("learning_rate", "r", "alpha")
RANGES = ("loguniform", "uniform")


@dataclass(frozen=True)
class Range:
    kind: str  # loguniform | uniform
    low: float
    high: float


@dataclass(frozen=True)
class SearchSpace:
    sampler: str
    params: dict          # name -> list of values, or Range
    num_samples: int | None = None
    n_startup_trials: int = 3
    source: str = ""

    @property
    def grid(self) -> dict[str, list]:
        return {name: list(values) for name, values in self.params.items()}

    @property
    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.params.values())

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
    if name == "learning_rate":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
            raise ConfigError(f"learning_rate values must be positive numbers (write 1.0e-5, not 1e-5), "
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
        raise ConfigError(f"{where} needs a 'space' mapping of {', '.join(PARAMETERS)}")
    missing = [p for p in PARAMETERS if p not in space]
    extra = sorted(set(space) - set(PARAMETERS))
    if missing or extra:
        raise ConfigError(f"the space in {where} must define exactly {', '.join(PARAMETERS)}; "
                          + (f"missing {missing[0]}" if missing else f"unknown {extra[0]}"))
    params = {}
    for name in PARAMETERS:
        spec = space[name]
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{name} in {where} is an empty list; give at least one value")
            for value in spec:
                _check_value(name, value, where)
            params[name] = spec
        elif isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in RANGES and name == "learning_rate":
            kind, bounds = next(iter(spec.items()))
            if not (isinstance(bounds, list) and len(bounds) == 2):
                raise ConfigError(f"{name}: {kind} in {where} needs [low, high]")
            for value in bounds:
                _check_value(name, value, where)
            if not bounds[0] < bounds[1]:
                raise ConfigError(f"{name}: {kind} in {where} needs low < high, got {bounds}")
            params[name] = Range(kind, float(bounds[0]), float(bounds[1]))
        else:
            allowed = "a list of values or {loguniform: [low, high]}" if name == "learning_rate" else "a list of values"
            raise ConfigError(f"{name} in {where} must be {allowed}, got {spec!r}")
    if sampler == "grid" and any(isinstance(v, Range) for v in params.values()):
        raise ConfigError(f"a grid search in {where} needs a list of values for every parameter, not a range")
    num_samples = raw.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise ConfigError(f"num_samples in {where} must be at least 1, got {num_samples!r}")
    n_startup = raw.get("n_startup_trials", 3)
    if not isinstance(n_startup, int) or n_startup < 1:
        raise ConfigError(f"n_startup_trials in {where} must be at least 1, got {n_startup!r}")
    return SearchSpace(sampler=sampler, params=params, num_samples=num_samples, n_startup_trials=n_startup,
                       source=where)


def load_search_space(search: str) -> SearchSpace:
    path = resolve_search_path(search)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"search file {path} is not valid YAML ({str(e).splitlines()[0]}); fix its syntax") from None
    return parse_search_space(raw, str(path))


def tune_param_space(space: SearchSpace) -> dict:
    """Ray Tune domains, which OptunaSearch turns into Optuna distributions."""
    from ray import tune

    domains = {}
    for name, spec in space.params.items():
        if isinstance(spec, Range):
            domains[name] = (tune.loguniform if spec.kind == "loguniform" else tune.uniform)(spec.low, spec.high)
        else:
            domains[name] = tune.choice(spec)
    return domains


def optuna_sampler(space: SearchSpace, seed: int):
    import optuna

    if space.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid, seed=seed)
    # constant_liar keeps concurrent trials from being handed the same suggestion
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.n_startup_trials, multivariate=True,
                                      constant_liar=True)
