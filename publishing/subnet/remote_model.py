"""Starting models from elsewhere: a Hub repo at a commit, a uid's committed model, or the best uid's.

Before anything is downloaded, the repo's files are checked from the Hub's metadata: at most
the competition's total size, safetensors weights present. Only weights, configs and tokenizer
files are fetched (never code: models are loaded with use_safetensors=True and without
trust_remote_code). Downloads go to one cache per node, so they happen once, not once per trial.
"""

from pathlib import Path

from publishing.subnet.chain import Chain
from publishing.subnet.hub import HubClient
from publishing.subnet.model_id import ModelId, ModelIdError
from trainables.errors import one_line
from trainables.model_loading import cache_root, is_model_file


class RemoteModelError(ValueError):
    pass


def default_model_cache() -> Path:
    return cache_root() / "models"


def check_remote_files(sizes: dict[str, int], max_bytes: int, where: str) -> None:
    total = sum(sizes.values())
    if total > max_bytes:
        raise RemoteModelError(f"{where} totals {total / 1024**3:.2f} GiB, over the {max_bytes / 1024**3:.0f} GiB "
                               "validators accept")
    if not any(name.endswith(".safetensors") for name in sizes):
        raise RemoteModelError(f"{where} has no safetensors weights; validators load with use_safetensors=True")


def fetch_model(hub: HubClient, repo_id: str, commit: str, max_bytes: int, cache_dir: Path | None = None) -> Path:
    where = f"{repo_id}@{commit[:8]}"
    try:
        sizes = hub.file_sizes(repo_id, commit)
    except Exception as e:  # huggingface_hub raises several types for a missing repo or revision
        raise RemoteModelError(f"cannot read {where} from {hub.endpoint}: {one_line(e)}") from None
    check_remote_files(sizes, max_bytes, where)
    wanted = [name for name in sizes if is_model_file(name)]
    return hub.download(repo_id, commit, cache_dir or default_model_cache(), allow_patterns=wanted)


def committed_model_id(chain: Chain, uid: int, competition_id: str | None = None) -> ModelId:
    """uid's committed ModelId; with competition_id, one committed for that competition only."""
    neurons = {n.uid: n for n in chain.neurons()}
    if uid not in neurons:
        top = max(neurons, default=-1)
        raise RemoteModelError(f"uid {uid} is not on the subnet (uids 0..{top}); pick a registered uid")
    commitment = chain.read_commitment(neurons[uid].hotkey)
    if commitment is None:
        raise RemoteModelError(f"uid {uid} has no model committed on the chain; pick another uid")
    try:
        model_id = ModelId.from_compressed_str(commitment.data)
    except ModelIdError as e:
        raise RemoteModelError(f"uid {uid}'s commitment is not a ModelId: {e}") from None
    if not model_id.commit:
        raise RemoteModelError(f"uid {uid}'s ModelId {commitment.data} names no commit")
    if competition_id is not None and model_id.competition_id != competition_id:
        raise RemoteModelError(f"uid {uid}'s model is committed for competition {model_id.competition_id}, not "
                               f"{competition_id}; pick a uid of competition {competition_id} (or --competition_id "
                               f"{model_id.competition_id})")
    return model_id


def best_uid(chain: Chain, competition_id: str | None = None) -> int:
    """The uid with the highest incentive (the model validators currently rank first); with competition_id, the
    highest whose commitment is for that competition, skipping the others'."""
    neurons = sorted(chain.neurons(), key=lambda n: (-n.incentive, n.uid))
    if not neurons:
        raise RemoteModelError("the subnet has no neurons to load from")
    if competition_id is None:
        return neurons[0].uid
    for neuron in neurons:
        try:
            committed_model_id(chain, neuron.uid, competition_id)
        except RemoteModelError:
            continue  # no commitment, not a ModelId, or another competition's
        return neuron.uid
    raise RemoteModelError(f"no uid on the subnet has a model committed for competition {competition_id}")
