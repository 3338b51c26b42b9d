"""Publishing one model, in its fixed order: merge -> package -> check limits -> upload -> verify -> commit.

A failed upload never reaches the commit; a failed commit is retried without uploading again
(the coordinator keeps the uploaded sha); a commit counts only once it is read back from the chain.
"""

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from publishing.merged_model import merge_checkpoint
from publishing.package import base_model_name, hashed_files, model_card, package_model
from publishing.subnet.chain import Chain, ChainError, Commitment
from publishing.subnet.competitions import get_competition
from publishing.subnet.constants import PUBLISH_INTERVAL_S, VALIDATOR_EPSILON
from publishing.subnet.hub import HubClient, HubError
from publishing.subnet.model_checks import ModelStats, check_model
from publishing.subnet.model_hash import hash_directory, hash_with_hotkey
from publishing.subnet.model_id import ModelId, parse_repo_id
from trainables.errors import one_line

log = logging.getLogger("publishing")
BEST_MODEL_DIR = "best_model"


class UploadFailed(RuntimeError):
    pass


class CommitFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Candidate:
    """A trial's checkpoint offered for publishing (no secrets: it lands in logs and state)."""
    trial_id: str
    step: int
    eval_loss: float
    hyperparameters: dict
    checkpoint: Any = field(default=None, compare=False, repr=False)  # a ray.tune.Checkpoint (has as_directory)
    model_dir: str | None = None  # or a model already merged (the manual upload)
    reported_at: float | None = field(default=None, compare=False)  # when the trial reported it (time.time())

    @property
    def key(self) -> str:
        return f"{self.trial_id}@{self.step}"


@dataclass(frozen=True)
class PublishTarget:
    """Where and how to publish; None repo_id means offline: prepare everything, upload nothing."""
    repo_id: str | None = None
    competition_id: str = "m1"
    competitions_file: str | None = None  # None: the shipped configs/competitions.yaml
    hotkey_ss58: str | None = None  # offline: the wallet's hotkey, to salt the hash as it would be committed
    use_hotkey_in_hash: bool = False
    threshold: float = math.inf
    min_improvement: float = VALIDATOR_EPSILON
    interval_s: float = PUBLISH_INTERVAL_S
    upload_attempts: int = 3
    commit_attempts: int = 5
    backoff_s: float = 5.0         # between attempts inside one upload or commit, doubling
    retry_after_s: float = 60.0    # after a failed publish, before the next try (the original miner's minute)


@dataclass(frozen=True)
class Prepared:
    model_dir: str
    hash: str
    files: list
    stats: ModelStats
    model_card: str


def retry(action: Callable, attempts: int, backoff_s: float, errors: tuple, what: str, sleep=time.sleep):
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except errors as e:
            if attempt == attempts:
                raise
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning("%s failed (attempt %d/%d: %s); retrying in %.0f s", what, attempt, attempts,
                        one_line(e), wait)
            sleep(wait)


class Publisher:
    def __init__(self, target: PublishTarget, base_model_dir: str, work_dir: str | Path, sweep_id: str,
                 hub: HubClient | None = None, chain: Chain | None = None, sleep=time.sleep,
                 base_model: str | None = None):
        """`base_model`: how the model card names the base model (a Hub id, or package.LOCAL_MODEL); by default
        the Hub id of base_model_dir when it is a Hub cache snapshot. The card never shows a local path."""
        self.target, self.base_model_dir, self.work_dir = target, base_model_dir, Path(work_dir)
        self.sweep_id, self.hub, self.chain, self.sleep = sweep_id, hub, chain, sleep
        self._base_model = base_model
        self.competition = get_competition(target.competition_id, target.competitions_file)
        self._prepared: tuple[str, Prepared] | None = None

    @property
    def base_model(self) -> str:
        if self._base_model is None:
            self._base_model = base_model_name(self.base_model_dir)
        return self._base_model

    def model_id(self, prepared: Prepared, commit: str | None) -> ModelId:
        namespace, name = parse_repo_id(self.target.repo_id) if self.target.repo_id else ("offline", "model")
        return ModelId(namespace, name, commit=commit, hash=prepared.hash, competition_id=self.competition.id)

    def prepare(self, candidate: Candidate) -> Prepared:
        """Merge the adapter into its base and build the exact upload folder (work_dir/best_model);
        check it against the competition. Prepared once per candidate."""
        if self._prepared and self._prepared[0] == candidate.key:
            return self._prepared[1]
        folder = self.work_dir / BEST_MODEL_DIR
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work_dir) as scratch:
            merged = candidate.model_dir or merge_checkpoint(self.base_model_dir, candidate.checkpoint,
                                                             str(Path(scratch) / "merged"),
                                                             self.competition.dtype or "auto")
            package_model(merged, folder)
        card = model_card(self.base_model, candidate.hyperparameters, candidate.eval_loss, self.sweep_id,
                          self.competition.id)
        stats = check_model(folder, self.competition)
        plain = hash_directory(folder)
        hotkey = self.chain.hotkey_ss58 if self.chain is not None else self.target.hotkey_ss58
        salted = hash_with_hotkey(plain, hotkey) if self.target.use_hotkey_in_hash and hotkey else plain
        prepared = Prepared(model_dir=str(folder), hash=salted, files=hashed_files(folder), stats=stats,
                            model_card=card)
        self._prepared = (candidate.key, prepared)
        return prepared

    def upload(self, prepared: Prepared, candidate: Candidate) -> str:
        """Upload, then verify at the new commit (public, same hash); return the commit sha or raise UploadFailed."""
        salt = ((lambda h: hash_with_hotkey(h, self.chain.hotkey_ss58))
                if self.target.use_hotkey_in_hash and self.chain is not None else None)

        def upload_and_verify():
            commit = self.hub.upload(self.target.repo_id, prepared.model_dir, prepared.model_card,
                                     f"{self.sweep_id}: {candidate.key} eval_loss={candidate.eval_loss:.4f}")
            verified = self.hub.verify(self.target.repo_id, commit, prepared.files, salt=salt)
            if verified.hash != prepared.hash:
                raise HubError(f"hash at {commit[:8]} is {verified.hash}, not the uploaded {prepared.hash}")
            if verified.total_bytes > self.competition.max_repo_bytes:
                raise HubError(f"the repo totals {verified.total_bytes} bytes at {commit[:8]}, over the limit")
            return commit

        try:
            return retry(upload_and_verify, self.target.upload_attempts, self.target.backoff_s, (Exception,),
                         "upload", self.sleep)
        except Exception as e:  # huggingface_hub raises many types; none of them may lead to a commit
            raise UploadFailed(f"upload to {self.target.repo_id} failed: {one_line(e, 300)}") from None

    def commit(self, model_id: ModelId) -> Commitment:
        """Commit to the chain and read it back; retried without uploading again."""
        data = model_id.to_compressed_str()

        def commit_and_confirm():
            current = self.chain.read_commitment(self.chain.hotkey_ss58)
            if current is None or current.data != data:  # an earlier attempt may have landed after all
                self.chain.set_commitment(data)
                current = self.chain.read_commitment(self.chain.hotkey_ss58)
            if current is None or current.data != data:
                raise ChainError(f"read back {current.data if current else None!r}, not the committed {data!r}")
            return current

        try:
            return retry(commit_and_confirm, self.target.commit_attempts, self.target.backoff_s, (ChainError,),
                         "chain commit", self.sleep)
        except ChainError as e:
            raise CommitFailed(str(e)) from None
