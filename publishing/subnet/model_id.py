"""The ModelId a miner commits to the chain, encoded and decoded exactly as validators do.

    namespace:name:commit:hash:competition_id      ("None" for a missing field)

Validators split on ':' and accept the older 4-field form without a competition id. The
whole string must fit the chain's 128-byte commitment, which leaves 38 characters for the
repo id once a 40-character commit sha and a 44-character hash are in.
"""

import re
from dataclasses import dataclass

from publishing.subnet.constants import MAX_COMMITMENT_BYTES

MAX_REPO_ID_LENGTH = 38
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelIdError(ValueError):
    """A repo id or ModelId validators would reject; the message says how to fix it."""


@dataclass(frozen=True)
class ModelId:
    namespace: str
    name: str
    commit: str | None = None
    hash: str | None = None
    competition_id: str | None = None

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_compressed_str(self) -> str:
        text = f"{self.namespace}:{self.name}:{self.commit}:{self.hash}:{self.competition_id}"
        size = len(text.encode("utf-8"))
        if size > MAX_COMMITMENT_BYTES:
            raise ModelIdError(f"ModelId {text!r} is {size} bytes, over the chain's {MAX_COMMITMENT_BYTES}; "
                               f"shorten the repo id")
        return text

    @classmethod
    def from_compressed_str(cls, text: str) -> "ModelId":
        """The validators' parse: split on ':', 'None' means missing, a 4-field string has no competition."""
        tokens = text.split(":")
        if len(tokens) not in (4, 5):
            raise ModelIdError(f"{text!r} is not namespace:name:commit:hash[:competition_id]")

        def field(i):
            return tokens[i] if len(tokens) > i and tokens[i] != "None" else None

        return cls(namespace=tokens[0], name=tokens[1], commit=field(2), hash=field(3), competition_id=field(4))


def parse_repo_id(repo_id: str) -> tuple[str, str]:
    """Check a --hf_repo_id the way the commitment needs it: namespace/name, at most 38 characters."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(p) for p in parts):
        raise ModelIdError(f"--hf_repo_id {repo_id!r} must be namespace/name (letters, digits, '.', '_', '-')")
    if len(repo_id) > MAX_REPO_ID_LENGTH:
        raise ModelIdError(f"--hf_repo_id {repo_id!r} is {len(repo_id)} characters; the chain's "
                           f"{MAX_COMMITMENT_BYTES}-byte commitment leaves room for {MAX_REPO_ID_LENGTH}, so choose a "
                           "shorter name")
    return parts[0], parts[1]
