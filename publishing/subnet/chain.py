"""The chain, as the publisher sees it: one commitment per hotkey, with the block it landed in.

`Chain` is the small interface every backend implements: the bittensor SDK adapter for
finney/test/local networks (`publishing.subnet.bittensor_chain`); the tests' in-process chain
(`tests/in_memory_chain.py`) implements it too.
"""

from dataclasses import dataclass
from typing import Protocol



class ChainError(RuntimeError):
    """A chain call failed; the message says why in words a miner can act on."""


@dataclass(frozen=True)
class Neuron:
    uid: int
    hotkey: str
    incentive: float


@dataclass(frozen=True)
class Commitment:
    block: int   # the block the commitment was written in
    data: str    # the committed string (a ModelId)


class Chain(Protocol):
    hotkey_ss58: str | None  # the hotkey this chain client commits with (None: a read-only client)

    def current_block(self) -> int: ...

    def neurons(self) -> list[Neuron]:
        """The subnet's registered neurons, by uid (the metagraph's uid, hotkey and incentive)."""

    def is_registered(self, hotkey_ss58: str) -> bool: ...

    def read_commitment(self, hotkey_ss58: str) -> Commitment | None: ...

    def set_commitment(self, data: str) -> None:
        """Commit `data` for this client's hotkey; raise ChainError when the chain refuses."""
