"""The manual upload script, and publishing's bad input: one clear line, nothing uploaded or committed."""

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.run import main as sweep_main
from tests.conftest import own_stderr
from tests.in_memory_chain import InMemoryChain
from publishing.subnet.model_hash import hash_directory
from publishing.subnet.model_id import ModelId
from publishing.upload import main as upload_main, recorded_base_model
from tests.hub_server import local_hub  # noqa: F401  (the fixture)
from tests.synthetic_clock import Clock

TOKEN = "hf_test_token"
HOTKEY = "5UploadHotkeyxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
REPO = "miner/manual"


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_ACCESS_TOKEN", TOKEN)  # the original miner's name for it
    monkeypatch.chdir(tmp_path)  # no stray .env


@pytest.fixture
def best_model(model_dir, tmp_path):
    """A sweep's output: experiment/best_model with publish.json beside it."""
    folder = tmp_path / "experiment" / "best_model"
    shutil.copytree(model_dir, folder)
    (folder.parent / "publish.json").write_text(json.dumps({"eval_loss": 3.5}))
    return folder


def upload(best_model, hub, chain, clock, *extra):
    argv = ["--load_model_dir", str(best_model), "--hf_repo_id", REPO, "--wallet.name", "cold",
            "--wallet.hotkey", "hot", *extra]
    return upload_main(argv, chain_factory=lambda: chain, hub_endpoint=hub.url, clock=clock)


def test_manual_upload_publishes_and_keeps_the_window(env, best_model, local_hub, capsys):
    clock = Clock()
    chain = InMemoryChain(HOTKEY, clock=clock)
    assert upload(best_model, local_hub, chain, clock) == 0
    [(_, commitment)] = chain.history
    model_id = ModelId.from_compressed_str(commitment.data)
    assert model_id.commit == local_hub.commits(REPO)[-1] and model_id.competition_id == "m1"
    files = local_hub.files(REPO, model_id.commit)
    assert "README.md" in files and not any(name.startswith("adapter") for name in files)

    clock.now += 300  # five minutes later, a better model: the 20-minute rule holds here too
    (best_model.parent / "publish.json").write_text(json.dumps({"eval_loss": 3.0}))
    assert upload(best_model, local_hub, chain, clock) == 1
    assert "window opens" in capsys.readouterr().err
    assert len(chain.history) == 1 and len(local_hub.commits(REPO)) == 2  # the Hub's initial commit + ours


def test_a_worse_model_is_refused(env, best_model, local_hub):
    clock = Clock()
    chain = InMemoryChain(HOTKEY, clock=clock)
    assert upload(best_model, local_hub, chain, clock) == 0
    clock.now += 3600
    assert upload(best_model, local_hub, chain, clock, "--eval_loss", "3.9") == 3
    assert len(chain.history) == 1


def one_line_error(capsys) -> str:
    err = own_stderr(capsys)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("extra, fragment", [
    (["--hf_repo_id", "not-a-repo-id"], "must be namespace/name"),
    (["--hf_repo_id", "me/" + "x" * 40], "characters"),
    (["--competition_id", "g1"], "takes GemmaForCausalLM"),
    (["--competition_id", "zz"], "unknown competition 'zz'"),
])
def test_bad_upload_input(env, best_model, local_hub, capsys, extra, fragment):
    clock = Clock()
    chain = InMemoryChain(HOTKEY, clock=clock)
    assert upload(best_model, local_hub, chain, clock, *extra) == 2
    assert fragment in one_line_error(capsys)
    assert local_hub.repos() == [] and chain.history == []


def test_unknown_eval_loss_and_adapter_folders_are_refused(env, best_model, local_hub, capsys, tmp_path):
    chain = InMemoryChain(HOTKEY)
    (best_model.parent / "publish.json").unlink()
    assert upload(best_model, local_hub, chain, Clock()) == 2
    assert "pass --eval_loss" in one_line_error(capsys)
    (best_model / "adapter_config.json").write_text("{}")
    assert upload(best_model, local_hub, chain, Clock(), "--eval_loss", "3") == 2
    assert "holds a LoRA adapter" in one_line_error(capsys)
    assert local_hub.repos() == []


def test_unregistered_hotkey(env, best_model, local_hub, capsys):
    chain = InMemoryChain(HOTKEY, registered=set())
    assert upload(best_model, local_hub, chain, Clock()) == 2
    assert "is not registered on subnet 6" in one_line_error(capsys)
    assert local_hub.repos() == []


