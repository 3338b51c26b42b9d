"""--tokenizer: validators tokenize with the competition's tokenizer, so by default so does the sweep."""

import json
import shutil

import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.inputs import choose_tokenizer
from publishing.subnet.competitions import get_competition
from publishing.subnet.hub import HubClient
from publishing.package import package_model
from publishing.subnet.secrets import Secret
from tests.hub_server import local_hub  # noqa: F401  (the fixture)

CHAT = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]


@pytest.fixture
def competition_tokenizer_on_hub(local_hub, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(tmp_path / "cache"))
    folder = package_model(model_dir, tmp_path / "tok")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    HubClient(Secret("hf_test_token"), endpoint=local_hub.url).upload(get_competition("m1").tokenizer, folder,
                                                                      "card", "tokenizer")
    return local_hub


def test_competition_tokenizer_is_downloaded_and_used(competition_tokenizer_on_hub, model_dir, tmp_path):
    config = load_config(["--load_model_dir", str(model_dir), "--tokenizer", "competition"])
    tokenizer = choose_tokenizer(config, model_dir, hub_endpoint=competition_tokenizer_on_hub.url)
    assert str(tmp_path / "cache") in tokenizer.name_or_path
    assert tokenizer.apply_chat_template(CHAT, tokenize=False).startswith("<s>[INST] Hi? [/INST]")


def test_a_tokenizer_larger_than_the_model_is_refused(competition_tokenizer_on_hub, model_dir, tmp_path):
    small = tmp_path / "small-model"
    shutil.copytree(model_dir, small)
    config_json = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config_json, "vocab_size": 100}))
    with pytest.raises(ConfigError, match="tokenizer has 768 tokens but the model embeds 100"):
        choose_tokenizer(load_config(["--load_model_dir", str(small)]), small,
                         hub_endpoint=competition_tokenizer_on_hub.url)


def test_auto_falls_back_to_the_models_own_when_the_hub_is_unreachable(model_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(tmp_path / "empty-cache"))
    config = load_config(["--load_model_dir", str(model_dir)])
    tokenizer = choose_tokenizer(config, model_dir, hub_endpoint="http://127.0.0.1:9")
    assert tokenizer.name_or_path == str(model_dir)
    assert "tokenizing with the model's own" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="cannot fetch competition m1's tokenizer"):
        choose_tokenizer(load_config(["--load_model_dir", str(model_dir), "--tokenizer", "competition"]), model_dir,
                         hub_endpoint="http://127.0.0.1:9")


def test_the_embedded_model_keeps_its_own_tokenizer(model_dir):
    assert choose_tokenizer(load_config([]), model_dir).name_or_path == str(model_dir)
