"""PublishCoordinator: keeps the single best checkpoint of the sweep and publishes it by the rules.

Fed every trial result by `PublishCallback` (a Tune callback), it decides with the pure rules
in `publishing.rules`, and does the slow work (merge, upload, commit) on its own thread, so
Tune's loop never waits for it. Its state (what was published, when, with which loss, and an
upload still waiting for its commit) lives in `publish_state.json` in the experiment folder,
so a restarted sweep neither publishes twice nor forgets the 20-minute window. The experiment folder may be in
object storage (`s3://...`, through `publishing.storage`): the state and publish.json live there with the
experiment, so a driver on another machine reads them too, while the merged model (a folder) is written to the
Publisher's local work folder.

Trials delete their stale checkpoints (each keeps its two best), and a user may too: the coordinator
remembers each trial's best candidates, so when the best one's checkpoint is gone it merges the
next best whose checkpoint remains instead of failing the sweep.

The class is plain Python (tests drive it with a synthetic clock); `publishing.coordinator_actor`
runs it as the named Ray actor.
"""

import json
import logging
import math
import threading
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from publishing import storage
from publishing.merged_model import CheckpointGone
from publishing.package import PackageError, is_hub_id
from publishing.publish_state import STATE_FILE, PublishedModel, PublishState, UploadedModel, read_state, write_state
from publishing.publisher import Candidate, CommitFailed, Prepared, Publisher, UploadFailed
from publishing.rules import Action, Decision, decide, last_commit_time
from publishing.subnet.constants import BLOCK_SECONDS
from publishing.subnet.epsilon import worth_restarting_the_wait
from publishing.subnet.model_checks import ModelCheckError
from publishing.subnet.model_id import ModelId
from trainables.checkpoint_retention import KEPT_PER_TRIAL  # candidates remembered per trial: all it keeps
from trainables.errors import one_line
from trainables.trial_contract import EVAL_LOSS

log = logging.getLogger("publishing")
PUBLISH_FILE = "publish.json"
DAMAGED_SUFFIX = ".damaged"


@dataclass(frozen=True)
class MergedBest:
    """The candidate merged into best_model/: the sweep's best, unless that one's checkpoint was gone."""
    trial_id: str
    eval_loss: float
    step: int
    hyperparameters: dict
    model_dir: str
    publish_json: str


@dataclass
class ResultLag:
    """How long results took from a trial's report (its checkpoint's upload included) to the coordinator's verdict
    on them (new best or not): the upload, Tune's loop, the callback and the actor's queue. A slow driver shows here
    first, so the summary prints it."""
    count: int = 0
    worst_s: float = 0.0
    worst_key: str = ""
    recent: deque = field(default_factory=lambda: deque(maxlen=1000))  # (key, lag_s); bounded for long sweeps

    def add(self, key: str, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)  # a worker's clock a little ahead of this node's
        self.count += 1
        if lag_s >= self.worst_s:
            self.worst_s, self.worst_key = lag_s, key
        self.recent.append((key, lag_s))

    @property
    def median_s(self) -> float:
        return statistics.median(lag for _, lag in self.recent) if self.recent else 0.0

    def line(self) -> str:
        return (f"{self.count} results reached the coordinator {self.median_s:.2f} s after their report (median; "
                f"worst {self.worst_s:.2f} s, {self.worst_key})")


@dataclass
class CoordinatorReport:
    """What the coordinator tells the summary at the end of the sweep."""
    lines: list[str]                          # every outcome, one line each
    offline: bool                             # no --hf_repo_id (or --offline): nothing was uploaded or committed
    published: PublishedModel | None = None   # the last model this experiment committed
    not_before: float | None = None           # the best is not published yet: the window opens then
    best: MergedBest | None = None            # None when no checkpoint was left to merge
    result_lag: ResultLag | None = None       # from each trial's report to the coordinator's verdict on it


