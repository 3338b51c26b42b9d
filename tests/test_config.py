import pytest

import yaml

from orchestrator.config import DEFAULT_CONFIG, FIELDS, ConfigError, SweepConfig, load_config, read_yaml_settings
from publishing.subnet.competitions import load_competitions, owned_settings


def test_default_yaml_is_the_embedded_sweep():
    config = load_config([])
    assert config.search.search == "default"
    assert config.data.load_model_dir is None and config.data.dataset_path is None
    assert config.search.scheduler == "asha"


def test_flags_override_yaml_and_yaml_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_epochs: 7\nbatch_size: 4\n")
    config = load_config(["--config", str(path), "--batch_size", "2", "--scheduler", "fifo"])
    assert config.training.num_epochs == 7  # from the YAML
    assert config.training.batch_size == 2  # the flag wins
    assert config.search.scheduler == "fifo"
    assert config.training.accumulation_steps == SweepConfig().training.accumulation_steps  # untouched: the dataclass default


def test_on_and_off_read_from_yaml_as_words_not_booleans(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("packing: off\ngradient_checkpointing: on\n")  # YAML 1.1 parses both as booleans
    config = load_config(["--config", str(path)])
    assert (config.training.packing, config.training.gradient_checkpointing) == ("off", "on")
    assert load_config([]).training.packing == "on"  # the shipped default.yaml says `packing: on`


def test_boolean_flags():
    assert load_config(["--no-dashboard"]).run.dashboard is False
    assert load_config(["--offline"]).publishing.offline is True


@pytest.mark.parametrize("argv, fragment", [
    (["--learning_rate", "1"], "unrecognized arguments: --learning_rate"),
    (["--num_samples", "0"], "--num_samples must be at least 1"),
    (["--num_samples", "many"], "invalid int value"),
    (["--cpus_per_trial", "100000"], "more than this machine's"),
    (["--scheduler", "hyperband"], "--scheduler must be one of asha, fifo"),
    (["--competition_id", "zz"], "--competition_id: unknown competition 'zz'"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--eval_fraction", "1.5"], "--eval_fraction must be between 0 and 1"),
    (["--max_concurrent_trials", "0"], "--max_concurrent_trials must be at least 1"),
    (["--config", "/nonexistent.yaml"], "does not exist"),
    (["--packing", "yes"], "--packing must be one of on, off"),
    (["--gradient_checkpointing", "always"], "--gradient_checkpointing must be one of auto, on, off"),
    (["--attn_implementation", "flash"], "--attn_implementation must be one of auto, sdpa"),
    (["--micro_batch_tokens", "-5"], "--micro_batch_tokens must be 0 (automatic) or more"),
])
def test_bad_flags_raise_one_clear_line(argv, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(argv)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_yaml_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_epochs: 1\nlearnin_rate: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'learnin_rate'"):
        load_config(["--config", str(path)])


def test_yaml_value_of_the_wrong_type(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_epochs: three\n")
    with pytest.raises(ConfigError, match="num_epochs .* must be int"):
        read_yaml_settings(path)


def test_cpus_per_trial_is_not_checked_against_this_machine_on_a_cluster():
    config = load_config(["--address", "auto", "--cpus_per_trial", "64"])
    assert config.run.cpus_per_trial == 64


def test_shipped_yaml_has_only_known_keys():
    assert read_yaml_settings(DEFAULT_CONFIG)


@pytest.mark.parametrize("argv, fragment", [
    (["--weight_decay", "nan"], "--weight_decay must be a finite number"),
    (["--warmup_ratio", "inf"], "--warmup_ratio must be a finite number"),
    (["--avg_loss_upload_threshold=-inf"], "--avg_loss_upload_threshold must be a finite number"),
    (["--num_sample", "2"], "unrecognized arguments: --num_sample"),  # a prefix is not a flag
    (["--experiment_name", "../outside"], "must be a plain folder name"),
    (["--experiment_name", "a/b"], "must be a plain folder name"),
    (["--experiment_name", ".hidden"], "must be a plain folder name"),
])
def test_non_finite_numbers_prefixes_and_path_like_names_are_refused(argv, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(argv)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_non_finite_number_in_yaml_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora_dropout: .nan\n")
    with pytest.raises(ConfigError, match="--lora_dropout must be a finite number"):
        load_config(["--config", str(path)])


def test_help_shows_the_defaults_that_apply(capsys, tmp_path):
    """--help shows configs/default.yaml's values (num_epochs 5 there, 1 in the dataclass), or a --config's."""
    with pytest.raises(SystemExit):
        load_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "passes over the training pairs per trial (default: 5)" in text
    path = tmp_path / "c.yaml"
    path.write_text("num_epochs: 9\n")
    with pytest.raises(SystemExit):
        load_config(["--config", str(path), "--help"])
    assert "passes over the training pairs per trial (default: 9)" in " ".join(capsys.readouterr().out.split())


def _value(config: SweepConfig, name: str):
    from orchestrator.config import FIELD_GROUP

    return getattr(getattr(config, FIELD_GROUP[name]), name)


@pytest.mark.parametrize("competition", sorted(load_competitions()))
def test_every_competition_setting_comes_from_the_competition(competition):
    """Nothing the shipped default.yaml sets may pin what a competition defines (it once pinned max_length 2048,
    so competition 4 trained on its short samples only)."""
    rules = load_competitions()[competition]
    config = load_config(["--competition_id", competition])
    owned = owned_settings(rules)
    assert set(owned) <= set(FIELDS) and not set(owned) & set(read_yaml_settings(DEFAULT_CONFIG))
    for name, value in owned.items():
        assert _value(config, name) == value, name
    assert config.data.max_length == rules.sequence_length and config.publishing.netuid == rules.netuid


def test_competition_4_trains_on_its_whole_sequence_length():
    config = load_config(["--competition_id", "4"])
    assert config.data.max_length == 16384 and config.publishing.netuid == 37
    assert config.publishing.use_hotkey_in_hash is True


def test_a_users_flag_or_yaml_still_wins_over_the_competition(tmp_path):
    flags = load_config(["--competition_id", "4", "--max_length", "4096", "--netuid", "1",
                         "--publish_min_improvement", "0.03", "--eval_samples_per_task", "7"])
    assert (flags.data.max_length, flags.publishing.netuid, flags.publishing.publish_min_improvement,
            flags.data.eval_samples_per_task) == (4096, 1, 0.03, 7)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"max_length": 8192, "num_epochs": 1}))
    assert load_config(["--config", str(path), "--competition_id", "4"]).data.max_length == 8192


def test_a_short_max_length_says_how_many_samples_it_cuts(model_dir, capsys):
    from orchestrator.inputs import prepare_data

    prepare_data(load_config(["--max_length", "16"]), model_dir)  # the bundled pairs: up to 25 tokens
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "--max_length (16)" in line)
    assert line.startswith("note: cut ") and "competition m1 scores up to 2048 tokens" in line
    prepare_data(load_config([]), model_dir)
    assert "--max_length" not in capsys.readouterr().out  # the competition's own length: nothing to say


def test_help_is_grouped_lists_choices_and_shows_one_true_default(capsys):
    with pytest.raises(SystemExit):
        load_config(["--help"])
    text = capsys.readouterr().out
    for title in ("search:", "starting model and data:", "training:", "publishing:", "comparison:", "tracking:",
                  "commands:"):
        assert f"\n{title}" in text, title
    assert "--scheduler {asha,fifo}" in text and "--packing {on,off}" in text
    assert "--no-list_competitions" not in text and "--no-dashboard" in text
    flat = " ".join(text.split())
    assert "(default: None)" not in flat
    assert "(default: the competition's sequence length: 2048 for m1 and g1, 16384 for 4)" in flat
    for flag in ("--num_samples", "--max_length", "--netuid", "--experiment_name"):
        help_text = flat.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert help_text.count("default") == 1, (flag, help_text)


def test_list_competitions_prints_every_rule_without_a_sweep(capsys):
    from orchestrator.run import main

    assert main(["--list_competitions"]) == 0
    out = capsys.readouterr().out
    assert "competition m1 (netuid 6" in out and "competition 4 (netuid 37" in out
    assert "sequence length: 16,384" in out and "(120 samples a task)" in out
