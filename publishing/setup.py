"""Publishing, checked at the edge: everything that can be wrong with it fails before Ray starts.

`prepare_publishing` validates the repo id, the competition, the token, the wallet and the
hotkey's registration, and returns a `PublishSetup`: plain settings plus a picklable factory
that builds the Publisher inside the coordinator actor (so the chain connection and the
token's client are made where they are used, never in a trial).
"""

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from publishing.publisher import Publisher, PublishTarget
from publishing.subnet.chain import Chain, ChainError
from publishing.subnet.competitions import Competition, CompetitionError, get_competition
from publishing.subnet.constants import VALIDATOR_EPSILON
from publishing.subnet.hub import HubClient
from publishing.subnet.model_checks import ModelCheckError, check_model
from publishing.subnet.model_id import MAX_REPO_ID_LENGTH, ModelIdError, parse_repo_id
from publishing.subnet.secrets import Secret, load_hf_token
from trainables.documented import setting


def open_bittensor_chain(network: str, netuid: int, wallet_name: str, wallet_hotkey: str, wallet_path: str) -> Chain:
    from publishing.subnet.bittensor_chain import BittensorChain, load_wallet

    return BittensorChain(network, netuid, load_wallet(wallet_name, wallet_hotkey, wallet_path))


class SetupError(ValueError):
    """Publishing cannot work as asked; one line saying what to fix."""


@dataclass(frozen=True)
class PublishOptions:
    """The publishing group of the config: the sweep's flags and the manual upload's (publishing.upload)."""
    offline: bool = setting(False, "never upload or commit; the best model is still packaged and described in "
                                   "publish.json")
    hf_repo_id: str | None = setting(None, "Hugging Face repo to publish to (namespace/name, at most "
                                           f"{MAX_REPO_ID_LENGTH} characters)",
                                     unset="none: the sweep runs offline")
    competition_id: str = setting("m1", "the competition whose rules the sweep follows, from scoring to publishing "
                                        "(m1, g1, 4: --list_competitions prints them)")
    competitions_file: str | None = setting(None, "YAML of competitions to read instead of the shipped one (same "
                                                  "form; add your own)", unset="configs/competitions.yaml")
    avg_loss_upload_threshold: float | None = setting(None, "publish only a model whose eval loss is at most this",
                                                      unset="no threshold")
    publish_min_improvement: float | None = setting(None, "publish only a model this much better than the hotkey's "
                                                          "committed one", unset="the competition's smallest epsilon, "
                                                                                 f"{VALIDATOR_EPSILON:g}")
    use_hotkey_in_hash: bool | None = setting(None, "commit the hotkey-salted hash of later subnet versions (always, "
                                                    "for a competition whose hash is salted, such as 4)",
                                              unset="the competition's hash form: off for m1 and g1, on for 4")
    wait_for_publish: bool = setting(False, "at the end, wait for the 20-minute window to publish the best model")
    subtensor_network: str = setting("finney", "finney, test, local, or a ws:// address", flag="subtensor.network")
    netuid: int | None = setting(None, "the subnet's uid", unset="the competition's: 6 for m1 and g1, 37 for 4")
    wallet_name: str | None = setting(None, "coldkey (wallet) name of the miner", flag="wallet.name")
    wallet_hotkey: str | None = setting(None, "hotkey name of the miner, registered on the subnet",
                                        flag="wallet.hotkey")
    wallet_path: str = setting("~/.bittensor/wallets", "folder of bittensor wallets", flag="wallet.path")
    env_file: str = setting(".env", "file with HF_ACCESS_TOKEN (or HF_TOKEN) and WANDB_API_KEY")

    def subnet(self) -> int:
        """--netuid, else the subnet the competition runs on."""
        return self.netuid if self.netuid is not None else get_competition(self.competition_id, self.competitions_file).netuid

    def check(self) -> None:
        """Raise ValueError naming the flag to fix (what needs no files, network or wallet)."""
        if self.publish_min_improvement is not None and not 0 <= self.publish_min_improvement < 1:
            raise ValueError(f"--publish_min_improvement must be in [0, 1), got {self.publish_min_improvement}")
        if self.netuid is not None and not 0 <= self.netuid <= 65535:  # a subnet's uid is a u16 on the chain
            raise ValueError(f"--netuid must be a subnet uid from 0 to 65535, got {self.netuid}")
        if self.avg_loss_upload_threshold is not None and self.avg_loss_upload_threshold <= 0:
            raise ValueError(f"--avg_loss_upload_threshold must be above 0 (a loss is never below it), got "
                             f"{self.avg_loss_upload_threshold}")