def remember(kept: list[Candidate], candidate: Candidate, per_trial: int = KEPT_PER_TRIAL) -> list[Candidate]:
    """The candidates to fall back on, best first: each trial's `per_trial` best (trials delete the others' checkpoints
    anyway). A candidate offered again (a restored trial) replaces the earlier one of the same key."""
    ranked = sorted([c for c in kept if c.key != candidate.key] + [candidate], key=lambda c: c.eval_loss)
    per_trial_seen: dict[str, int] = {}
    result = []
    for c in ranked:
        per_trial_seen[c.trial_id] = per_trial_seen.get(c.trial_id, 0) + 1
        if per_trial_seen[c.trial_id] <= per_trial:
            result.append(c)
    return result


def next_best(kept: list[Candidate], excluded: set[str]) -> Candidate | None:
    """The best remembered candidate whose key is not excluded (`kept` is best first)."""
    return next((c for c in kept if c.key not in excluded), None)


class PublishCoordinator:
    def __init__(self, publisher: Publisher, experiment_dir: str | Path, clock=time.time, background: bool = True,
                 gate=None):
        """`gate(model_dir) -> (publish?, reason)`: a last check on a prepared model (--require_win).
        `experiment_dir`: a folder, or an object-storage URI (s3://bucket/sweeps/<experiment>)."""
        self.publisher, self.target, self.gate = publisher, publisher.target, gate
        self.experiment_dir = experiment_dir if storage.is_remote(experiment_dir) else Path(experiment_dir)
        self.clock = clock
        self.lines: list[str] = []            # every outcome, one line each, for the log and the summary
        self.state = self._load_state()
        self.best: Candidate | None = None    # the best candidate whose checkpoint is not known to be gone
        self._kept: list[Candidate] = []      # fallbacks, best first (see `remember`)
        self._gone: set[str] = set()          # keys of candidates whose checkpoint was found deleted
        self._gone_best: Candidate | None = None  # a best that went, until the one merged instead is named
        self._lock = threading.Lock()         # guards best and state
        self._work = threading.Lock()         # one publish at a time
        self._wake = threading.Event()
        self._stopping = False
        self._warned_unknown = False
        self._rejected: set[str] = set()      # candidates that break the competition's limits
        self.result_lag = ResultLag()
        self.thread_end: tuple[float, str] | None = None  # (time.time(), why) once the publishing thread has died
        self._thread = threading.Thread(target=self._run, daemon=True, name="publish") if background else None
        if self._thread:
            self._thread.start()

    # -- state ---------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path | str:
        return self.experiment_dir / STATE_FILE if isinstance(self.experiment_dir, Path) else storage.join(
            self.experiment_dir, STATE_FILE)

    def _load_state(self) -> PublishState:
        state, problem = read_state(self.state_path)
        if problem is None:
            return state
        # A damaged state file must not cost the sweep its result. Starting empty is safe for the 20-minute rule,
        # which is also read from the chain (_last_committed_at). The file is moved aside, never deleted.
        damaged = storage.join(self.experiment_dir, STATE_FILE + DAMAGED_SUFFIX)
        try:
            storage.move(self.state_path, damaged)
            aside = f"set aside as {storage.name(damaged)}"
        except OSError as e:
            aside = f"could not be set aside ({e.strerror or one_line(e, 100)})"
        self._note(f"warning: {self.state_path} is damaged ({problem}); {aside}, and publishing starts from an "
                   "empty state (the 20-minute window is still read from the chain)")
        return state

    def _save_state(self) -> None:
        write_state(self.state_path, self.state)

    def _note(self, line: str) -> None:
        log.info(line)
        print(f"[publish] {line}", flush=True)
        self.lines.append(line)

    @property
    def published(self) -> PublishedModel | None:
        return self.state.last_published

    # -- the rules -----------------------------------------------------------------------------
    def _published_loss(self) -> float | None:
        """The loss of the model the hotkey has on the chain, when we know it (we committed it)."""
        chain = self.publisher.chain
        if self.published is None:
            return None
        if chain is not None:
            current = chain.read_commitment(chain.hotkey_ss58)
            if current is not None and current.data != self.published.model_id:
                if not self._warned_unknown:
                    self._note(f"the hotkey's committed model {current.data} was not published by this experiment; "
                               "its loss on our eval set is unknown, so it is not compared")
                    self._warned_unknown = True
                return None
        return self.published.eval_loss

    def _last_committed_at(self, now: float) -> float | None:
        chain = self.publisher.chain
        chain_block = current_block = None
        if chain is not None:
            commitment = chain.read_commitment(chain.hotkey_ss58)
            if commitment is not None:
                chain_block, current_block = commitment.block, chain.current_block()
        local = self.published.committed_at if self.published else None
        return last_commit_time(now, local, chain_block, current_block, BLOCK_SECONDS)

    def _evaluation_hold(self, candidate: Candidate, published_loss: float | None, now: float) -> tuple[float | None, str]:
        """Until when our commitment is kept because validators have not evaluated it yet and the candidate is not
        worth restarting their wait (competitions with an evaluation delay); (None, why) when it may be replaced."""
        chain, competition = self.publisher.chain, self.publisher.competition
        if chain is None or competition.eval_delay_blocks <= 0 or published_loss is None:
            return None, ""
        commitment = chain.read_commitment(chain.hotkey_ss58)
        if commitment is None:
            return None, ""
        current = chain.current_block()
        worth, why = worth_restarting_the_wait(published_loss, candidate.eval_loss, commitment.block, current,
                                               competition.eval_delay_blocks, competition.epsilon)
        if worth:
            return None, why
        evaluated_at = now + (commitment.block + competition.eval_delay_blocks - current) * BLOCK_SECONDS
        return evaluated_at, why

    def decision(self, candidate: Candidate, now: float) -> Decision:
        published_loss = self._published_loss()
        hold_until, why = self._evaluation_hold(candidate, published_loss, now)
        decision = decide(candidate.eval_loss, threshold=self.target.threshold, published_loss=published_loss,
                          min_improvement=self.target.min_improvement, now=now,
                          last_committed_at=self._last_committed_at(now), interval_s=self.target.interval_s,
                          hold_until=hold_until, hold_reason=why)
        if why and decision.action is Action.PUBLISH:  # say why an unevaluated commitment is being replaced
            decision = Decision(decision.action, f"{decision.reason}; {why}", decision.not_before)
        return decision

    # -- feeding -------------------------------------------------------------------------------
    def offer(self, candidate: Candidate) -> bool:
        """Record a trial result; True when it is the new best. Never blocks on publishing."""
        with self._lock:
            if candidate.reported_at is not None:
                self.result_lag.add(candidate.key, self.clock() - candidate.reported_at)
            if not math.isfinite(candidate.eval_loss):
                return False
            self._kept = remember(self._kept, candidate)
            self._gone.discard(candidate.key)  # offered (again): its checkpoint is there now
            best = self.best
            if best is not None and best.key not in self._gone and candidate.eval_loss >= best.eval_loss:
                return False
            self.best = candidate
        self._wake.set()
        return True

    def step(self) -> Decision | None:
        """Publish the best candidate if the rules allow it now; one call does at most one publish."""
        if self.target.repo_id is None:
            return None  # offline: nothing is published during the sweep
        with self._work:
            while True:  # each turn that finds a checkpoint gone gives that candidate up, so this ends
                with self._lock:
                    candidate = self.best
                if candidate is None:
                    return None
                if candidate.key in self._gone:
                    return Decision(Action.SKIP, f"the checkpoint of {candidate.key} and those of the other candidates "
                                            "are gone")
                if candidate.key in self._rejected:
                    return Decision(Action.SKIP, f"{candidate.key} was refused before (limits or --require_win)")
                decision = self.decision(candidate, self.clock())  # again for a fallback: its loss is another
                if decision.action is not Action.PUBLISH:
                    return decision
                try:
                    prepared = self._prepare(candidate)
                    break
                except CheckpointGone:
                    self._give_up(candidate)
                except (ModelCheckError, PackageError) as e:
                    self._rejected.add(candidate.key)
                    self._note(f"not publishing {candidate.key}: {e}")
                    return Decision(Action.SKIP, str(e))
            if self.gate is not None:
                passed, reason = self.gate(prepared.model_dir)
                self._note(f"{candidate.key} {reason}")
                if not passed:
                    self._rejected.add(candidate.key)
                    return Decision(Action.SKIP, reason)
            if not self._publish(candidate):
                return Decision(Action.RETRY, "publishing failed; it is tried again later")
            return decision

    # -- checkpoints that are gone ------------------------------------------------------------
    def _prepare(self, candidate: Candidate) -> Prepared:
        """Merge and package; raises CheckpointGone. Names the fallback once one is merged in a gone best's place."""
        prepared = self.publisher.prepare(candidate)
        gone, self._gone_best = self._gone_best, None
        if gone is not None and gone.key != candidate.key and candidate.eval_loss >= gone.eval_loss:
            self._note(f"the checkpoint of {gone.key} (eval loss {gone.eval_loss:.4f}) is gone (deleted by Tune or "
                       f"by hand); using {candidate.key} (eval loss {candidate.eval_loss:.4f}) instead, the best "
                       "candidate whose checkpoint remains")
        return prepared

    def _give_up(self, candidate: Candidate) -> None:
        """`candidate`'s checkpoint is gone: the best becomes the next best remembered candidate, unless a better
        one was offered meanwhile (a trial deletes a checkpoint once it has two better ones)."""
        with self._lock:
            self._gone.add(candidate.key)
            self._gone_best = self._gone_best or candidate
            if self.best is candidate:
                self.best = next_best(self._kept, self._gone | self._rejected) or candidate
            nothing_left = self.best.key in self._gone
        if nothing_left:
            self._gone_best = None
            self._note(f"{candidate.key}: its checkpoint is gone, and so are the other candidates' checkpoints; "
                       "there is no model to merge or publish")

    def _prepare_best(self) -> tuple[Candidate, Prepared] | tuple[None, None]:
        """The best candidate whose checkpoint remains, prepared; (None, None) when every checkpoint is gone."""
        while True:
            with self._lock:
                candidate = self.best
            if candidate is None or candidate.key in self._gone:
                return None, None
            try:
                return candidate, self._prepare(candidate)
            except CheckpointGone:
                self._give_up(candidate)

    def _run(self) -> None:
        """The publishing thread: `_loop`, and why it ended if it ends before `finish` (what its catch-all lets
        through: SystemExit, KeyboardInterrupt, a fault outside its try). The driver reads it through `health`."""
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - recorded for the driver, which restarts the actor
            self.thread_end = (time.time(), one_line(e, 200))
            log.error("the publishing thread ended: %s", self.thread_end[1])

    def health(self, since: int = 0) -> dict:
        """Is the publishing thread alive (and why it ended if not); the lines noted since line `since`."""
        alive = self._thread is None or self._thread.is_alive() or self._stopping
        ended_at, why = self.thread_end or (time.time(), "it ended without an error")
        lines = list(self.lines)  # the publishing thread may add one meanwhile
        return {"thread_alive": alive, "ended_at": None if alive else ended_at, "why": None if alive else why,
                "lines": lines[since:], "count": len(lines)}

    def _loop(self) -> None:
        while not self._stopping:
            decision = None
            try:
                decision = self.step()
            except Exception as e:  # the thread must outlive any one failure; the failure is reported
                self._note(f"publishing failed: {one_line(e, 300)}")
                failed = True
            else:
                failed = False
            timeout = None  # nothing to do until the next candidate wakes us
            if decision is not None and decision.action is Action.WAIT:
                timeout = max(1.0, decision.not_before - self.clock())
            elif failed or (decision is not None and decision.action is Action.RETRY):
                timeout = self.target.retry_after_s  # a failure is retried like a refused publish, not forgotten
            self._wake.wait(timeout)
            self._wake.clear()

    # -- the irreversible part -----------------------------------------------------------------
    def _publish(self, candidate: Candidate) -> bool:
        uploaded = self.state.uploaded
        if uploaded and uploaded.eval_loss <= candidate.eval_loss:
            # an earlier upload is still waiting for its commit and is as good: commit it, upload nothing
            model_id = ModelId.from_compressed_str(uploaded.model_id)
            self._note(f"retrying the chain commit of {model_id.repo_id}@{model_id.commit[:8]} without re-uploading")
        else:
            prepared = self.publisher.prepare(candidate)
            try:
                commit = self.publisher.upload(prepared, candidate)
            except UploadFailed as e:
                self._note(f"{e}; nothing committed")
                return False
            model_id = self.publisher.model_id(prepared, commit)
            uploaded = UploadedModel(model_id=model_id.to_compressed_str(), eval_loss=candidate.eval_loss,
                                     hash=prepared.hash, trial=candidate.key, uploaded_at=self.clock(),
                                     hyperparameters=candidate.hyperparameters)
            with self._lock:
                self.state.uploaded = uploaded
                self._save_state()
            self._note(f"uploaded {model_id.repo_id}@{commit[:8]} (eval loss {candidate.eval_loss:.4f})")
        try:
            commitment = self.publisher.commit(model_id)
        except CommitFailed as e:
            self._note(f"chain commit failed: {e}; the upload is kept and the commit will be retried")
            return False
        with self._lock:
            self.state.published.append(PublishedModel(**asdict(uploaded), block=commitment.block,
                                                       committed_at=self.clock()))
            self.state.uploaded = None
            self._save_state()
        self._note(f"published {uploaded.model_id} at block {commitment.block} (eval loss {uploaded.eval_loss:.4f})")
        return True

    # -- the end of the sweep ------------------------------------------------------------------
    def finish(self, wait_for_window: bool = False) -> CoordinatorReport:
        """Publish (or, offline, prepare) the best unpublished model; return what the summary prints."""
        self._stopping = True
        self._wake.set()
        if self._thread:
            self._thread.join()
        report = CoordinatorReport(lines=self.lines, offline=self.target.repo_id is None,
                                   result_lag=self.result_lag if self.result_lag.count else None)
        if self.best is None:
            return report
        if self.target.repo_id is not None:
            decision = self.step()
            while decision is not None and decision.action is Action.WAIT and wait_for_window:
                self._note(f"waiting for the window: {decision.reason}")
                time.sleep(max(0.0, decision.not_before - self.clock()))
                decision = self.step()
            if decision is not None and decision.action is Action.WAIT:
                report.not_before = decision.not_before
                self._note(f"the best model (eval loss {self.best.eval_loss:.4f}) is not published yet: "
                           f"{decision.reason}")
            elif decision is not None and decision.action is Action.SKIP:
                self._note(f"the best model is not published: {decision.reason}")
        report.published = self.published
        candidate, prepared = self._prepare_best()
        if candidate is None:
            return report  # _give_up said why, in one line
        report.best = MergedBest(trial_id=candidate.trial_id, eval_loss=candidate.eval_loss, step=candidate.step,
                                 hyperparameters=candidate.hyperparameters, model_dir=prepared.model_dir,
                                 publish_json=str(self.write_publish_json(candidate)))
        return report

    def write_publish_json(self, candidate: Candidate) -> Path | str:
        """The best model as it is (or would be) uploaded; its ModelId has a commit once it is published."""
        prepared = self.publisher.prepare(candidate)
        published = self.published
        model_id = self.publisher.model_id(prepared, commit=None)
        if published and ModelId.from_compressed_str(published.model_id).hash == prepared.hash:
            model_id = ModelId.from_compressed_str(published.model_id)
        base_model = self.publisher.base_model  # read back by the manual upload for its model card
        record = {"model_dir": prepared.model_dir, "model_id": model_id.to_compressed_str(), "hash": prepared.hash,
                  EVAL_LOSS: candidate.eval_loss, "hyperparameters": candidate.hyperparameters,
                  "trial": candidate.key, "competition_id": self.publisher.competition.id,
                  "base_model": base_model if is_hub_id(base_model) else None, "stats": asdict(prepared.stats)}
        path = storage.join(self.experiment_dir, PUBLISH_FILE)
        storage.write_text(path, json.dumps(record, indent=2))
        if storage.is_remote(path):  # a copy beside the local model folder, for `publishing.upload` to read
            storage.write_text(Path(prepared.model_dir).parent / PUBLISH_FILE, json.dumps(record, indent=2))
        if self.target.repo_id is None:
            self._note(f"offline: prepared {prepared.model_dir} (hash {prepared.hash}); nothing uploaded or committed")
        return path
