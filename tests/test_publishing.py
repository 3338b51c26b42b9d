"""Publishing scenarios: the real huggingface_hub client against a local Hub server, and an in-process chain.

The coordinator runs without its thread here, driven step by step on a synthetic clock, so
"20 minutes later" takes no time.
"""

import json
import logging
import shutil
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from ray.tune import Checkpoint

from tests.in_memory_chain import InMemoryChain
from publishing.coordinator import PublishCoordinator, remember
from publishing.publish_state import STATE_FILE, PublishState, state_problem
from publishing.rules import Action
from publishing.subnet.hub import MODEL_CARD, HubClient
from publishing.subnet.model_hash import hash_directory, hash_with_hotkey
from publishing.subnet.model_id import ModelId
from publishing.publisher import Candidate, Publisher, PublishTarget
from publishing.subnet.secrets import Secret
from tests.hub_server import local_hub  # noqa: F401  (the fixture)
from tests.miner_identity import HOTKEY, REPO, TOKEN
from tests.synthetic_clock import Clock


@pytest.fixture
def candidate(adapter_checkpoint):
    def make(eval_loss: float, trial: str = "t1", step: int = 5) -> Candidate:
        return Candidate(trial_id=trial, step=step, eval_loss=eval_loss,
                         hyperparameters={"learning_rate": 1e-3, "r": 8, "alpha": 16},
                         checkpoint=Checkpoint.from_directory(adapter_checkpoint))
    return make


@pytest.fixture
def world(local_hub, model_dir, tmp_path):
    """A coordinator wired to the local Hub and an in-process chain, and a way to build another (a restart)."""
    clock = Clock()
    chain = InMemoryChain(HOTKEY, clock=clock)

    def coordinator(**target_overrides) -> PublishCoordinator:
        settings = {"repo_id": REPO, "competition_id": "m1", "threshold": 10.0, "backoff_s": 0.0,
                    "upload_attempts": 2, "commit_attempts": 2, **target_overrides}
        target = PublishTarget(**settings)
        hub = HubClient(Secret(TOKEN), endpoint=local_hub.url)
        publisher = Publisher(target, str(model_dir), tmp_path / "experiment", "sweep-test", hub=hub, chain=chain,
                              sleep=lambda s: None)
        return PublishCoordinator(publisher, tmp_path / "experiment", clock=clock, background=False)

    class World:
        pass

    w = World()
    w.clock, w.chain, w.hub, w.coordinator, w.experiment = clock, chain, local_hub, coordinator, tmp_path / "experiment"
    return w


def uploads(world) -> list[str]:
    """Commits we made: the Hub opens every new repo with its own commit of .gitattributes."""
    return world.hub.commits(REPO)[1:]


def committed(world) -> list[ModelId]:
    return [ModelId.from_compressed_str(c.data) for _, c in world.chain.history]


def test_a_published_model_is_what_validators_download_and_hash(world, candidate, tmp_path):
    coordinator = world.coordinator()
    coordinator.offer(candidate(4.0))
    assert coordinator.step().action is Action.PUBLISH

    [model_id] = committed(world)
    assert model_id.repo_id == REPO and model_id.competition_id == "m1"
    assert model_id.commit == world.hub.commits(REPO)[-1]
    # recompute the validators' way: download at that commit with from_pretrained's files, hash the snapshot
    api = HfApi(endpoint=world.hub.url, token=TOKEN)
    assert not api.model_info(REPO).private
    snapshot = HubClient(Secret(TOKEN), endpoint=world.hub.url).download(REPO, model_id.commit, tmp_path / "cache")
    assert (snapshot / MODEL_CARD).is_file()  # the card is on the Hub, but from_pretrained never fetches it,
    only_model = tmp_path / "only-model"     # nor the .gitattributes the Hub adds
    shutil.copytree(snapshot, only_model)
    (only_model / MODEL_CARD).unlink()
    (only_model / ".gitattributes").unlink(missing_ok=True)
    assert hash_directory(only_model) == model_id.hash
    state = json.loads((world.experiment / STATE_FILE).read_text())
    assert state["published"][-1]["model_id"] == model_id.to_compressed_str()
    assert state["published"][-1]["eval_loss"] == 4.0