@dataclass(frozen=True)
class PublishSetup:
    target: PublishTarget
    token: Secret | None = None
    hub_endpoint: str | None = None
    chain_factory: Callable[[], Chain] | None = None
    gate: Callable[[str], tuple[bool, str]] | None = None  # e.g. --require_win: (publish?, reason) for a model folder

    def publisher(self, base_model_dir: str, work_dir: str | Path, sweep_id: str,
                  base_model: str | None = None) -> Publisher:
        """`base_model`: the model card's name for the base model (see Publisher); by default from base_model_dir."""
        if self.target.repo_id is None:
            return Publisher(self.target, base_model_dir, work_dir, sweep_id, base_model=base_model)
        hub = HubClient(self.token, endpoint=self.hub_endpoint)
        return Publisher(self.target, base_model_dir, work_dir, sweep_id, hub=hub, chain=self.chain_factory(),
                         base_model=base_model)


def offline_hotkey(config: PublishOptions) -> str:
    """The wallet hotkey's ss58 address, read from its file (no chain needed)."""
    from publishing.subnet.bittensor_chain import hotkey_keypair, load_wallet

    try:
        return hotkey_keypair(load_wallet(config.wallet_name, config.wallet_hotkey, config.wallet_path)).ss58_address
    except ChainError as e:
        raise SetupError(str(e)) from None


def check_starting_model(model_dir: Path, competition: Competition) -> None:
    """Architecture, parameter count and size: LoRA merging changes none of them, so check them before training."""
    try:
        check_model(model_dir, competition, weight_norms=False)
    except ModelCheckError as e:
        raise SetupError(f"the starting model breaks competition {competition.id}'s limits: {e}") from None


def prepare_publishing(config: PublishOptions, model_dir: Path, chain_factory: Callable[[], Chain] | None = None,
                       hub_endpoint: str | None = None) -> PublishSetup:
    """Check every publishing input; offline (or without --hf_repo_id) only the competition is checked."""
    try:
        competition = get_competition(config.competition_id, config.competitions_file)
    except CompetitionError as e:
        raise SetupError(f"--competition_id: {e}") from None
    check_starting_model(model_dir, competition)
    threshold = config.avg_loss_upload_threshold if config.avg_loss_upload_threshold is not None else float("inf")
    # an absolute path: the coordinator reads it again from a Ray worker, whose working directory may differ
    competitions_file = str(Path(config.competitions_file).expanduser().resolve()) if config.competitions_file else None
    target = PublishTarget(repo_id=None, competition_id=competition.id, competitions_file=competitions_file,
                           use_hotkey_in_hash=config.use_hotkey_in_hash or competition.hash == "salted",
                           threshold=threshold, min_improvement=(config.publish_min_improvement
                                                                 if config.publish_min_improvement is not None
                                                                 else competition.epsilon.floor))
    if config.offline or config.hf_repo_id is None:
        if target.use_hotkey_in_hash and config.wallet_name and config.wallet_hotkey:
            # offline, the hash publish.json shows is still the one that would be committed: salted by the hotkey
            target = PublishTarget(**{**target.__dict__, "hotkey_ss58": offline_hotkey(config)})
        elif target.use_hotkey_in_hash:
            print(f"note: competition {competition.id} commits the hotkey-salted hash; without --wallet.name and "
                  f"--wallet.hotkey, publish.json shows the plain one")
        return PublishSetup(target=target)

    try:
        parse_repo_id(config.hf_repo_id)
    except ModelIdError as e:
        raise SetupError(str(e)) from None
    token = load_hf_token(config.env_file)
    if token is None:
        raise SetupError(f"no Hugging Face token: set HF_ACCESS_TOKEN (or HF_TOKEN) in the environment or in "
                          f"{config.env_file}, or run with --offline")
    if not config.wallet_name or not config.wallet_hotkey:
        raise SetupError("publishing needs --wallet.name and --wallet.hotkey (the hotkey registered on the subnet); "
                          "or run with --offline")
    chain_factory = chain_factory or functools.partial(
        open_bittensor_chain, config.subtensor_network, config.subnet(), config.wallet_name, config.wallet_hotkey,
        config.wallet_path)
    try:
        chain = chain_factory()
        if not chain.is_registered(chain.hotkey_ss58):
            raise SetupError(f"hotkey {config.wallet_hotkey} ({chain.hotkey_ss58}) is not registered on subnet "
                              f"{config.subnet()} of {config.subtensor_network}; register it with btcli "
                              f"subnet register, or run with --offline")
    except ChainError as e:
        raise SetupError(str(e)) from None
    return PublishSetup(target=PublishTarget(**{**target.__dict__, "repo_id": config.hf_repo_id}), token=token,
                        hub_endpoint=hub_endpoint, chain_factory=chain_factory)
