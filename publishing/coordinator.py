"""PublishCoordinator: keeps the single best checkpoint of the sweep and publishes it by the rules.

Fed every trial result by `PublishCallback` (a Tune callback), it decides with the pure rules
in `publishing.rules`, and does the slow work (merge, upload, commit) on its own thread, so
Tune's loop never waits for it. Its state (what was published, when, with which loss, and an
upload still waiting for its commit) lives in `publish_state.json` in the experiment folder,
so a restarted sweep neither publishes twice nor forgets the 20-minute window.

The class is plain Python (tests drive it with a synthetic clock); `remote_coordinator` makes
it the named Ray actor.
"""

import json
import logging
import math
import threading
import time
from dataclasses import asdict
from pathlib import Path

from publishing.chain import BLOCK_SECONDS
from publishing.merged_model import CheckpointGone
from publishing.model_checks import ModelCheckError
from publishing.model_id import ModelId
from publishing.package import PackageError
from publishing.publisher import Candidate, CommitFailed, Publisher, UploadFailed
from publishing.rules import Decision, decide, last_commit_time

log = logging.getLogger("publishing")
STATE_FILE = "publish_state.json"
PUBLISH_FILE = "publish.json"
ACTOR_NAME = "PublishCoordinator"


class PublishCoordinator:
    def __init__(self, publisher: Publisher, experiment_dir: str | Path, clock=time.time, background: bool = True,
                 gate=None):
        """`gate(model_dir) -> (publish?, reason)`: a last check on a prepared model (--require_win)."""
        self.publisher, self.target, self.gate = publisher, publisher.target, gate
        self.experiment_dir = Path(experiment_dir)
        self.clock = clock
        self.state = self._load_state()
        self.best: Candidate | None = None
        self.lines: list[str] = []            # every outcome, one line each, for the log and the summary
        self._lock = threading.Lock()         # guards best and state
        self._work = threading.Lock()         # one publish at a time
        self._wake = threading.Event()
        self._stopping = False
        self._warned_unknown = False
        self._rejected: set[str] = set()      # candidates that break the competition's limits
        self._thread = threading.Thread(target=self._loop, daemon=True, name="publish") if background else None
        if self._thread:
            self._thread.start()

    # -- state ---------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.experiment_dir / STATE_FILE

    def _load_state(self) -> dict:
        if self.state_path.is_file():
            return json.loads(self.state_path.read_text())
        return {"published": [], "uploaded": None}

    def _save_state(self) -> None:
        self.experiment_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.state_path)  # atomic: a crash never leaves half a state file

    def _note(self, line: str) -> None:
        log.info(line)
        print(f"[publish] {line}", flush=True)
        self.lines.append(line)

    @property
    def published(self) -> dict | None:
        return self.state["published"][-1] if self.state["published"] else None

    # -- the rules -----------------------------------------------------------------------------
    def _published_loss(self) -> float | None:
        """The loss of the model the hotkey has on the chain, when we know it (we committed it)."""
        chain = self.publisher.chain
        if self.published is None:
            return None
        if chain is not None:
            current = chain.read_commitment(chain.hotkey_ss58)
            if current is not None and current.data != self.published["model_id"]:
                if not self._warned_unknown:
                    self._note(f"the hotkey's committed model {current.data} was not published by this experiment; "
                               "its loss on our eval set is unknown, so it is not compared")
                    self._warned_unknown = True
                return None
        return self.published["eval_loss"]

    def _last_committed_at(self, now: float) -> float | None:
        chain = self.publisher.chain
        chain_block = current_block = None
        if chain is not None:
            commitment = chain.read_commitment(chain.hotkey_ss58)
            if commitment is not None:
                chain_block, current_block = commitment.block, chain.current_block()
        local = self.published["committed_at"] if self.published else None
        return last_commit_time(now, local, chain_block, current_block, BLOCK_SECONDS)

    def decision(self, candidate: Candidate, now: float) -> Decision:
        return decide(candidate.eval_loss, threshold=self.target.threshold, published_loss=self._published_loss(),
                      min_improvement=self.target.min_improvement, now=now,
                      last_committed_at=self._last_committed_at(now), interval_s=self.target.interval_s)

    # -- feeding -------------------------------------------------------------------------------
    def offer(self, candidate: Candidate) -> bool:
        """Record a trial result; True when it is the new best. Never blocks on publishing."""
        with self._lock:
            if not math.isfinite(candidate.eval_loss):
                return False
            if self.best is not None and candidate.eval_loss >= self.best.eval_loss:
                return False
            self.best = candidate
        self._wake.set()
        return True

    def step(self) -> Decision | None:
        """Publish the best candidate if the rules allow it now; one call does at most one publish."""
        if self.target.repo_id is None:
            return None  # offline: nothing is published during the sweep
        with self._work:
            with self._lock:
                candidate = self.best
            if candidate is None:
                return None
            if candidate.key in self._rejected:
                return Decision("skip", f"{candidate.key} was refused before (limits or --require_win)")
            decision = self.decision(candidate, self.clock())
            if decision.action != "publish":
                return decision
            try:
                prepared = self.publisher.prepare(candidate)
            except CheckpointGone:
                # Tune keeps each trial's two best checkpoints, so this one went when its trial made two better
                # ones, which were offered too: go on with the newest best, or give this one up if there is none.
                with self._lock:
                    moved_on = self.best is not candidate
                if not moved_on:
                    self._rejected.add(candidate.key)
                    self._note(f"not publishing {candidate.key}: its checkpoint is gone")
                    return Decision("skip", "checkpoint gone")
                self._wake.set()
                return Decision("retry", f"{candidate.key}'s checkpoint was replaced by a better one")
            except (ModelCheckError, PackageError) as e:
                self._rejected.add(candidate.key)
                self._note(f"not publishing {candidate.key}: {e}")
                return Decision("skip", str(e))
            if self.gate is not None:
                passed, reason = self.gate(prepared.model_dir)
                self._note(f"{candidate.key} {reason}")
                if not passed:
                    self._rejected.add(candidate.key)
                    return Decision("skip", reason)
            if not self._publish(candidate):
                return Decision("retry", "publishing failed; it is tried again later")
            return decision

    def _loop(self) -> None:
        while not self._stopping:
            decision = None
            try:
                decision = self.step()
            except Exception as e:  # the thread must outlive any one failure; the failure is reported
                self._note(f"publishing failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            timeout = None
            if decision is not None and decision.action == "wait":
                timeout = max(1.0, decision.not_before - self.clock())
            elif decision is not None and decision.action == "retry":
                timeout = self.target.retry_after_s
            self._wake.wait(timeout)
            self._wake.clear()

    # -- the irreversible part -----------------------------------------------------------------
    def _publish(self, candidate: Candidate) -> bool:
        uploaded = self.state["uploaded"]
        if uploaded and uploaded["eval_loss"] <= candidate.eval_loss:
            # an earlier upload is still waiting for its commit and is as good: commit it, upload nothing
            model_id = ModelId.from_compressed_str(uploaded["model_id"])
            self._note(f"retrying the chain commit of {model_id.repo_id}@{model_id.commit[:8]} without re-uploading")
        else:
            prepared = self.publisher.prepare(candidate)
            try:
                commit = self.publisher.upload(prepared, candidate)
            except UploadFailed as e:
                self._note(f"{e}; nothing committed")
                return False
            model_id = self.publisher.model_id(prepared, commit)
            uploaded = {"model_id": model_id.to_compressed_str(), "eval_loss": candidate.eval_loss,
                        "hash": prepared.hash, "trial": candidate.key, "uploaded_at": self.clock(),
                        "hyperparameters": candidate.hyperparameters}
            with self._lock:
                self.state["uploaded"] = uploaded
                self._save_state()
            self._note(f"uploaded {model_id.repo_id}@{commit[:8]} (eval loss {candidate.eval_loss:.4f})")
        try:
            commitment = self.publisher.commit(model_id)
        except CommitFailed as e:
            self._note(f"chain commit failed: {e}; the upload is kept and the commit will be retried")
            return False
        with self._lock:
            self.state["published"].append({**uploaded, "block": commitment.block, "committed_at": self.clock()})
            self.state["uploaded"] = None
            self._save_state()
        self._note(f"published {uploaded['model_id']} at block {commitment.block} "
                   f"(eval loss {uploaded['eval_loss']:.4f})")
        return True

    # -- the end of the sweep ------------------------------------------------------------------
    def finish(self, wait_for_window: bool = False) -> dict:
        """Publish (or, offline, prepare) the best unpublished model; return what the summary prints."""
        self._stopping = True
        self._wake.set()
        if self._thread:
            self._thread.join()
        report = {"lines": self.lines, "published": None, "publish_json": None, "not_before": None,
                  "best_model_dir": None, "offline": self.target.repo_id is None}
        candidate = self.best
        if candidate is None:
            return report
        if self.target.repo_id is not None:
            decision = self.step()
            while decision is not None and decision.action == "wait" and wait_for_window:
                self._note(f"waiting for the window: {decision.reason}")
                time.sleep(max(0.0, decision.not_before - self.clock()))
                decision = self.step()
            if decision is not None and decision.action == "wait":
                report["not_before"] = decision.not_before
                self._note(f"the best model (eval loss {candidate.eval_loss:.4f}) is not published yet: "
                           f"{decision.reason}")
            elif decision is not None and decision.action == "skip":
                self._note(f"the best model is not published: {decision.reason}")
        report["published"] = self.published
        report["publish_json"] = str(self.write_publish_json(candidate))
        report["best_model_dir"] = self.publisher.prepare(candidate).model_dir
        return report

    def write_publish_json(self, candidate: Candidate) -> Path:
        """The best model as it is (or would be) uploaded; its ModelId has a commit once it is published."""
        prepared = self.publisher.prepare(candidate)
        published = self.published
        model_id = self.publisher.model_id(prepared, commit=None)
        if published and ModelId.from_compressed_str(published["model_id"]).hash == prepared.hash:
            model_id = ModelId.from_compressed_str(published["model_id"])
        record = {"model_dir": prepared.model_dir, "model_id": model_id.to_compressed_str(), "hash": prepared.hash,
                  "eval_loss": candidate.eval_loss, "hyperparameters": candidate.hyperparameters,
                  "trial": candidate.key, "competition_id": self.publisher.competition.id,
                  "stats": asdict(prepared.stats)}
        path = self.experiment_dir / PUBLISH_FILE
        self.experiment_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2))
        if self.target.repo_id is None:
            self._note(f"offline: prepared {prepared.model_dir} (hash {prepared.hash}); nothing uploaded or committed")
        return path
