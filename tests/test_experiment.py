"""Where a sweep writes, and which experiment --resume continues: decided before Ray starts."""

import json
import os

import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.experiment import (FINISHED, INTERRUPTED, MARKER, RUNNING, Experiment, choose_experiment,
                                     read_marker, write_marker)
from orchestrator.state_seal import SEAL_FILE, load_key, seal


def fake_tune_experiment(folder, status=None, mtime=None):
    """A folder Tune could restore (its state files), with our marker when `status` is given."""
    folder.mkdir(parents=True)
    (folder / "experiment_state-2026.json").write_text("{}")
    (folder / "tuner.pkl").write_bytes(b"")
    files = {name: (folder / name).read_bytes() for name in ("experiment_state-2026.json", "tuner.pkl")}
    (folder / SEAL_FILE).write_text(json.dumps(seal(load_key(create=True), files)))  # as the sweep's saves seal them
    if status:
        write_marker(Experiment(str(folder.parent), folder.name, False), status)
    if mtime:
        os.utime(folder, (mtime, mtime))
    return folder


def test_a_new_experiment_gets_a_timestamped_name_inside_storage(tmp_path):
    experiment = choose_experiment(load_config(["--storage_path", str(tmp_path / "s")]))
    assert experiment.name.startswith("lora-sweep-") and not experiment.resume
    assert experiment.path == str(tmp_path / "s" / experiment.name)


def test_storage_that_is_a_file_or_cannot_be_written_is_refused(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        choose_experiment(load_config(["--storage_path", str(a_file)]))
    with pytest.raises(ConfigError, match="cannot be written"):
        choose_experiment(load_config(["--storage_path", str(a_file / "below")]))


def test_resuming_a_named_experiment_that_is_not_there_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no experiment 'gone' to continue"):
        choose_experiment(load_config(["--storage_path", str(tmp_path), "--resume", "--experiment_name", "gone"]))


def test_a_bare_resume_continues_only_an_unfinished_sweep_of_ours(tmp_path):
    fake_tune_experiment(tmp_path / "ours-killed", RUNNING, mtime=1000)
    fake_tune_experiment(tmp_path / "ours-interrupted", INTERRUPTED, mtime=2000)
    fake_tune_experiment(tmp_path / "ours-done", FINISHED, mtime=3000)
    fake_tune_experiment(tmp_path / "planted", None, mtime=4000)  # newest, but no marker: not ours
    experiment = choose_experiment(load_config(["--storage_path", str(tmp_path), "--resume"]))
    assert experiment.name == "ours-interrupted" and experiment.resume


def test_a_bare_resume_with_nothing_to_continue_is_one_line(tmp_path):
    fake_tune_experiment(tmp_path / "planted", None)
    fake_tune_experiment(tmp_path / "ours-done", FINISHED)
    with pytest.raises(ConfigError, match="found no unfinished sweep of this miner"):
        choose_experiment(load_config(["--storage_path", str(tmp_path), "--resume"]))


def test_the_marker_keeps_the_command_and_follows_the_status(tmp_path):
    experiment = Experiment(str(tmp_path), "e", False)
    write_marker(experiment, RUNNING, ["python", "-m", "orchestrator.run"])
    write_marker(experiment, FINISHED)
    marker = json.loads((tmp_path / "e" / MARKER).read_text())
    assert marker["status"] == FINISHED and marker["command"] == ["python", "-m", "orchestrator.run"]
    (tmp_path / "e" / MARKER).write_text("garbage")
    assert read_marker(tmp_path / "e") is None  # damaged: not resumed blindly, and no crash


def test_a_storage_uri_that_holds_credentials_is_named_and_a_query_stays_at_the_end():
    from publishing import storage

    assert storage.credentials_in("s3://AKIAEXAMPLE:se/cr+et@bucket/sweeps").startswith("credentials before")
    assert storage.credentials_in("s3://bucket/sweeps?region=eu-west-1&Secret_Key=x") == "the query parameter secret_key"
    assert storage.credentials_in("s3://bucket/sweeps?endpoint_override=127.0.0.1:9000&scheme=http") is None
    assert storage.credentials_in("/home/me/ray_results") is None
    assert (storage.join("s3://bucket/sweeps/?endpoint_override=h:1", "e", "x.json")
            == "s3://bucket/sweeps/e/x.json?endpoint_override=h:1")
    assert storage.name("s3://bucket/sweeps/e/?endpoint_override=h:1") == "e"
