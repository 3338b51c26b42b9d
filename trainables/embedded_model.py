"""The embedded default model: a tiny Llama built from a config with a fixed seed.

Nothing is downloaded. The folder is created on first use, cached, and is an ordinary
Hugging Face model folder (config, safetensors, tokenizer with a chat template), so every
code path that takes `--load_model_dir` takes it too. Building it is deterministic, so each
node of a cluster can create its own copy and all copies hold the same weights.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from filelock import FileLock

from trainables import model_loading

EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "configs" / "embedded"
MODEL_CONFIG = EMBEDDED_DIR / "model_config.json"
TOKENIZER_DIR = EMBEDDED_DIR / "tokenizer"
DATASET = EMBEDDED_DIR / "data.jsonl"
SEED = 0


def _assets_digest() -> str:
    digest = hashlib.sha256(f"seed={SEED};torch={torch.__version__.split('+')[0]}".encode())
    for path in [MODEL_CONFIG, *sorted(TOKENIZER_DIR.iterdir())]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def ensure_embedded_model(cache_root: Path | None = None) -> Path:
    """Return the folder of the embedded model, building it once if it is missing."""
    root = Path(cache_root) if cache_root else model_loading.cache_root()
    target = root / f"tiny-llama-{_assets_digest()}"
    if (target / "model.safetensors").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").exists():  # another process built it meanwhile
            return target
        # imported only when the model is built (once per machine), not by every process that finds its folder
        from transformers import LlamaConfig, LlamaForCausalLM
        from transformers.utils import logging as hf_logging

        staging = root / f".{target.name}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(LlamaConfig(**json.loads(MODEL_CONFIG.read_text())))
        hf_logging.disable_progress_bar()  # a bar for one tiny file is noise on stderr
        model.save_pretrained(staging, safe_serialization=True)
        for path in TOKENIZER_DIR.iterdir():
            shutil.copy2(path, staging / path.name)
        os.replace(staging, target)  # atomic: readers never see a half-written folder
    return target