def test_three_better_models_in_the_window_give_one_commit_then_the_best(world, candidate):
    coordinator = world.coordinator()
    coordinator.offer(candidate(4.0, "a"))
    assert coordinator.step().action is Action.PUBLISH
    for minute, (loss, trial) in enumerate([(3.5, "b"), (3.0, "c"), (3.2, "d")], start=1):
        world.clock.now += 60
        coordinator.offer(candidate(loss, trial))
        assert coordinator.step().action is Action.WAIT
    assert len(world.chain.history) == 1 and len(uploads(world)) == 1

    world.clock.now += 20 * 60
    assert coordinator.step().action is Action.PUBLISH
    assert len(world.chain.history) == 2
    state = json.loads((world.experiment / STATE_FILE).read_text())
    assert state["published"][-1]["eval_loss"] == 3.0 and state["published"][-1]["trial"] == "c@5"
    assert coordinator.step().action is Action.SKIP  # and never the same one twice


def test_a_checkpoint_replaced_by_better_ones_gives_way_to_the_new_best(world, candidate, tmp_path):
    # Tune keeps a trial's two best checkpoints: a slow merge can find its checkpoint deleted
    coordinator = world.coordinator()
    gone = Candidate(trial_id="a", step=5, eval_loss=4.0, hyperparameters={"learning_rate": 1e-3, "r": 8, "alpha": 16},
                     checkpoint=Checkpoint.from_directory(tmp_path / "rotated" / "checkpoint_000000"))
    prepare = coordinator.publisher.prepare

    def prepare_while_better_ones_arrive(c):
        if c is gone:
            coordinator.offer(candidate(3.5, "a", step=15))
        return prepare(c)

    coordinator.publisher.prepare = prepare_while_better_ones_arrive
    coordinator.offer(gone)
    assert coordinator.step().action is Action.PUBLISH  # the same step goes on with the new best
    assert len(committed(world)) == 1 and len(uploads(world)) == 1
    assert json.loads((world.experiment / STATE_FILE).read_text())["published"][-1]["trial"] == "a@15"


def test_a_gone_checkpoint_with_nothing_better_is_given_up(world, tmp_path):
    coordinator = world.coordinator()
    coordinator.offer(Candidate(trial_id="a", step=5, eval_loss=4.0, hyperparameters={},
                                checkpoint=Checkpoint.from_directory(tmp_path / "missing")))
    assert coordinator.step().action is Action.SKIP
    assert coordinator.step().action is Action.SKIP  # not tried again
    assert world.chain.history == [] and not world.experiment.joinpath(STATE_FILE).exists()
    assert any("its checkpoint is gone" in line for line in coordinator.lines)


def test_a_worse_or_barely_better_model_is_never_published(world, candidate):
    coordinator = world.coordinator()
    coordinator.offer(candidate(3.0))
    coordinator.step()
    world.clock.now += 3600
    fresh = world.coordinator()  # a later sweep of the same experiment, knowing the published 3.0
    fresh.offer(candidate(2.98, "barely"))  # 0.7% better: loses to the older commitment on the chain
    assert fresh.step().action is Action.SKIP
    fresh.offer(candidate(2.5, "better"))
    assert fresh.step().action is Action.PUBLISH
    other = world.coordinator()
    other.offer(candidate(3.5, "worse"))
    assert other.step().action is Action.SKIP
    assert [m.hash is not None for m in committed(world)] == [True, True]


def test_above_the_threshold_nothing_is_uploaded(world, candidate):
    coordinator = world.coordinator(threshold=2.0)
    coordinator.offer(candidate(3.0))
    assert coordinator.step().action is Action.SKIP
    assert REPO not in world.hub.repos() and world.chain.history == []


