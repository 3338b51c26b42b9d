"""Tune's search algorithm, sealing the state a resume unpickles each time Tune saves it (see orchestrator.state_seal).

Tune saves its state into a staging folder on the driver, then uploads that folder to the experiment's storage: first
the experiment state, then the search algorithm's files (this class's `save_to_dir`), then the callbacks' (ours keep
none). The seal is written right after, into the same folder, so it travels to storage with the files it covers.

It seals what this process wrote (file names carry Tune's session string) and carries over what an earlier seal
covered unchanged; a file that is neither (planted after `--resume` checked the seal) is left out, and the next
`--resume` refuses it.
"""

import json
import os
from pathlib import Path

from ray.tune.search import SearchGenerator, Searcher

from orchestrator.state_seal import SEAL_FILE, digest, is_tune_state, load_key, seal, unsealed
from publishing import storage as store


class SealedSearch(SearchGenerator):
    """Tune's SearchGenerator over `searcher`, plus the seal."""

    def __init__(self, searcher: Searcher, experiment_path: str):
        super().__init__(searcher)
        self.experiment_path = experiment_path  # where tuner.pkl is (Tune writes it there, not in the staging folder)

    def save_to_dir(self, dirpath: str, session_str: str):
        super().save_to_dir(dirpath, session_str)
        write_seal(Path(dirpath), session_str, store.join(self.experiment_path, "tuner.pkl"))


def write_seal(staging: Path, session_str: str, tuner_pkl: str) -> None:
    key = load_key(create=True)
    try:
        earlier = json.loads((staging / SEAL_FILE).read_text())
    except (OSError, ValueError):
        earlier = None  # a new sweep's first save (a resumed one downloaded its seal with its state)
    files = {p.name: p.read_bytes() for p in staging.iterdir() if p.is_file() and is_tune_state(p.name)}
    sealed = seal(key, {name: content for name, content in files.items()
                        if session_str in name or (earlier is not None and not unsealed(key, earlier, {name: content}))})
    if earlier is None:  # the tuner.pkl this sweep's Tuner has just written
        sealed["files"]["tuner.pkl"] = digest(key, "tuner.pkl", store.read_bytes(tuner_pkl))
    elif isinstance(earlier.get("files"), dict) and "tuner.pkl" in earlier["files"]:
        sealed["files"]["tuner.pkl"] = earlier["files"]["tuner.pkl"]  # unchanged since: --resume checked it
    partial = staging / f".{SEAL_FILE}.tmp"
    partial.write_text(json.dumps(sealed, indent=1))
    os.replace(partial, staging / SEAL_FILE)  # never a half-written seal where the upload reads it
