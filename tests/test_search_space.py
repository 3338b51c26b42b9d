import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from orchestrator.config import ConfigError
from orchestrator.search_space import load_search_space, optuna_sampler, optuna_search, parse_search_space

SEED_GRID = {"learning_rate": [1e-5, 1e-6, 1e-8, 1e-10], "r": [32, 64, 128], "alpha": [16]}


def test_seed_grid_is_the_original_miners_grid():
    space = load_search_space("seed_grid")
    assert space.sampler == "grid"
    assert space.distributions == {name: CategoricalDistribution(values) for name, values in SEED_GRID.items()}
    assert space.grid == SEED_GRID
    assert space.trials(None) == 12
    sampler = optuna_sampler(space, seed=0)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    assert sampler._search_space == SEED_GRID
    assert len(sampler._all_grids) == 12


def test_default_space_is_tpe_over_the_wide_space():
    space = load_search_space("default")
    assert space.sampler == "tpe"
    assert space.distributions == {"learning_rate": FloatDistribution(1e-6, 1e-3, log=True),
                                   "r": CategoricalDistribution([8, 16, 32, 64, 128]),
                                   "alpha": CategoricalDistribution([8, 16, 32, 64])}
    assert space.trials(None) == 8
    assert space.trials(3) == 3  # --num_samples wins
    sampler = optuna_sampler(space, seed=0)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert (sampler._n_startup_trials, sampler._multivariate, sampler._constant_liar) == (3, True, True)


def test_a_uniform_range_is_a_linear_float_distribution():
    space = parse_search_space({"space": {"learning_rate": {"uniform": [1.0e-5, 1.0e-3]}, "r": [8], "alpha": [16]}},
                               "t.yaml")
    assert space.distributions["learning_rate"] == FloatDistribution(1e-5, 1e-3, log=False)


@pytest.mark.parametrize("search", ["default", "seed_grid"])
def test_the_searcher_holds_the_distributions_and_suggests_from_them(search):
    space = load_search_space(search)
    searcher = optuna_search(space, seed=0, metric="eval_loss", mode="min")
    assert searcher._space == space.distributions
    assert (searcher.metric, searcher.mode) == ("eval_loss", "min")
    assert type(searcher._sampler) is type(optuna_sampler(space, seed=0))
    # no Tuner param_space needed: the searcher alone suggests every hyperparameter, from the space
    suggestion = searcher.suggest("trial_0")
    assert list(suggestion) == ["learning_rate", "r", "alpha"]
    for name, value in suggestion.items():
        assert space.distributions[name]._contains(space.distributions[name].to_internal_repr(value))


def test_the_same_seed_suggests_the_same_trials():
    space = load_search_space("default")
    first, second = (optuna_search(space, seed=7, metric="eval_loss", mode="min") for _ in range(2))
    assert [first.suggest(f"t{i}") for i in range(4)] == [second.suggest(f"t{i}") for i in range(4)]


def test_search_path_takes_any_yaml_of_the_same_form(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("sampler: grid\nspace:\n  learning_rate: [1.0e-4]\n  r: [4, 8]\n  alpha: [8]\n")
    assert load_search_space(str(path)).grid_size == 2


def test_unknown_search_name():
    with pytest.raises(ConfigError, match="neither a search under configs/search/"):
        load_search_space("nope")


GOOD = {"learning_rate": [1e-4], "r": [8], "alpha": [16]}


@pytest.mark.parametrize("override, fragment", [
    ({"learning_rate": [0.0]}, "learning_rate values must be positive"),
    ({"learning_rate": [-1e-4]}, "learning_rate values must be positive"),
    ({"learning_rate": ["1e-5"]}, "write 1.0e-5"),
    ({"learning_rate": {"loguniform": [0, 1e-3]}}, "learning_rate values must be positive"),
    ({"learning_rate": {"loguniform": [1e-3, 1e-4]}}, "low < high"),
    ({"r": [0]}, "r values must be positive integers"),
    ({"r": [8, -8]}, "r values must be positive integers"),
    ({"alpha": [0]}, "alpha values must be positive integers"),
    ({"alpha": [1.5]}, "alpha values must be positive integers"),
    ({"r": []}, "r in .* is an empty list"),
    ({"learning_rate": []}, "learning_rate in .* is an empty list"),
    ({"dropout": [0.1]}, "unknown dropout"),
])
def test_bad_search_spaces(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_search_space({"sampler": "tpe", "space": {**GOOD, **override}}, "test.yaml")


def test_missing_parameter_and_grid_with_a_range():
    with pytest.raises(ConfigError, match="missing alpha"):
        parse_search_space({"space": {"learning_rate": [1e-4], "r": [8]}}, "t.yaml")
    with pytest.raises(ConfigError, match="grid search .* needs a list"):
        parse_search_space({"sampler": "grid", "space": {**GOOD, "learning_rate": {"loguniform": [1e-5, 1e-3]}}},
                           "t.yaml")
