"""The folder exactly as it is uploaded: files every validator's from_pretrained downloads.

Validators hash the files `from_pretrained` (model, then tokenizer) fetches, and they run
different transformers releases. So the folder holds only files every release fetches and
can read: config, generation config, safetensors (and index), tokenizer.json and
tokenizer_config.json, with the chat template and special tokens inside tokenizer_config.json
and tokenizer.json in the serialization older `tokenizers` read. Its hash is the validators'
hash. The model card (README.md) goes into the same Hub commit from outside this folder: no
release downloads it, so it is never part of the hash.
"""

import json
import re
import shutil
from pathlib import Path

from trainables.hyperparameters import NAMES

PACKAGED_CONFIG_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
# Keys that make from_pretrained look for Python files in the repo: a published model must never carry them,
# so no validator (or user) is asked to run code that came with a starting model.
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")
LOCAL_MODEL = "a local model"  # how the card names a base model that has no Hub id
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # "name" or "namespace/name"
# tokenizer class names only recent transformers releases know -> the name every release knows
_LEGACY_TOKENIZER_CLASS = {"TokenizersBackend": "PreTrainedTokenizerFast"}
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class PackageError(ValueError):
    pass


def legacy_tokenizer_json(data: dict) -> dict:
    """tokenizers >= 0.20 writes BPE merges as pairs; 0.15 (the original validators') reads "a b" strings."""
    model = data.get("model", {})
    merges = model.get("merges")
    if merges and isinstance(merges[0], list) and not any(" " in a or " " in b for a, b in merges):
        model = {**model, "merges": [f"{a} {b}" for a, b in merges]}
        model.pop("ignore_merges", None)
        data = {**data, "model": model}
    return data


def without_remote_code(config: dict) -> dict:
    """The config without REMOTE_CODE_KEYS, at any depth (composite models nest sub-configs)."""
    return {key: without_remote_code(value) if isinstance(value, dict) else value
            for key, value in config.items() if key not in REMOTE_CODE_KEYS}


def strip_remote_code(folder: str | Path) -> None:
    """Make a model folder code-free in place: no remote-code keys in its configs, no Python files.
    A config without such keys is left byte for byte as it is (its bytes are part of the model's hash)."""
    folder = Path(folder)
    for name in ("config.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            config = json.loads((folder / name).read_text())
            clean = without_remote_code(config)
            if clean != config:
                (folder / name).write_text(json.dumps(clean, indent=2, ensure_ascii=False) + "\n")
    for code in folder.glob("*.py"):
        code.unlink()


def portable_tokenizer_config(model_dir: Path) -> dict:
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    template_file = model_dir / "chat_template.jinja"
    if not config.get("chat_template") and template_file.is_file():
        config["chat_template"] = template_file.read_text()  # a separate file older releases never download
    special_map = model_dir / "special_tokens_map.json"
    if special_map.is_file():
        for key, value in json.loads(special_map.read_text()).items():
            if key in _SPECIAL_TOKENS:
                config.setdefault(key, value)
    tokenizer_class = config.get("tokenizer_class")
    config["tokenizer_class"] = _LEGACY_TOKENIZER_CLASS.get(tokenizer_class, tokenizer_class or "PreTrainedTokenizerFast")
    config.pop("backend", None)
    return config


def package_model(model_dir: str | Path, out_dir: str | Path) -> Path:
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "tokenizer.json").is_file() or not (model_dir / "tokenizer_config.json").is_file():
        raise PackageError(f"{model_dir} needs tokenizer.json and tokenizer_config.json (a fast tokenizer) to upload")
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    for name in PACKAGED_CONFIG_FILES:  # named files only: a repo's *.py files are never copied
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out_dir / name)
    for weights in model_dir.glob("*.safetensors"):
        shutil.copy2(weights, out_dir / weights.name)
    tokenizer = legacy_tokenizer_json(json.loads((model_dir / "tokenizer.json").read_text()))
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    config = portable_tokenizer_config(model_dir)
    if not config.get("chat_template"):
        raise PackageError(f"the tokenizer in {model_dir} has no chat template; validators need the model's default")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    strip_remote_code(out_dir)
    return out_dir


def hashed_files(folder: str | Path) -> list[str]:
    """The files validators download, and so hash: all of the packaged folder."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file())


def is_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and ".." not in text


def base_model_name(model_dir: str | Path) -> str:
    """How the card names a base model folder: its Hub id when the folder is a Hub cache snapshot
    (.../models--ns--name/snapshots/<commit>), else LOCAL_MODEL. A local path tells readers of the card
    nothing and shows them this machine's layout."""
    # Imported here: trainables.model_loading imports torch, which the coordinator needs only once it merges.
    from trainables.model_loading import hub_snapshot_source

    source = hub_snapshot_source(str(Path(model_dir).expanduser().absolute()))
    return source[0] if source and is_hub_id(source[0]) else LOCAL_MODEL


def model_card(base_model: str, hyperparameters: dict, eval_loss: float, sweep_id: str, competition_id: str) -> str:
    """The README.md uploaded beside the model. `base_model` is a Hub id (or LOCAL_MODEL); anything else, such as
    a path, is written as LOCAL_MODEL, and the sweep is named by its last path part only."""
    base = f"`{base_model}`" if is_hub_id(base_model) else LOCAL_MODEL
    lines = [
        "---", "library_name: transformers", "tags: [bittensor, finetuning-subnet, lora]", "---", "",
        f"# LoRA finetune for competition {competition_id}", "",
        f"- base model: {base}",
        f"- sweep: `{Path(str(sweep_id)).name or sweep_id}`",
        f"- eval loss (validator-style, held-out pairs): {eval_loss:.4f}",
        *(f"- {name}: {hyperparameters[name]}" for name in NAMES if name in hyperparameters),
        "", "The LoRA adapter is merged into the base weights.", "",
    ]
    return "\n".join(lines)
