"""The driver keeps the coordinator alive: at the sweep's results the PublishCallback checks that the coordinator
actor and its publishing thread live, and when either died, the actor is restarted from its state file and the
summary's lines say when and why. Real Ray, the local Hub server, an in-process chain living in the actor."""

import functools
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune import Checkpoint

from publishing.coordinator_actor import NAMESPACE, actor_name, coordinator_for, start_coordinator
from publishing.publish_state import STATE_FILE
from publishing.publisher import PublishTarget
from publishing.setup import PublishSetup
from publishing.subnet.model_id import ModelId
from publishing.subnet.secrets import Secret
from publishing.tune_callback import PublishCallback
from tests.hub_server import local_hub  # noqa: F401  (the fixture)
from tests.in_memory_chain import InMemoryChain

TOKEN = "hf_test_token"
HOTKEY = "5RestartHotkeyxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
REPO = "miner/restarted"
WHEN = r"\d\d:\d\d:\d\d"


@pytest.fixture(scope="module")
def adapter(model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter of the tiny model as a trial's checkpoint holds it (untrained: merging is what matters)."""
    from peft import LoraConfig, get_peft_model

    from trainables.model_loading import load_causal_lm

    folder = tmp_path_factory.mktemp("checkpoint") / "adapter"
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj"])
    model = get_peft_model(load_causal_lm(str(model_dir), dtype="auto"), lora)
    model.save_pretrained(folder)
    return folder


def exits_once(marker: Path):
    """A --require_win gate that, the first time, ends the publishing thread as a library's sys.exit() would.
    (Made here, not at the module's top: pytest imports this module under a name Ray's workers cannot import, and
    a nested function travels by value.)"""
    def gate(model_dir: str) -> tuple[bool, str]:
        if not marker.exists():
            marker.touch()
            raise SystemExit("a library called sys.exit()")
        return True, "passed the gate"
    return gate


class Sweep:
    """The driver's side as run_sweep has it: the coordinator started and registered, the callback Tune calls."""

    def __init__(self, setup: PublishSetup, model_dir: Path, experiment: Path, adapter: Path, name: str):
        self.experiment, self.adapter, self.name = experiment, adapter, name
        self.link = start_coordinator(setup, str(model_dir), str(experiment), name, work_dir=str(experiment))
        self.link.check_every_s = 0.0  # ping at every result, so the test need not wait for one
        self.callback = PublishCallback(name)

    def report(self, trial_id: str, eval_loss: float, step: int = 5) -> None:
        """A trial's result and its checkpoint, through the callback as Tune's loop calls it."""
        result = {"eval_loss": eval_loss, "step": step, "reported_at": time.time()}
        trial = SimpleNamespace(trial_id=trial_id, last_result=result,
                                config={"learning_rate": 1e-3, "r": 8, "alpha": 16})
        self.callback.on_trial_result(0, [trial], trial, result)
        self.callback.on_checkpoint(0, [trial], trial, Checkpoint.from_directory(self.adapter))

    def results_until(self, done, timeout_s: float = 60.0) -> None:
        """Results (no checkpoints) until `done()`, as a sweep's trials keep reporting."""
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, self.link.lines
            trial = SimpleNamespace(trial_id="other", last_result={}, config={})
            self.callback.on_trial_result(0, [trial], trial, {})
            time.sleep(0.02)

    def state(self) -> dict:
        path = self.experiment / STATE_FILE
        return json.loads(path.read_text()) if path.exists() else {"published": [], "uploaded": None}


def setup_for(hub, interval_s: float, gate=None) -> PublishSetup:
    target = PublishTarget(repo_id=REPO, competition_id="m1", threshold=10.0, interval_s=interval_s, backoff_s=0.0,
                           upload_attempts=2, commit_attempts=2)
    return PublishSetup(target=target, token=Secret(TOKEN), hub_endpoint=hub.url,
                        chain_factory=functools.partial(InMemoryChain, HOTKEY), gate=gate)


@pytest.mark.slow
def test_a_killed_coordinator_is_restarted_from_its_state_file_and_keeps_the_rules(local_ray, local_hub, model_dir,
                                                                                    adapter, tmp_path):
    interval_s = 6.0
    sweep = Sweep(setup_for(local_hub, interval_s), model_dir, tmp_path / "experiment", adapter, "restart-killed")
    try:
        sweep.report("a", 4.0)
        sweep.results_until(lambda: any(line.startswith("published ") for line in sweep.link.lines))
        sweep.report("b", 3.0)  # better, inside the window: it waits, remembered only by the actor (and the link)
        first = sweep.state()["published"][0]

        local_ray.kill(local_ray.get_actor(actor_name("restart-killed"), namespace=NAMESPACE))
        sweep.results_until(lambda: sweep.link.restarts == 1)
        sweep.report("c", 3.5)  # a result the restarted coordinator gets itself: not its best

        # at the end, the restarted coordinator waits for the window and publishes the best, once
        report = sweep.link.finish(wait_for_window=True)
        published = sweep.state()["published"]
        assert [(p["trial"], p["eval_loss"]) for p in published] == [("a@5", 4.0), ("b@5", 3.0)]
        assert published[1]["committed_at"] - first["committed_at"] >= interval_s  # the window held across the restart
        assert local_hub.commits(REPO)[1:] == [ModelId.from_compressed_str(p["model_id"]).commit for p in published]
        assert report.published.trial == "b@5" and report.best.trial_id == "b"

        [restart] = [i for i, line in enumerate(report.lines) if "restarted from its state file" in line]
        assert re.fullmatch(rf"the coordinator's actor died by {WHEN} \(ActorDiedError: [^\n]+\); restarted from its "
                            rf"state file at {WHEN}", report.lines[restart])
        # the dead actor's lines (read by the checks) come first, then the restart, then the new actor's
        assert any(line.startswith("published ") for line in report.lines[:restart])
        assert any(line.startswith("published ") for line in report.lines[restart + 1:])
    finally:
        sweep.link.stop()
    assert coordinator_for("restart-killed") is None


@pytest.mark.slow
def test_a_dead_publishing_thread_gets_the_actor_restarted(local_ray, local_hub, model_dir, adapter, tmp_path):
    gate = exits_once(tmp_path / "exited")
    sweep = Sweep(setup_for(local_hub, 1200.0, gate), model_dir, tmp_path / "experiment", adapter, "restart-thread")
    try:
        sweep.report("a", 4.0)  # the thread merges it, and dies in the gate before uploading anything
        sweep.results_until(lambda: sweep.link.restarts == 1)
        assert (tmp_path / "exited").exists() and sweep.state()["published"] == []
        # the restarted actor got the candidate again, and publishes it
        sweep.results_until(lambda: len(sweep.state()["published"]) == 1)
        sweep.report("b", 4.5)  # worse than the published model: never published
        report = sweep.link.finish(wait_for_window=False)

        assert [p["trial"] for p in sweep.state()["published"]] == ["a@5"]
        assert len(local_hub.commits(REPO)[1:]) == 1
        assert report.not_before is None and report.best.trial_id == "a"
        assert any(re.fullmatch(rf"the coordinator's publishing thread ended at {WHEN} \(SystemExit: a library called "
                                rf"sys.exit\(\)\); restarted from its state file at {WHEN}", line)
                   for line in report.lines), report.lines

        # the check costs Tune's loop little: a ping every CHECK_EVERY_S, its answer read without waiting
        sweep.link.check_every_s = 5.0
        trial = SimpleNamespace(trial_id="a", last_result={}, config={})
        started = time.perf_counter()
        for _ in range(1000):
            sweep.callback.on_trial_result(0, [trial], trial, {})
        assert (time.perf_counter() - started) / 1000 < 0.005
    finally:
        sweep.link.stop()


def test_restarts_stop_after_the_limit_and_the_sweep_goes_on(local_ray, model_dir, adapter, tmp_path):
    sweep = Sweep(PublishSetup(target=PublishTarget(repo_id=None)), model_dir, tmp_path / "experiment", adapter,
                  "restart-limit")
    sweep.link.max_restarts = 1
    try:
        for restarts in (1, 2):  # killed twice: restarted once, then given up
            local_ray.kill(sweep.link.actor)
            sweep.results_until(lambda: len([line for line in sweep.link.lines if "died" in line]) == restarts)
        sweep.report("a", 4.0)  # the sweep goes on: a result after the coordinator is gone is no error
        report = sweep.link.finish(wait_for_window=False)
        assert sweep.link.restarts == 1 and report.best is None
        assert report.lines[-1].endswith("; not restarted again after 1 restarts: the sweep goes on, and nothing "
                                         "more is published or merged by it")
    finally:
        sweep.link.stop()