def test_missing_token(monkeypatch, best_model, local_hub, capsys, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ACCESS_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    assert upload(best_model, local_hub, InMemoryChain(HOTKEY), Clock()) == 2
    assert "no Hugging Face token" in one_line_error(capsys)


def test_token_from_dot_env(monkeypatch, best_model, local_hub, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ACCESS_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f'HF_ACCESS_TOKEN="{TOKEN}"\n')  # the original miner's .env
    clock = Clock()
    assert upload(best_model, local_hub, InMemoryChain(HOTKEY, clock=clock), clock) == 0


def test_missing_wallet_files_with_the_real_wallet_loader(env, best_model, tmp_path, capsys):
    argv = ["--load_model_dir", str(best_model), "--hf_repo_id", REPO, "--wallet.name", "nobody",
            "--wallet.hotkey", "hot", "--wallet.path", str(tmp_path / "wallets")]
    assert upload_main(argv) == 2
    assert "wallet 'nobody' has no coldkey" in one_line_error(capsys)


@pytest.mark.parametrize("argv, fragment", [
    (["--hf_repo_id", "bad id"], "must be namespace/name"),
    (["--hf_repo_id", "me/model", "--competition_id", "q7"], "unknown competition 'q7'"),
    (["--hf_repo_id", "me/model"], "publishing needs --wallet.name and --wallet.hotkey"),
    (["--hf_repo_id", "me/model", "--wallet.name", "nobody", "--wallet.hotkey", "hot"], "has no coldkey"),
])
def test_the_sweep_checks_publishing_before_ray_starts(env, argv, fragment, capsys, monkeypatch, tmp_path):
    import orchestrator.ray_start

    def ray_must_not_start(_config):
        raise AssertionError("Ray started for bad input")

    monkeypatch.setattr(orchestrator.ray_start, "start_ray", ray_must_not_start)
    argv = [*argv, "--wallet.path", str(tmp_path / "wallets")] if "--wallet.name" in argv else argv
    assert sweep_main(argv) == 2
    assert fragment in one_line_error(capsys)


def test_the_sweep_needs_a_token_to_publish(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ACCESS_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    assert sweep_main(["--hf_repo_id", "me/model"]) == 2
    assert "no Hugging Face token" in one_line_error(capsys)
    assert sweep_main(["--hf_repo_id", "me/model", "--offline", "--no-dashboard", "--num_samples", "0"]) == 2
    assert "--num_samples must be at least 1" in one_line_error(capsys)  # offline needs no token


def test_hash_of_an_uploaded_folder_is_the_validators(env, best_model, local_hub):
    clock = Clock()
    chain = InMemoryChain(HOTKEY, clock=clock)
    upload(best_model, local_hub, chain, clock)
    model_id = ModelId.from_compressed_str(chain.history[0][1].data)
    files = {k: v for k, v in local_hub.files(REPO, model_id.commit).items()
             if k not in ("README.md", ".gitattributes")}
    folder = best_model.parent / "downloaded"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    assert hash_directory(folder) == model_id.hash


@pytest.mark.parametrize("record", ["{not json", "[3.5]", '{"hash": "x"}', '{"eval_loss": "3.5"}',
                                    '{"eval_loss": NaN}', '{"eval_loss": null}', '{"eval_loss": true}'])
def test_a_damaged_publish_json_is_one_line_and_nothing_is_uploaded(env, best_model, local_hub, capsys, record):
    chain = InMemoryChain(HOTKEY)
    (best_model.parent / "publish.json").write_text(record)
    assert upload(best_model, local_hub, chain, Clock()) == 2
    err = one_line_error(capsys)
    assert "publish.json" in err and "pass --eval_loss" in err
    assert local_hub.repos() == [] and chain.history == []


def test_a_non_finite_eval_loss_flag_is_refused(env, best_model, local_hub, capsys):
    chain = InMemoryChain(HOTKEY)
    assert upload(best_model, local_hub, chain, Clock(), "--eval_loss", "nan") == 2
    assert "not a finite number" in one_line_error(capsys)
    assert local_hub.repos() == [] and chain.history == []


def test_the_manual_uploads_model_card_shows_no_local_path(env, best_model, local_hub, tmp_path):
    clock = Clock()
    chain = InMemoryChain(HOTKEY, clock=clock)
    (best_model.parent / "publish.json").write_text("{damaged")  # --eval_loss is given: only the card's base is lost
    assert upload(best_model, local_hub, chain, clock, "--eval_loss", "3.5") == 0
    card = local_hub.files(REPO, local_hub.commits(REPO)[-1])["README.md"].decode()
    assert "- base model: a local model" in card and "- sweep: `manual upload`" in card
    assert str(tmp_path) not in card and str(Path.home()) not in card


def test_the_manual_upload_names_a_base_model_that_publish_json_records(env, best_model, local_hub, tmp_path):
    clock = Clock()
    chain = InMemoryChain(HOTKEY, clock=clock)
    (best_model.parent / "publish.json").write_text(json.dumps({"eval_loss": 3.5, "base_model": "ns/base-7b"}))
    assert upload(best_model, local_hub, chain, clock) == 0
    card = local_hub.files(REPO, local_hub.commits(REPO)[-1])["README.md"].decode()
    assert "- base model: `ns/base-7b`" in card and str(tmp_path) not in card
    (best_model.parent / "publish.json").write_text(json.dumps({"eval_loss": 3.5, "base_model": str(tmp_path)}))
    assert recorded_base_model(best_model) == "a local model"  # a path is never trusted as a name
