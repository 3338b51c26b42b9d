"""The one typed record of a trial's hyperparameters, as the search space, the trial and the reports use it."""

import numpy as np
import pytest

from trainables.hyperparameters import NAMES, TYPES, Hyperparameters


def test_names_and_types_are_the_records_fields_in_order():
    assert NAMES == ("learning_rate", "r", "alpha")
    assert TYPES == {"learning_rate": float, "r": int, "alpha": int}


def test_from_mapping_casts_and_ignores_other_keys():
    # a Tune config may carry more than the searched names; YAML may give an integer rate, Optuna numpy numbers
    chosen = Hyperparameters.from_mapping({"learning_rate": 1, "r": np.int64(8), "alpha": np.int64(16), "seed": 3})
    assert chosen == Hyperparameters(learning_rate=1.0, r=8, alpha=16)
    assert [type(value) for value in chosen.as_dict().values()] == [float, int, int]


def test_from_mapping_needs_every_name():
    with pytest.raises(KeyError, match="alpha"):
        Hyperparameters.from_mapping({"learning_rate": 1e-4, "r": 8})


def test_as_dict_is_plain_values_in_field_order():
    assert Hyperparameters(8.63e-4, 8, 16).as_dict() == {"learning_rate": 8.63e-4, "r": 8, "alpha": 16}
    assert list(Hyperparameters(8.63e-4, 8, 16).as_dict()) == list(NAMES)


def test_the_summary_and_the_log_line_forms():
    chosen = Hyperparameters(learning_rate=0.000863, r=8, alpha=16)
    assert chosen.describe() == "learning_rate=0.000863  r=8  alpha=16"
    assert Hyperparameters(1e-5, 32, 16).describe() == "learning_rate=1e-05  r=32  alpha=16"
    assert chosen.compact() == "lr=8.63e-04 r=8 alpha=16"


def test_the_trainables_import_nothing_from_the_orchestrator_or_publishing():
    from pathlib import Path

    for path in (Path(__file__).resolve().parents[1] / "trainables").rglob("*.py"):  # trainables/compat/ too
        text = path.read_text()
        assert "from orchestrator" not in text and "import orchestrator" not in text, path
        assert "from publishing" not in text and "import publishing" not in text, path