def test_an_upload_failure_gives_no_commit(world, candidate):
    coordinator = world.coordinator()
    world.hub.fail_next("commit", times=10, status=500)
    coordinator.offer(candidate(4.0))
    assert coordinator.step().action is Action.RETRY
    assert world.chain.history == []
    assert json.loads((world.experiment / STATE_FILE).read_text() if (world.experiment / STATE_FILE).exists()
                      else '{"uploaded": null}')["uploaded"] is None
    assert any("nothing committed" in line for line in coordinator.lines)


def test_a_private_repo_fails_verification_and_gives_no_commit(world, candidate):
    HfApi(endpoint=world.hub.url, token=TOKEN).create_repo(REPO, private=True)
    coordinator = world.coordinator()
    coordinator.offer(candidate(4.0))
    assert coordinator.step().action is Action.RETRY
    assert world.chain.history == []
    assert any("private" in line for line in coordinator.lines)


def test_a_commit_failure_is_retried_without_a_second_upload(world, candidate):
    world.chain.registered.clear()  # the chain refuses: AccountNotAllowedCommit
    coordinator = world.coordinator()
    coordinator.offer(candidate(4.0))
    assert coordinator.step().action is Action.RETRY
    assert len(uploads(world)) == 1 and world.chain.history == []
    assert json.loads((world.experiment / STATE_FILE).read_text())["uploaded"] is not None

    world.chain.registered.add(HOTKEY)
    restarted = world.coordinator()  # even across a restart, the kept upload is committed, not redone
    restarted.offer(candidate(4.0))
    assert restarted.step().action is Action.PUBLISH
    assert len(uploads(world)) == 1 and len(world.chain.history) == 1
    assert committed(world)[0].commit == uploads(world)[0]


def test_a_restart_inside_the_window_does_not_commit_again(world, candidate):
    first = world.coordinator()
    first.offer(candidate(4.0))
    first.step()
    world.clock.now += 5 * 60
    restarted = world.coordinator()
    restarted.offer(candidate(3.0, "better"))
    assert restarted.step().action is Action.WAIT
    assert len(world.chain.history) == 1

    # another process without our local state: the chain's block still keeps the window shut
    shutil.rmtree(world.experiment / STATE_FILE, ignore_errors=True)
    (world.experiment / STATE_FILE).unlink(missing_ok=True)
    stranger = world.coordinator()
    stranger.offer(candidate(3.0, "better"))
    assert stranger.step().action is Action.WAIT
    assert len(world.chain.history) == 1


def test_an_unevaluated_commitment_is_replaced_only_by_a_model_worth_the_restarted_wait(world, candidate):
    """Competition 4's rules on the tiny model: 460 blocks before validators evaluate a commitment, epsilon 5%."""
    import dataclasses

    from publishing.subnet.epsilon import Epsilon

    coordinator = world.coordinator()
    coordinator.publisher.competition = dataclasses.replace(coordinator.publisher.competition, eval_delay_blocks=460,
                                                            epsilon=Epsilon(0.05, 0.01, 21_600))
    coordinator.offer(candidate(4.0, "a"))
    assert coordinator.step().action is Action.PUBLISH
    world.clock.now += 21 * 60  # the 20-minute window is open, but 105 of 460 blocks have passed
    coordinator.offer(candidate(3.9, "b"))  # 2.5% better: under epsilon, not worth restarting the wait
    held = coordinator.step()
    assert held.action is Action.WAIT and "keeping it" in held.reason and "105 of 460 blocks" in held.reason
    coordinator.offer(candidate(3.6, "c"))  # 10% better: worth it
    replaced = coordinator.step()
    assert replaced.action is Action.PUBLISH and "worth restarting the 460-block wait" in replaced.reason
    assert len(world.chain.history) == 2


