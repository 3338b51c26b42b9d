"""--resume loads no pickle this machine's sweeps did not seal: planted Tune state is refused before Ray starts.
(A real sweep's seal, across an interruption and its resume, is checked in tests/test_interrupt.py.)"""

import json
import os
import pickle
import stat

import pytest

from orchestrator import state_seal
from orchestrator.config import ConfigError
from orchestrator.experiment import MARKER, RUNNING, Experiment, write_marker
from orchestrator.run import main
from orchestrator.sealed_search import write_seal


class RunsCode:
    """Unpickling this writes `witness`: what a planted tuner.pkl would do on the miner's machine."""

    def __init__(self, witness: str):
        self.witness = witness

    def __reduce__(self):
        return (open, (self.witness, "w"))


def plant(folder, witness, marker: bool):
    """An experiment folder as an attacker with write access to the storage would leave it."""
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(pickle.dumps(RunsCode(str(witness))))
    (folder / "experiment_state-2026-12-06_10-00-00.json").write_text("{}")
    if marker:  # copied from a real sweep of ours: status running
        write_marker(Experiment(str(folder.parent), folder.name, False), RUNNING, ["python", "-m", "orchestrator.run"])
    return folder


@pytest.mark.parametrize("named", [False, True], ids=["bare --resume, copied marker", "--experiment_name, no marker"])
def test_a_planted_pickle_is_refused_with_one_line_and_never_loaded(tmp_path, capsys, named):
    witness = tmp_path / "code-ran"
    plant(tmp_path / "storage" / "planted", witness, marker=not named)
    argv = ["--storage_path", str(tmp_path / "storage"), "--resume", *(["--experiment_name", "planted"] if named else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lora_sweep_seal.json" in err and "nothing was loaded" in err, err
    assert not witness.exists()


def test_a_forged_seal_or_one_from_another_key_is_refused(tmp_path, capsys):
    witness = tmp_path / "code-ran"
    folder = plant(tmp_path / "storage" / "planted", witness, marker=True)
    state_seal.load_key(create=True)  # this machine has a key (it has run sweeps): the seal is not made with it
    files = {p.name: p.read_bytes() for p in folder.iterdir() if state_seal.is_tune_state(p.name)}
    (folder / state_seal.SEAL_FILE).write_text(json.dumps(state_seal.seal(os.urandom(32), files)))  # another key
    assert main(["--storage_path", str(tmp_path / "storage"), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not match the seal" in err and "tuner.pkl" in err, err
    assert not witness.exists()


def test_sealing_carries_over_only_what_was_sealed_and_binds_each_name(tmp_path):
    key = state_seal.load_key(create=True)
    storage, staging = tmp_path / "storage", tmp_path / "staging"
    storage.mkdir(), staging.mkdir()
    (storage / "tuner.pkl").write_bytes(b"tuner")
    (staging / "experiment_state-s1.json").write_text("{}")
    (staging / "searcher-state-s1.pkl").write_bytes(b"first")
    write_seal(staging, "s1", str(storage / "tuner.pkl"))  # a new sweep's first save: seals tuner.pkl too
    (staging / "searcher-state-s0.pkl").write_bytes(b"planted after the check")  # not this session's, never sealed
    (staging / "searcher-state-s2.pkl").write_bytes(b"second")
    write_seal(staging, "s2", str(storage / "missing"))  # a later save: carries tuner.pkl's digest over
    sealed = json.loads((staging / state_seal.SEAL_FILE).read_text())
    assert set(sealed["files"]) == {"tuner.pkl", "experiment_state-s1.json", "searcher-state-s1.pkl",
                                    "searcher-state-s2.pkl"}
    assert state_seal.unsealed(key, sealed, {"searcher-state-s1.pkl": b"first", "tuner.pkl": b"tuner"}) == []
    # the same bytes under another name, and changed bytes, both fail
    assert state_seal.unsealed(key, sealed, {"searcher-state-s2.pkl": b"first",
                                             "searcher-state-s1.pkl": b"firsT"}) == ["searcher-state-s1.pkl",
                                                                                     "searcher-state-s2.pkl"]
    assert not any(p.name.endswith(".tmp") for p in staging.iterdir())


def test_the_key_is_created_once_for_the_user_only_and_a_missing_one_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(state_seal.KEY_FILE_ENV, str(tmp_path / "config" / "state.key"))
    assert state_seal.load_key(create=False) is None
    key = state_seal.load_key(create=True)
    assert len(key) == 32 and state_seal.load_key(create=True) == key
    assert stat.S_IMODE((tmp_path / "config" / "state.key").stat().st_mode) == 0o600
    monkeypatch.delenv(state_seal.KEY_FILE_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert state_seal.key_path() == tmp_path / "xdg" / "lora-sweep" / "state.key"

    folder = tmp_path / "storage" / "ours"
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"t")
    (folder / state_seal.SEAL_FILE).write_text(json.dumps(state_seal.seal(key, {"tuner.pkl": b"t"})))
    with pytest.raises(ConfigError, match="no state key at .*copy state.key from the machine that started"):
        state_seal.check_sealed(str(folder))
    (tmp_path / "xdg" / "lora-sweep").mkdir(parents=True)
    (tmp_path / "xdg" / "lora-sweep" / "state.key").write_text("not hex")
    with pytest.raises(ConfigError, match="cannot be read"):
        state_seal.check_sealed(str(folder))
    monkeypatch.setenv(state_seal.KEY_FILE_ENV, str(tmp_path / "config" / "state.key"))
    state_seal.check_sealed(str(folder))  # the right key: passes
    assert MARKER not in os.listdir(folder)
