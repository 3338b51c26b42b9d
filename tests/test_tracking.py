"""W&B in offline mode: every trial a run grouped by sweep, plus a summary run; the key never leaks."""

import time

import pytest

from orchestrator.run import main
from tests.conftest import own_stderr

KEY = "wandb_secret_key_for_tests_0123456789"


@pytest.mark.slow
def test_wandb_logs_every_trial_and_the_summary(local_ray, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f'WANDB_API_KEY="{KEY}"\n')  # as in the original miner
    # fifo: both trials run to their last, full evaluation (ASHA could stop one before any eval_loss, depending on
    # which trial reports first; what is tested here is what W&B receives, not early stopping)
    code = main(["--num_samples", "2", "--num_epochs", "1", "--scheduler", "fifo", "--wandb_entity", "me",
                 "--wandb_project", "sweeps",
                 "--storage_path", str(tmp_path / "results"), "--experiment_name", "wb", "--no-dashboard"])
    assert code == 0
    runs = sorted((tmp_path / "results" / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 3

    def complete() -> bool:
        trial_runs = [c for c in (run.read_bytes() for run in runs) if b"sweep-summary" not in c]
        return len(trial_runs) == 2 and all(b"eval_loss" in c and b"learning_rate" in c for c in trial_runs)

    # each run's file is written by W&B's own service process, which may still be flushing a run that Ray's logging
    # actor has just finished
    deadline = time.monotonic() + 30
    while not complete() and time.monotonic() < deadline:
        time.sleep(0.5)
    contents = [run.read_bytes() for run in runs]
    trial_runs = [c for c in contents if b"sweep-summary" not in c]
    [summary_run] = [c for c in contents if b"sweep-summary" in c]
    assert len(trial_runs) == 2
    assert all(b"learning_rate" in c for c in trial_runs), [c[:300] for c in trial_runs]
    assert all(b"eval_loss" in c for c in trial_runs), [len(c) for c in trial_runs]
    assert b"best_eval_loss" in summary_run and b"wb-summary" in summary_run

    out = capsys.readouterr()
    assert KEY not in out.out + out.err
    for path in (tmp_path / "results").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_wandb_flags_come_in_pairs_and_need_a_key(monkeypatch, tmp_path, capsys):
    import orchestrator.ray_start

    monkeypatch.setattr(orchestrator.ray_start, "start_ray", lambda c: (_ for _ in ()).throw(AssertionError("Ray")))
    assert main(["--wandb_project", "p"]) == 2
    assert "needs both --wandb_entity and --wandb_project" in capsys.readouterr().err
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))  # no stored `wandb login`
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["--wandb_project", "p", "--wandb_entity", "e"]) == 2
    err = own_stderr(capsys)
    assert "W&B logging needs WANDB_API_KEY" in err and err.count("\n") == 1