def test_hotkey_salted_hash(world, candidate):
    coordinator = world.coordinator(use_hotkey_in_hash=True)
    coordinator.offer(candidate(4.0))
    assert coordinator.step().action is Action.PUBLISH
    [model_id] = committed(world)
    plain = hash_directory(coordinator.publisher.prepare(candidate(4.0)).model_dir)
    assert model_id.hash == hash_with_hotkey(plain, HOTKEY)


def test_the_token_appears_nowhere(world, candidate, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    coordinator = world.coordinator()
    coordinator.offer(candidate(4.0))
    coordinator.step()
    world.hub.fail_next("commit", times=10, status=500)
    world.clock.now += 3600
    coordinator.offer(candidate(3.0, "b"))
    coordinator.step()
    coordinator.finish()
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text
    assert TOKEN not in repr(coordinator.publisher.hub.__dict__.get("_token"))
    for path in world.experiment.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_offline_writes_publish_json_that_parses_the_validators_way(model_dir, candidate, tmp_path):
    target = PublishTarget(repo_id=None, competition_id="m1")
    publisher = Publisher(target, str(model_dir), tmp_path / "exp", "sweep-offline")
    coordinator = PublishCoordinator(publisher, tmp_path / "exp", background=False)
    coordinator.offer(candidate(4.0))
    report = coordinator.finish()
    record = json.loads(Path(report.best.publish_json).read_text())
    assert report.offline and report.published is None
    model_id = ModelId.from_compressed_str(record["model_id"])
    assert model_id.commit is None and model_id.competition_id == "m1"
    assert model_id.hash == record["hash"] == hash_directory(record["model_dir"])
    assert record["eval_loss"] == 4.0 and record["hyperparameters"]["r"] == 8
    assert report.best.model_dir == record["model_dir"]


def test_the_coordinator_reports_how_late_results_reached_it(model_dir, candidate, tmp_path):
    import dataclasses

    clock = Clock()
    publisher = Publisher(PublishTarget(repo_id=None), str(model_dir), tmp_path / "exp", "sweep-lag")
    coordinator = PublishCoordinator(publisher, tmp_path / "exp", clock=clock, background=False)
    for loss, late_s in [(4.0, 0.2), (3.0, 1.5), (5.0, 0.4), (3.5, -0.1)]:  # -0.1: a worker's clock a bit ahead
        coordinator.offer(dataclasses.replace(candidate(loss, step=int(loss * 10)), reported_at=clock.now - late_s))
        clock.now += 60
    coordinator.offer(candidate(6.0))  # no report time (the manual upload's candidates): not counted
    lag = coordinator.finish().result_lag
    assert (lag.count, lag.worst_s, lag.median_s) == (4, 1.5, pytest.approx(0.3))
    assert lag.line() == "4 results reached the coordinator 0.30 s after their report (median; worst 1.50 s, t1@30)"


# -- a damaged publish_state.json costs a warning, never the sweep ------------------------------------------------

GOOD_ENTRY = {"model_id": "miner:tiny-lora:abc123:hash=:m1", "eval_loss": 3.0, "committed_at": 1.0, "block": 7}


@pytest.mark.parametrize("state, fragment", [
    ([], "not a JSON object"),
    ({"published": []}, 'no "uploaded"'),
    ({"published": "none", "uploaded": None}, '"published" is not a list'),
    ({"published": [{"model_id": "miner:tiny-lora:abc123:hash=:m1"}], "uploaded": None}, "lacks eval_loss"),
    ({"published": [{**GOOD_ENTRY, "eval_loss": "low"}], "uploaded": None}, "eval_loss that is not a number"),
    ({"published": [{**GOOD_ENTRY, "model_id": "nonsense"}], "uploaded": None}, "no valid model_id"),
    ({"published": [], "uploaded": {"eval_loss": 2.0}}, '"uploaded" lacks model_id'),
])
def test_state_problems_are_named(state, fragment):
    assert fragment in state_problem(state)


def test_a_usable_state_has_no_problem():
    assert state_problem({"published": [GOOD_ENTRY], "uploaded": None}) is None
    assert state_problem({"published": [], "uploaded": {"model_id": GOOD_ENTRY["model_id"], "eval_loss": 2}}) is None


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]",
                                     b'{"published": [{"x": 1}], "uploaded": null}'])
