"""Starting models from the Hub and the chain: --load_repo, --load_uid, --load_best (local Hub server, in-process chain)."""

import pytest
from transformers import AutoModelForCausalLM

from orchestrator.config import ConfigError, load_config
from orchestrator.inputs import resolve_model_dir
from orchestrator.run import main
from publishing.subnet.chain import Neuron
from tests.in_memory_chain import InMemoryChain
from publishing.subnet.hub import HubClient
from publishing.subnet.model_id import ModelId
from publishing.package import package_model
from publishing.subnet.remote_model import RemoteModelError, check_remote_files
from publishing.subnet.secrets import Secret
from tests.hub_server import local_hub  # noqa: F401  (the fixture)

TOKEN = "hf_test_token"
REPO = "other/tiny"


@pytest.fixture
def published(local_hub, model_dir, tmp_path, monkeypatch):
    """Another miner's model on the Hub; returns its commit. Downloads go to a fresh cache."""
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(tmp_path / "cache"))
    folder = package_model(model_dir, tmp_path / "upload")
    return HubClient(Secret(TOKEN), endpoint=local_hub.url).upload(REPO, folder, "card", "a model")


def downloads(hub) -> int:
    return sum(1 for method, path, _ in hub.request_log if method == "GET" and "/resolve/" in path)


def test_load_repo_downloads_the_commit_once(local_hub, published):
    config = load_config(["--load_repo", REPO, "--download_repo_latest_commit", published])
    folder = resolve_model_dir(config, hub_endpoint=local_hub.url)
    assert AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).config.architectures == ["LlamaForCausalLM"]
    fetched = downloads(local_hub)
    assert fetched > 0 and not (folder / "README.md").exists()  # only weights, configs and tokenizer files
    assert resolve_model_dir(config, hub_endpoint=local_hub.url) == folder
    assert downloads(local_hub) == fetched  # cached on this node: not downloaded again


def chain_with(commitments: dict[str, str], incentives: dict[int, float]) -> InMemoryChain:
    neurons = [Neuron(uid, f"hotkey-{uid}", incentive) for uid, incentive in incentives.items()]
    chain = InMemoryChain(None, neurons=neurons)
    for hotkey, data in commitments.items():
        chain.commit_as(hotkey, data)
    return chain


def test_load_uid_and_load_best_follow_the_chain(local_hub, published):
    model_id = ModelId("other", "tiny", commit=published, hash="h" * 44, competition_id="m1").to_compressed_str()
    chain = chain_with({"hotkey-2": model_id}, {0: 0.1, 1: 0.2, 2: 0.7})
    by_uid = resolve_model_dir(load_config(["--load_uid", "2"]), chain_factory=lambda: chain,
                               hub_endpoint=local_hub.url)
    best = resolve_model_dir(load_config(["--load_best"]), chain_factory=lambda: chain, hub_endpoint=local_hub.url)
    assert by_uid == best and (best / "model.safetensors").is_file()


def test_load_best_and_load_uid_skip_other_competitions(local_hub, published):
    ours = ModelId("other", "tiny", commit=published, hash="h" * 44, competition_id="m1").to_compressed_str()
    theirs = ModelId("else", "gemma", commit=published, hash="h" * 44, competition_id="g1").to_compressed_str()
    # uid 2 ranks first, but for g1: --load_best for m1 takes uid 1
    chain = chain_with({"hotkey-1": ours, "hotkey-2": theirs}, {0: 0.1, 1: 0.2, 2: 0.7})
    best = resolve_model_dir(load_config(["--load_best"]), chain_factory=lambda: chain, hub_endpoint=local_hub.url)
    assert (best / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="uid 2's model is committed for competition g1, not m1"):
        resolve_model_dir(load_config(["--load_uid", "2"]), chain_factory=lambda: chain, hub_endpoint=local_hub.url)
    with pytest.raises(ConfigError, match="no uid on the subnet has a model committed for competition m1"):
        resolve_model_dir(load_config(["--load_best"]), chain_factory=lambda: chain_with({"hotkey-2": theirs},
                          {1: 0.2, 2: 0.7}), hub_endpoint=local_hub.url)


@pytest.mark.parametrize("argv, fragment", [
    (["--load_uid", "9"], "uid 9 is not on the subnet (uids 0..2)"),
    (["--load_uid", "0"], "uid 0 has no model committed"),
])
def test_bad_uids(local_hub, published, argv, fragment):
    chain = chain_with({}, {0: 0.1, 1: 0.2, 2: 0.7})
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        resolve_model_dir(load_config(argv), chain_factory=lambda: chain, hub_endpoint=local_hub.url)


def test_a_repo_without_safetensors_is_refused_before_downloading(local_hub, published):
    sha = local_hub.add_commit("other/pickled", {"config.json": b"{}", "pytorch_model.bin": b"\x80" * 100})
    config = load_config(["--load_repo", "other/pickled", "--download_repo_latest_commit", sha])
    before = downloads(local_hub)
    with pytest.raises(ConfigError, match="has no safetensors weights"):
        resolve_model_dir(config, hub_endpoint=local_hub.url)
    assert downloads(local_hub) == before


def test_size_limit_is_checked_from_metadata():
    check_remote_files({"model.safetensors": 10}, max_bytes=10, where="r")
    with pytest.raises(RemoteModelError, match="over the 15 GiB"):
        check_remote_files({"model-1.safetensors": 8 * 1024**3, "model-2.safetensors": 8 * 1024**3},
                           max_bytes=15 * 1024**3, where="r")


@pytest.mark.parametrize("argv, fragment", [
    (["--load_repo", "a/b"], "--load_repo needs --download_repo_latest_commit"),
    (["--load_repo", "a/b", "--download_repo_latest_commit", "abc"], "40-character hex commit"),
    (["--load_uid", "3", "--load_best"], "--load_uid and --load_best both choose the starting model"),
    (["--load_model_dir", "x", "--load_repo", "a/b"], "both choose the starting model"),
])
def test_load_flags_are_checked_at_the_edge(argv, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(argv)


def test_a_sweep_starts_from_a_hub_repo(local_ray, local_hub, published, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", local_hub.url)
    code = main(["--load_repo", REPO, "--download_repo_latest_commit", published, "--num_samples", "1",
                 "--num_epochs", "1", "--storage_path", str(tmp_path / "r"), "--experiment_name", "x",
                 "--no-dashboard"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"model: {tmp_path / 'cache'}" in out and "=== Sweep summary ===" in out


def test_a_node_without_the_downloaded_model_fetches_the_same_snapshot(local_hub, published, tmp_path):
    import shutil

    from trainables.model_loading import ensure_model_here, hub_snapshot_source

    config = load_config(["--load_repo", REPO, "--download_repo_latest_commit", published])
    folder = resolve_model_dir(config, hub_endpoint=local_hub.url)
    assert hub_snapshot_source(str(folder))[:2] == (REPO, published)
    assert hub_snapshot_source("/some/plain/model") is None

    shutil.rmtree(folder.parents[2])  # another node: the cache is empty there
    ensure_model_here(str(folder), embedded=False, hub_endpoint=local_hub.url)
    assert (folder / "model.safetensors").is_file() and not (folder / "README.md").exists()
