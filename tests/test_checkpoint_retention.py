"""Trials delete their own stale checkpoints (the driver's loop does no storage call per checkpoint), and never
one that a Tune snapshot may still name as a trial's latest."""

import shutil
import sys
from pathlib import Path

from tests.synthetic_clock import Clock
from trainables.checkpoint_retention import GRACE_S, Retention, Saved, kept_line, leftovers, stale

LOSSES = [3.0, 1.0, 2.5, 0.5, 2.8, 2.9, float("nan"), 2.7]


def test_a_checkpoint_is_stale_once_it_is_not_among_the_two_best_and_its_successor_is_past_the_grace():
    # one checkpoint a minute, and 200 s after the last: 0 to 4 were superseded more than 5 minutes ago
    saved = [Saved(i, loss, registered_at=60.0 * i) for i, loss in enumerate(LOSSES)]
    now = 60.0 * 7 + 200
    assert [s.order for s in stale(saved, now)] == [0, 2, 4]  # 1 and 3 are the best; 5 onwards are within the grace
    assert [s.order for s in stale(saved, now, grace_s=0)] == [0, 2, 4, 5, 6]  # never the latest, 7
    # a NaN loss never counts among the best
    assert [s.order for s in stale(saved, now=1e9, keep_best=len(LOSSES))] == [6]
    nan_first = [Saved(0, float("nan"), 0.0), Saved(1, 2.0, 0.0), Saved(2, 3.0, 0.0), Saved(3, 4.0, 0.0)]
    assert [s.order for s in stale(nan_first, now=1e9)] == [0]  # 1 and 2 are the best, 3 the latest


def test_once_the_sweep_is_over_a_trial_keeps_its_two_best_and_its_latest():
    names = [f"c{i}" for i in range(len(LOSSES))]
    assert leftovers(list(zip(names, LOSSES))) == ["c0", "c2", "c4", "c5", "c6"]  # kept: c1, c3 (best), c7 (latest)
    assert leftovers([("c0", 1.0), ("c1", 2.0), ("c2", 3.0)]) == []
    assert leftovers([]) == []
    # what the driver prints once it has deleted them (orchestrator.sweep), from the same rule
    assert kept_line(5) == "checkpoints: kept each trial's 2 best and its latest; deleted 5 more"


def _checkpoint(folder: Path):
    from ray import tune

    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    return tune.Checkpoint.from_directory(folder)


def test_retention_deletes_stale_folders_only_after_the_grace_and_shrugs_at_one_already_gone(tmp_path):
    clock = Clock(1_000.0)
    retention = Retention(clock=clock)
    deleted = []
    for i, loss in enumerate(LOSSES):  # a checkpoint every 2 minutes
        deleted += retention.saved_checkpoint(_checkpoint(tmp_path / f"checkpoint_{i:06d}"), loss)
        clock.now += 120
    # by the last report (840 s after the first), 0 and 2 had been superseded for more than 300 s
    assert sorted(Path(p).name for p in deleted) == ["checkpoint_000000", "checkpoint_000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"checkpoint_{i:06d}" for i in (1, 3, 4, 5, 6, 7)]

    shutil.rmtree(tmp_path / "checkpoint_000005")  # deleted by hand before its turn: nothing fails
    clock.now += GRACE_S
    retention.saved_checkpoint(_checkpoint(tmp_path / "checkpoint_000008"), 0.1)  # the new best: 1.0 is out of the two
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"checkpoint_{i:06d}" for i in (3, 7, 8)]
    assert [s.order for s in retention.saved] == [3, 7, 8]


def test_a_deletion_that_fails_is_tried_again_later_and_never_fails_the_trial(tmp_path):
    class Flaky:
        """A pyarrow-like file system whose deletions fail until it is told otherwise."""
        failing = True

        def delete_dir(self, path):
            if self.failing:
                raise OSError("503 Slow Down")
            Path(path).rename(Path(path).with_suffix(".deleted"))

    fs = Flaky()

    class Checkpoint:
        def __init__(self, path):
            (tmp_path / path).mkdir()
            self.path, self.filesystem = str(tmp_path / path), fs

    clock = Clock(1_000.0)
    retention = Retention(keep_best=1, grace_s=0, clock=clock)
    for name, loss in [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)]:  # b is stale from d on: its deletion fails
        assert retention.saved_checkpoint(Checkpoint(name), loss) == []
        clock.now += 1
    assert (tmp_path / "b").is_dir() and [s.order for s in retention.saved] == [0, 1, 2, 3]
    fs.failing = False
    assert retention.saved_checkpoint(Checkpoint("e"), 5.0) == [str(tmp_path / "b"), str(tmp_path / "c")]


def keep_what_retention_keeps(config):
    """A Tune trial that checkpoints LOSSES as lora_trainable does: report, then hand Tune's stored copy on."""
    import tempfile

    from ray import tune

    from trainables.checkpoint_retention import Retention

    retention = Retention(grace_s=0)
    for loss in config["losses"]:
        folder = tempfile.mkdtemp()
        Path(folder, "adapter_model.safetensors").write_bytes(b"x")
        tune.report({"eval_loss": loss}, checkpoint=tune.Checkpoint.from_directory(folder))
        retention.saved_checkpoint(tune.get_checkpoint(), loss)


def test_in_a_real_tune_run_the_trial_deletes_its_stored_checkpoints(local_ray, tmp_path):
    from ray import cloudpickle, tune

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tuner = tune.Tuner(keep_what_retention_keeps, param_space={"losses": LOSSES},
                       run_config=tune.RunConfig(name="kept", storage_path=str(tmp_path), verbose=0,
                                                 checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    [result] = tuner.fit()
    assert result.error is None
    [trial] = [p for p in (tmp_path / "kept").iterdir() if p.is_dir() and p.name.startswith("keep_what")]
    # the two best (1.0, 0.5) and the latest stay
    assert sorted(p.name for p in trial.glob("checkpoint_*")) == [
        "checkpoint_000001", "checkpoint_000003", "checkpoint_000007"]