def test_a_damaged_state_file_is_set_aside_with_one_warning(model_dir, tmp_path, content, capsys):
    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / STATE_FILE).write_bytes(content)
    publisher = Publisher(PublishTarget(repo_id=None), str(model_dir), experiment, "sweep")
    coordinator = PublishCoordinator(publisher, experiment, background=False)
    assert coordinator.state == PublishState()  # empty
    [line] = coordinator.lines
    assert str(experiment / STATE_FILE) in line and "set aside" in line
    assert line in capsys.readouterr().out
    assert (experiment / f"{STATE_FILE}.damaged").read_bytes() == content  # the user's file is kept
    assert not (experiment / STATE_FILE).exists()


def test_a_damaged_state_still_keeps_the_chains_20_minute_window(world, candidate):
    first = world.coordinator()
    first.offer(candidate(4.0))
    assert first.step().action is Action.PUBLISH
    world.clock.now += 5 * 60
    (world.experiment / STATE_FILE).write_text('{"published": [{"model_id": 12}]')  # cut off mid-write by hand
    restarted = world.coordinator()
    assert any("set aside" in line for line in restarted.lines)
    restarted.offer(candidate(3.0, "better"))
    assert restarted.step().action is Action.WAIT  # the window comes from the chain's block
    assert len(world.chain.history) == 1
    world.clock.now += 20 * 60
    assert restarted.step().action is Action.PUBLISH
    assert json.loads((world.experiment / STATE_FILE).read_text())["published"][-1]["trial"] == "better@5"


# -- checkpoints deleted near the end: the next best whose checkpoint remains is merged ------------------------------

def gone_candidate(tmp_path, eval_loss: float, trial: str) -> Candidate:
    return Candidate(trial_id=trial, step=5, eval_loss=eval_loss, hyperparameters={"learning_rate": 1e-4, "r": 16,
                     "alpha": 32}, checkpoint=Checkpoint.from_directory(tmp_path / "deleted" / trial))


def offline_coordinator(model_dir, tmp_path) -> PublishCoordinator:
    publisher = Publisher(PublishTarget(repo_id=None, competition_id="m1"), str(model_dir), tmp_path / "exp", "sweep")
    return PublishCoordinator(publisher, tmp_path / "exp", background=False)


def test_remember_keeps_each_trials_best_few_best_first(candidate):
    kept = []
    for loss in (5.0, 4.0, 4.5, 3.0, 3.5):
        kept = remember(kept, candidate(loss, "a", step=int(loss * 10)))
    kept = remember(kept, candidate(4.8, "b"))
    assert [(c.trial_id, c.eval_loss) for c in kept] == [("a", 3.0), ("a", 3.5), ("a", 4.0), ("b", 4.8)]


def test_when_the_best_checkpoint_is_gone_the_next_best_is_merged(model_dir, candidate, tmp_path):
    coordinator = offline_coordinator(model_dir, tmp_path)
    coordinator.offer(candidate(4.3, "b"))
    coordinator.offer(candidate(4.1, "c"))
    coordinator.offer(gone_candidate(tmp_path, 4.0, "a"))
    report = coordinator.finish()
    assert (report.best.trial_id, report.best.eval_loss, report.best.step) == ("c", 4.1, 5)
    assert report.best.hyperparameters["r"] == 8
    assert Path(report.best.model_dir, "model.safetensors").is_file()
    assert json.loads(Path(report.best.publish_json).read_text())["trial"] == "c@5"
    [line] = [line for line in report.lines if "gone" in line]
    assert "a@5" in line and "using c@5" in line


