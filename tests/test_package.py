"""The upload folder: what validators download, readable by every transformers release, within limits."""

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from publishing.subnet.competitions import CompetitionError, get_competition, load_competitions
from publishing.subnet.model_checks import ModelCheckError, check_model
from publishing.merged_model import merge_adapter
from publishing.package import hashed_files, legacy_tokenizer_json, model_card, package_model
from publishing.publisher import Candidate, Publisher, PublishTarget


@pytest.fixture
def packaged(model_dir, tmp_path):
    return package_model(model_dir, tmp_path / "upload")


def test_upload_holds_only_files_every_release_downloads(packaged):
    assert hashed_files(packaged) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])


def test_model_card_names_what_a_miner_needs():
    card = model_card("tiny", {"learning_rate": 1e-4, "r": 8, "alpha": 16}, 3.21, "sweep-1", "m1")
    assert "eval loss (validator-style, held-out pairs): 3.2100" in card
    assert "- r: 8" in card and "`sweep-1`" in card and "base model: `tiny`" in card


def test_packaged_model_and_tokenizer_load_with_the_chat_template(packaged, model_dir):
    model = AutoModelForCausalLM.from_pretrained(packaged, use_safetensors=True)
    assert model.config.architectures == ["LlamaForCausalLM"]
    tokenizer = AutoTokenizer.from_pretrained(packaged)
    original = AutoTokenizer.from_pretrained(model_dir)
    chat = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == original.apply_chat_template(chat, tokenize=False)
    config = json.loads((packaged / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["chat_template"]


def test_a_tokenizer_saved_by_recent_transformers_is_made_portable(model_dir, tmp_path):
    folder = tmp_path / "saved"
    AutoModelForCausalLM.from_pretrained(model_dir).save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)  # writes chat_template.jinja separately
    packaged = package_model(folder, tmp_path / "upload")
    assert not (packaged / "chat_template.jinja").exists()
    config = json.loads((packaged / "tokenizer_config.json").read_text())
    assert config["chat_template"] == (folder / "chat_template.jinja").read_text()
    assert config["tokenizer_class"] != "TokenizersBackend"


def test_merges_are_written_the_way_tokenizers_0_15_reads_them():
    data = {"model": {"type": "BPE", "merges": [["a", "b"], ["Ġ", "ab"]], "ignore_merges": False}}
    assert legacy_tokenizer_json(data)["model"] == {"type": "BPE", "merges": ["a b", "Ġ ab"]}
    with_space = {"model": {"type": "BPE", "merges": [["a b", "c"]]}}
    assert legacy_tokenizer_json(with_space) == with_space  # cannot be written the old way: left as is


def test_competitions_are_data():
    competitions = load_competitions()
    assert competitions["m1"].architecture == "LlamaForCausalLM" and competitions["m1"].max_parameters == 7 * 1024**3
    assert competitions["g1"].architecture == "GemmaForCausalLM" and competitions["g1"].max_parameters == 3 * 1024**3
    # the originals keep the original validators' rules; the later competition carries its own
    assert {(c.netuid, c.hash, c.epsilon.at(10**9, 0), c.eval_delay_blocks, c.min_parameters)
            for c in (competitions["m1"], competitions["g1"])} == {(6, "plain", 0.01, 0, 0)}
    assert [t.method for t in competitions["m1"].tasks] == ["response_loss"]
    later = competitions["4"]
    assert (later.netuid, later.hash, later.eval_delay_blocks, later.sequence_length) == (37, "salted", 460, 16384)
    assert later.epsilon.at(21_600, 0) == pytest.approx(0.01) and later.epsilon.at(0, 0) == 0.05
    assert (later.min_parameters, later.max_parameters, later.tokenizer) == (3_200_000_000, 3_400_000_000,
                                                                              "Xenova/gpt-4")
    assert [(t.name, t.method, t.weight) for t in later.tasks] == [("SYNTHETIC_1_SFT", "reference_loss", 0.5),
                                                                    ("CODEFORCES_COTS", "reference_loss", 0.5)]
    assert "LlamaForCausalLM" in later.architectures and "Qwen2ForCausalLM" not in later.architectures
    with pytest.raises(CompetitionError, match="unknown competition 'x9'"):
        get_competition("x9")


def test_the_subnet_follows_the_competition_unless_netuid_is_given():
    from publishing.setup import PublishOptions

    assert PublishOptions().subnet() == 6 and PublishOptions(competition_id="g1").subnet() == 6
    assert PublishOptions(competition_id="4").subnet() == 37
    assert PublishOptions(competition_id="4", netuid=9).subnet() == 9


def test_a_model_under_a_competitions_parameter_floor_is_refused(packaged):
    with pytest.raises(ModelCheckError, match=r"1,574,144 parameters, under competition 4's 3,200,000,000"):
        check_model(packaged, get_competition("4"))


def test_weights_stored_in_another_dtype_than_the_competitions_are_refused(packaged, tmp_path):
    import dataclasses as dc

    bf16_only = dc.replace(get_competition("m1"), dtype="bfloat16")
    with pytest.raises(ModelCheckError, match="stored in float32, but competition m1 takes bfloat16"):
        check_model(packaged, bf16_only)
    as_bf16 = tmp_path / "bf16"
    shutil.copytree(packaged, as_bf16)
    weights = load_file(as_bf16 / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, as_bf16 / "model.safetensors",
              metadata={"format": "pt"})
    assert check_model(as_bf16, bf16_only).parameters == sum(v.numel() for v in weights.values())


def test_a_salted_competition_always_commits_the_salted_hash(model_dir, monkeypatch):
    import dataclasses as dc

    import publishing.setup as setup

    plain = setup.prepare_publishing(setup.PublishOptions(offline=True), model_dir)
    assert plain.target.use_hotkey_in_hash is False  # m1: plain unless --use_hotkey_in_hash
    salted_m1 = dc.replace(get_competition("m1"), hash="salted")  # competition 4's form, on a model the tiny one fits
    monkeypatch.setattr(setup, "get_competition", lambda _id, _file=None: salted_m1)
    assert setup.prepare_publishing(setup.PublishOptions(offline=True), model_dir).target.use_hotkey_in_hash


def test_the_tiny_model_is_within_m1(packaged):
    stats = check_model(packaged, get_competition("m1"))
    model = AutoModelForCausalLM.from_pretrained(packaged)
    assert stats.parameters == sum(p.numel() for p in model.parameters())
    assert stats.max_weight_norm < 200


def test_limits_are_enforced(packaged):
    m1 = get_competition("m1")
    with pytest.raises(ModelCheckError, match="takes GemmaForCausalLM"):
        check_model(packaged, get_competition("g1"))
    with pytest.raises(ModelCheckError, match="parameters, over"):
        check_model(packaged, dataclasses.replace(m1, max_parameters=1000))
    with pytest.raises(ModelCheckError, match="GiB, over"):
        check_model(packaged, dataclasses.replace(m1, max_repo_bytes=1000))
    with pytest.raises(ModelCheckError, match="validators evaluate 4096-token"):
        check_model(packaged, dataclasses.replace(m1, sequence_length=4096))


def test_weight_norm_bounds(packaged):
    weights = load_file(packaged / "model.safetensors")
    name = next(n for n in weights if n.endswith("q_proj.weight"))
    weights[name] = weights[name] * 1e5  # one exploded projection
    save_file(weights, packaged / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelCheckError, match="has norm .* over the validators' 1000"):
        check_model(packaged, get_competition("m1"))
    m1 = get_competition("m1")
    with pytest.raises(ModelCheckError, match="of projection weights have norm above"):
        check_model(packaged, dataclasses.replace(m1, max_weight_norm=1e12, high_norm=0.001))
    assert torch.isfinite(weights[name]).all()


LEGACY_PYTHON = os.environ.get("LORA_SWEEP_LEGACY_PYTHON")
LEGACY_CHECK = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, chat = sys.argv[1], json.loads(sys.argv[2])
AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
tokenizer = AutoTokenizer.from_pretrained(folder)
print(json.dumps([tokenizer.apply_chat_template(chat[:1], add_generation_prompt=True, tokenize=True),
                  tokenizer.apply_chat_template(chat, tokenize=True)]))
"""


@pytest.mark.skipif(not LEGACY_PYTHON, reason="set LORA_SWEEP_LEGACY_PYTHON to a Python with transformers==4.38.1 "
                                               "(the original validators') to check the upload folder there")
def test_the_original_validators_read_the_upload_folder_the_same_way(packaged):
    from trainables.data import tokenize_pair

    chat = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}]
    done = subprocess.run([LEGACY_PYTHON, "-c", LEGACY_CHECK, str(packaged), json.dumps(chat)],
                          capture_output=True, text=True, timeout=300, check=True)
    prompt, full = json.loads(done.stdout.strip().splitlines()[-1])
    ids, prompt_len = tokenize_pair(AutoTokenizer.from_pretrained(packaged), "What is two plus two?", "Four.", 2048)
    assert full == ids and len(prompt) == prompt_len


# -- the model card names the base model by its Hub id, never by a path of this machine ----------------------------

def card_for(base_model_dir, tmp_path, sweep_id="sweep-1") -> str:
    publisher = Publisher(PublishTarget(repo_id=None), str(base_model_dir), tmp_path / "work", sweep_id)
    merged = Candidate(trial_id="t", step=5, eval_loss=3.2, hyperparameters={"r": 8}, model_dir=str(base_model_dir))
    return publisher.prepare(merged).model_card


def assert_no_local_path(card: str, *paths) -> None:
    for path in (*paths, Path.home()):
        assert str(path) not in card, (path, card)


def test_model_card_names_a_hub_snapshot_by_its_id(model_dir, tmp_path):
    snapshot = tmp_path / "hf" / "hub" / "models--some-org--tiny-base" / "snapshots" / "0123abcd"
    shutil.copytree(model_dir, snapshot)
    card = card_for(snapshot, tmp_path)
    assert "- base model: `some-org/tiny-base`" in card
    assert_no_local_path(card, tmp_path)


def test_model_card_names_a_local_base_model_without_its_path(model_dir, tmp_path):
    card = card_for(model_dir, tmp_path, sweep_id=str(tmp_path / "ray_results" / "sweep-7"))
    assert "- base model: a local model" in card and "- sweep: `sweep-7`" in card
    assert_no_local_path(card, tmp_path, model_dir)


def test_model_card_never_prints_a_path_it_is_given():
    card = model_card("/home/miner/models/base", {"r": 8}, 3.2, "/home/miner/ray_results/sweep-1", "m1")
    assert "- base model: a local model" in card and "- sweep: `sweep-1`" in card and "/home" not in card


# -- code from a model repo is never published ---------------------------------------------------------------------

REMOTE_CODE = ("auto_map", "trust_remote_code")


@pytest.fixture
def model_with_remote_code(model_dir, tmp_path):
    """The tiny model as a repo that ships code: auto_map in both configs, and the Python files they point at."""
    folder = tmp_path / "with-code"
    shutil.copytree(model_dir, folder)
    for name, auto_map in (("config.json", {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}),
                           ("tokenizer_config.json", {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]})):
        config = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**config, "auto_map": auto_map, "trust_remote_code": True}))
    for code in ("modeling_evil.py", "tokenization_evil.py"):
        (folder / code).write_text("raise RuntimeError('code from the model repo ran')\n")
    return folder


def assert_code_free(folder: Path) -> None:
    assert not list(folder.glob("*.py"))
    for name in ("config.json", "tokenizer_config.json"):
        text = (folder / name).read_text()
        assert not any(key in text for key in REMOTE_CODE), (name, text[:300])


def test_no_remote_code_reaches_the_merged_or_uploaded_model(model_with_remote_code, model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    merged = merge_adapter(model_with_remote_code, adapter, tmp_path / "merged")
    assert_code_free(merged)
    assert_code_free(package_model(merged, tmp_path / "upload"))
    assert_code_free(package_model(model_with_remote_code, tmp_path / "upload-as-is"))  # the manual upload's path
    AutoModelForCausalLM.from_pretrained(tmp_path / "upload", use_safetensors=True, trust_remote_code=False)
    AutoTokenizer.from_pretrained(tmp_path / "upload", trust_remote_code=False)
