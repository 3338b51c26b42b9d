"""A test double of the chain: blocks advance with a clock, commitments are rate limited per hotkey, as on
the real chain (`publishing.subnet.chain.Chain` is the interface it implements)."""

import threading

from publishing.subnet.chain import ChainError, Commitment, Neuron
from publishing.subnet.constants import BLOCK_SECONDS, COMMIT_INTERVAL_BLOCKS, MAX_COMMITMENT_BYTES


class InMemoryChain:
    """An in-process chain: blocks advance with a clock, commitments are rate limited per hotkey.

    `clock` returns seconds; a test drives it to move time. Blocks are clock // BLOCK_SECONDS.
    """

    def __init__(self, hotkey_ss58: str | None, registered: set[str] | None = None, clock=None,
                 interval_blocks: int = COMMIT_INTERVAL_BLOCKS, neurons: list[Neuron] | None = None):
        import time

        self.hotkey_ss58 = hotkey_ss58
        self.registered = ({hotkey_ss58} if hotkey_ss58 else set()) if registered is None else set(registered)
        self.neuron_list = list(neurons) if neurons is not None else [
            Neuron(uid, hotkey, 0.0) for uid, hotkey in enumerate(sorted(self.registered))]
        self.clock = clock or time.time
        self.interval_blocks = interval_blocks
        self.commitments: dict[str, Commitment] = {}
        self.history: list[tuple[str, Commitment]] = []
        self._lock = threading.Lock()

    def current_block(self) -> int:
        return int(self.clock() // BLOCK_SECONDS)

    def is_registered(self, hotkey_ss58: str) -> bool:
        return hotkey_ss58 in self.registered

    def neurons(self) -> list[Neuron]:
        return sorted(self.neuron_list, key=lambda n: n.uid)

    def commit_as(self, hotkey_ss58: str, data: str) -> None:
        """Another miner's commitment (tests and local development)."""
        self.commitments[hotkey_ss58] = Commitment(block=self.current_block(), data=data)

    def read_commitment(self, hotkey_ss58: str) -> Commitment | None:
        return self.commitments.get(hotkey_ss58)

    def set_commitment(self, data: str) -> None:
        with self._lock:
            if self.hotkey_ss58 is None:
                raise ChainError("this chain client has no hotkey; pass --wallet.name and --wallet.hotkey to commit")
            if self.hotkey_ss58 not in self.registered:
                raise ChainError(f"hotkey {self.hotkey_ss58} is not registered on the subnet (AccountNotAllowedCommit); "
                                 "register it with btcli subnet register")
            if len(data.encode()) > MAX_COMMITMENT_BYTES:
                raise ChainError(f"commitment of {len(data.encode())} bytes is over the chain's {MAX_COMMITMENT_BYTES}")
            block = self.current_block()
            last = self.commitments.get(self.hotkey_ss58)
            if last is not None and block - last.block < self.interval_blocks:
                raise ChainError(f"commitment rate limit: the last one was {block - last.block} blocks ago, "
                                 f"the chain allows one per {self.interval_blocks}")
            commitment = Commitment(block=block, data=data)
            self.commitments[self.hotkey_ss58] = commitment
            self.history.append((self.hotkey_ss58, commitment))


def chain_with_rival(hub_url: str, model_dir, work_dir) -> tuple["InMemoryChain", str]:
    """A chain of two neurons where uid 1 (hotkey hk1, the larger incentive) has committed `model_dir` for m1 as
    rival/tiny, uploaded to the Hub at `hub_url`; with that upload's commit."""
    from pathlib import Path

    from publishing.package import package_model
    from publishing.subnet.hub import HubClient
    from publishing.subnet.model_id import ModelId
    from publishing.subnet.secrets import Secret

    commit = HubClient(Secret("hf_test_token"), endpoint=hub_url).upload(
        "rival/tiny", package_model(model_dir, Path(work_dir) / "upload"), "card", "rival")
    chain = InMemoryChain(None, neurons=[Neuron(0, "hk0", 0.2), Neuron(1, "hk1", 0.8)])
    chain.commit_as("hk1", ModelId("rival", "tiny", commit, "h" * 44, "m1").to_compressed_str())
    return chain, commit