def test_when_every_checkpoint_is_gone_the_report_says_so(model_dir, tmp_path):
    coordinator = offline_coordinator(model_dir, tmp_path)
    coordinator.offer(gone_candidate(tmp_path, 4.2, "b"))
    coordinator.offer(gone_candidate(tmp_path, 4.0, "a"))
    report = coordinator.finish()
    assert report.best is None
    assert any("no model to merge" in line for line in report.lines)


def test_publishing_falls_back_to_the_next_best_checkpoint(world, candidate, tmp_path):
    coordinator = world.coordinator()
    coordinator.offer(candidate(4.2, "b"))
    coordinator.offer(gone_candidate(tmp_path, 4.0, "a"))
    assert coordinator.step().action is Action.PUBLISH
    assert json.loads((world.experiment / STATE_FILE).read_text())["published"][-1]["trial"] == "b@5"
    assert any("using b@5" in line for line in coordinator.lines)
    report = coordinator.finish()
    assert report.best.trial_id == "b" and report.published.trial == "b@5"


def test_the_typed_state_reads_back_what_it_writes(tmp_path):
    """publish_state.json keeps its format: the typed state writes it and reads it back unchanged."""
    from publishing.publish_state import PublishedModel, UploadedModel, read_state, write_state

    model_id = "ns:name:" + "a" * 40 + ":hash:m1"
    state = PublishState(published=[PublishedModel(model_id=model_id, eval_loss=3.5, trial="t@5", block=120,
                                                   committed_at=1000.0, hyperparameters={"r": 8})],
                         uploaded=UploadedModel(model_id=model_id, eval_loss=3.4))
    write_state(tmp_path / STATE_FILE, state)
    raw = json.loads((tmp_path / STATE_FILE).read_text())
    assert raw["published"][0]["block"] == 120 and raw["uploaded"]["eval_loss"] == 3.4 and state_problem(raw) is None
    assert read_state(tmp_path / STATE_FILE) == (state, None)


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("this message cannot be read")


@pytest.mark.parametrize("where", ["hub", "chain"])
def test_the_publishing_thread_survives_faults_with_empty_or_unreadable_messages(world, candidate, where):
    """`str(TimeoutError()) == ""` once made the catch-all's own error line raise IndexError and killed the thread
    for the rest of the sweep. Faults from the Hub and the chain, of every kind, must each cost one retry."""
    import threading
    import time

    faults = [TimeoutError(), ConnectionError(), Unprintable()]
    lock = threading.Lock()

    def faulty(method):
        def call(*args, **kwargs):
            with lock:
                fault = faults.pop(0) if faults else None
            if fault is not None:
                raise fault
            return method(*args, **kwargs)
        return call

    coordinator = world.coordinator(retry_after_s=0.05)
    coordinator.finish()  # the step-driven coordinator of `world`; a threaded one over the same publisher follows
    threaded = PublishCoordinator(coordinator.publisher, world.experiment, clock=world.clock, background=True)
    if where == "hub":
        threaded.publisher.hub.upload = faulty(threaded.publisher.hub.upload)
    else:
        world.chain.set_commitment = faulty(world.chain.set_commitment)
    threaded.offer(candidate(4.0))
    deadline = time.monotonic() + 60
    while not world.chain.history and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threaded._thread.is_alive(), threaded.lines
    assert len(world.chain.history) == 1 and faults == [], threaded.lines  # each fault cost one retry, then the publish happened
    if where == "chain":  # escaped the publisher: the thread's catch-all names each, and retries
        failures = [line for line in threaded.lines if line.startswith("publishing failed")]
        assert [line.split(":")[1].strip() for line in failures] == ["TimeoutError", "ConnectionError", "Unprintable"]
    else:  # the publisher's own upload retries caught them (2 attempts a publish): one failed publish, then one done
        assert f"upload to {REPO} failed: ConnectionError; nothing committed" in threaded.lines
    threaded.finish()
