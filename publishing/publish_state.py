"""What the coordinator remembers between runs, in `publish_state.json`: the models it published (with the
block and time of their commit) and an upload still waiting for its chain commit.

Typed here, checked on load (a damaged file is named, never trusted), written atomically. It lives in the
experiment folder, local or in object storage (`publishing.storage`), so a driver on another machine reads it too.
"""

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from publishing import storage
from publishing.subnet.model_id import ModelId, ModelIdError
from trainables.errors import one_line
from trainables.trial_contract import EVAL_LOSS

STATE_FILE = "publish_state.json"


@dataclass(frozen=True)
class UploadedModel:
    model_id: str                 # the compressed ModelId, with the Hub commit
    eval_loss: float
    hash: str | None = None
    trial: str | None = None      # the candidate's key: trial id @ step
    uploaded_at: float | None = None
    hyperparameters: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PublishedModel(UploadedModel):
    block: int = 0                # the block its commitment landed in
    committed_at: float = 0.0     # this machine's clock when it was committed


@dataclass
class PublishState:
    published: list[PublishedModel] = field(default_factory=list)
    uploaded: UploadedModel | None = None

    @property
    def last_published(self) -> PublishedModel | None:
        return self.published[-1] if self.published else None

    def to_json(self) -> dict:
        return {"published": [asdict(p) for p in self.published],
                "uploaded": asdict(self.uploaded) if self.uploaded else None}

    @classmethod
    def from_json(cls, data: dict) -> "PublishState":
        """A state `state_problem` found nothing wrong with; keys this version does not know are ignored."""
        return cls(published=[_build(PublishedModel, entry) for entry in data["published"]],
                   uploaded=_build(UploadedModel, data["uploaded"]) if data["uploaded"] else None)


def _build(kind, entry: dict):
    known = {f.name for f in fields(kind)}
    return kind(**{key: value for key, value in entry.items() if key in known})


# what the coordinator (and the summary) rely on in each entry
PUBLISHED_KEYS = ("model_id", EVAL_LOSS, "committed_at", "block")  # eval_loss: the model's, as its trial reported it
UPLOADED_KEYS = ("model_id", EVAL_LOSS)


def _entry_problem(entry, keys: tuple) -> str | None:
    if not isinstance(entry, dict):
        return "is not an object"
    missing = [key for key in keys if key not in entry]
    if missing:
        return f"lacks {', '.join(missing)}"
    try:
        if ModelId.from_compressed_str(entry["model_id"]).commit is None:
            return "has a model_id without a commit"
    except (ModelIdError, AttributeError):  # AttributeError: not a string
        return "has no valid model_id"
    for key in keys[1:]:
        value = entry[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return f"has a {key} that is not a number"
    return None


def state_problem(state) -> str | None:
    """What makes a loaded publish state unusable, or None when the coordinator can rely on it."""
    if not isinstance(state, dict):
        return "not a JSON object"
    if not isinstance(state.get("published"), list):
        return '"published" is not a list'
    if "uploaded" not in state:
        return 'no "uploaded" entry'
    for i, entry in enumerate(state["published"]):
        if problem := _entry_problem(entry, PUBLISHED_KEYS):
            return f"published entry {i} {problem}"
    if state["uploaded"] is not None and (problem := _entry_problem(state["uploaded"], UPLOADED_KEYS)):
        return f'"uploaded" {problem}'
    return None


def read_state(path: Path | str) -> tuple[PublishState, str | None]:
    """The state in `path`, a file or an object-storage URI (empty when there is none) and, when the file is
    damaged, what is wrong with it."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        return PublishState(), None
    except (OSError, ValueError) as e:  # ValueError: UnicodeDecodeError; never trusted as "nothing published"
        return PublishState(), f"unreadable: {one_line(e, 100)}"
    try:
        data = json.loads(text)
        problem = state_problem(data)
    except ValueError as e:  # JSONDecodeError
        problem = f"unreadable: {one_line(e, 100)}"
    return (PublishState(), problem) if problem else (PublishState.from_json(data), None)


def write_state(path: Path | str, state: PublishState) -> None:
    # atomic: a local file is renamed into place, an object is replaced whole; a crash never leaves half a state file
    storage.write_text(path, json.dumps(state.to_json(), indent=2))
