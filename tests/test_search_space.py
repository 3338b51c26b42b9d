import optuna
import pytest

from orchestrator.config import ConfigError
from orchestrator.search_space import Range, load_search_space, optuna_sampler, parse_search_space


def test_seed_grid_is_the_original_miners_grid():
    space = load_search_space("seed_grid")
    assert space.sampler == "grid"
    assert space.grid == {"learning_rate": [1e-5, 1e-6, 1e-8, 1e-10], "r": [32, 64, 128], "alpha": [16]}
    assert space.trials(None) == 12
    assert isinstance(optuna_sampler(space, seed=0), optuna.samplers.GridSampler)


def test_default_space_is_tpe_over_the_wide_space():
    space = load_search_space("default")
    assert space.sampler == "tpe"
    assert space.params["learning_rate"] == Range("loguniform", 1e-6, 1e-3)
    assert space.params["r"] == [8, 16, 32, 64, 128]
    assert space.params["alpha"] == [8, 16, 32, 64]
    assert space.trials(None) == 8
    assert space.trials(3) == 3  # --num_samples wins
    assert isinstance(optuna_sampler(space, seed=0), optuna.samplers.TPESampler)


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
