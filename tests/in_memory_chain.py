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
    rival/tiny, uploaded to the Hub at `hub_url`; with that upload's commit. Its clock stands still (a test moves it
    by setting `chain.clock`): a block boundary passing mid-test would change the block a test reads back."""
    import time
    from pathlib import Path

    from publishing.package import package_model
    from publishing.subnet.hub import HubClient
    from publishing.subnet.model_id import ModelId
    from publishing.subnet.secrets import Secret

    commit = HubClient(Secret("hf_test_token"), endpoint=hub_url).upload(
        "rival/tiny", package_model(model_dir, Path(work_dir) / "upload"), "card", "rival")
    now = time.time()
    chain = InMemoryChain(None, neurons=[Neuron(0, "hk0", 0.2), Neuron(1, "hk1", 0.8)], clock=lambda: now)
    chain.commit_as("hk1", ModelId("rival", "tiny", commit, "h" * 44, "m1").to_compressed_str())
    return chain, commit


class _ChainHolder:
    """An InMemoryChain in a Ray actor, so the driver and the coordinator actor read and write the same chain; with
    an answer: when `watched` first commits, `rival` commits `answer` (a rival who reacts to being beaten)."""

    def __init__(self, neurons: list[Neuron], watched: str, rival: str | None = None, answer: str | None = None):
        self.chain = InMemoryChain(None, registered={n.hotkey for n in neurons}, neurons=neurons)
        self.watched, self.rival, self.answer = watched, rival, answer

    def call(self, method: str, hotkey: str | None, *args):
        self.chain.hotkey_ss58 = hotkey
        result = getattr(self.chain, method)(*args)
        if method == "set_commitment" and hotkey == self.watched and self.answer is not None:
            self.chain.commit_as(self.rival, self.answer)
            self.answer = None
        return result

    def history(self) -> list[tuple[str, int, str]]:
        return [(hotkey, c.block, c.data) for hotkey, c in self.chain.history]


class SharedChain:
    """A Chain client of the chain held by the named actor `name` (start_shared_chain), as `hotkey_ss58`; picklable,
    so a PublishSetup's chain_factory (functools.partial(SharedChain, name, hotkey)) reaches the coordinator actor."""

    def __init__(self, name: str, hotkey_ss58: str | None):
        self.name, self.hotkey_ss58 = name, hotkey_ss58

    def _call(self, method: str, *args):
        import ray

        return ray.get(ray.get_actor(self.name).call.remote(method, self.hotkey_ss58, *args))

    def current_block(self) -> int:
        return self._call("current_block")

    def neurons(self) -> list[Neuron]:
        return self._call("neurons")

    def is_registered(self, hotkey_ss58: str) -> bool:
        return self._call("is_registered", hotkey_ss58)

    def read_commitment(self, hotkey_ss58: str) -> Commitment | None:
        return self._call("read_commitment", hotkey_ss58)

    def commit_as(self, hotkey_ss58: str, data: str) -> None:
        self._call("commit_as", hotkey_ss58, data)

    def set_commitment(self, data: str) -> None:
        self._call("set_commitment", data)

    def history(self) -> list[tuple[str, int, str]]:
        import ray

        return ray.get(ray.get_actor(self.name).history.remote())


def start_shared_chain(name: str, neurons: list[Neuron], watched: str, rival: str | None = None,
                       answer: str | None = None):
    """The actor behind SharedChain (on the caller's Ray); kill it with ray.kill when done."""
    import ray

    return ray.remote(num_cpus=0)(_ChainHolder).options(name=name).remote(neurons, watched, rival, answer)
