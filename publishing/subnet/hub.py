"""Hugging Face Hub, as the publisher needs it: upload a folder, then verify what validators will see.

A thin adapter over huggingface_hub's own upload and download; `endpoint` points it at any
Hub (the tests' local server, or huggingface.co by default / $HF_ENDPOINT).
"""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, snapshot_download

from publishing.subnet.model_hash import hash_directory
from publishing.subnet.secrets import Secret

MODEL_CARD = "README.md"  # the model card: uploaded beside the model, never downloaded by from_pretrained


class HubError(RuntimeError):
    pass


@dataclass(frozen=True)
class Verified:
    commit: str
    hash: str
    total_bytes: int


class HubClient:
    def __init__(self, token: Secret | None, endpoint: str | None = None):
        """`token` None: anonymous, enough to download public models."""
        self._token = token
        self.endpoint = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        self._api = HfApi(endpoint=self.endpoint, token=self._secret())

    def _secret(self) -> str | bool:
        # False, not None: huggingface_hub would otherwise fall back to a token saved on this machine
        return self._token.reveal() if self._token else False

    def upload(self, repo_id: str, folder: str | Path, model_card: str, message: str) -> str:
        """Create the repo public if missing; commit the folder's files and the model card (README.md,
        which from_pretrained never downloads) as one commit; return the commit sha."""
        self._api.create_repo(repo_id, repo_type="model", private=False, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))
                      for p in sorted(Path(folder).iterdir()) if p.is_file()]
        operations.append(CommitOperationAdd(path_in_repo=MODEL_CARD, path_or_fileobj=model_card.encode("utf-8")))
        info = self._api.create_commit(repo_id=repo_id, operations=operations, commit_message=message,
                                       repo_type="model")
        return info.oid

    def verify(self, repo_id: str, commit: str, files: list[str], salt=None) -> Verified:
        """Download the hashed files at `commit` the way validators do, and recompute the hash there.

        `salt`: a function applied to the plain hash (the hotkey-salted variant), or None.
        """
        info = self._api.model_info(repo_id, revision=commit, files_metadata=True)
        if info.private:
            raise HubError(f"{repo_id} is private; validators can only download public repos")
        total_bytes = sum(s.size or 0 for s in info.siblings or [])
        with tempfile.TemporaryDirectory() as cache:
            snapshot = snapshot_download(repo_id, revision=commit, allow_patterns=files, cache_dir=cache,
                                         endpoint=self.endpoint, token=self._secret())
            downloaded = sorted(p.name for p in Path(snapshot).iterdir())
            if downloaded != sorted(files):
                raise HubError(f"{repo_id}@{commit[:8]} holds {downloaded}, not the uploaded {sorted(files)}")
            plain = hash_directory(snapshot)
        return Verified(commit=commit, hash=salt(plain) if salt else plain, total_bytes=total_bytes)

    def download(self, repo_id: str, commit: str | None, cache_dir: str | Path,
                 allow_patterns: list[str] | None = None) -> Path:
        """The repo's files at `commit` (None: the latest), into a Hub cache folder; cached files are reused."""
        return Path(snapshot_download(repo_id, revision=commit, cache_dir=str(cache_dir), endpoint=self.endpoint,
                                      token=self._secret(), allow_patterns=allow_patterns))

    def file_sizes(self, repo_id: str, commit: str) -> dict[str, int]:
        """Every file of the repo at `commit` with its size, from the Hub's metadata (nothing downloaded)."""
        info = self._api.model_info(repo_id, revision=commit, files_metadata=True)
        return {s.rfilename: s.size or 0 for s in info.siblings or []}
