"""Model loading, in one home: where a model runs, in which dtype, how a node gets the starting model,
and how a folder is loaded. Trials, the head-to-head and the merge all load through here.

Every load is local (`local_files_only`), safetensors only, and never runs code from the folder
(`trust_remote_code=False`): a starting model is data, not a program.
"""

import gc
import os
from pathlib import Path

import torch

CACHE_ENV = "LORA_SWEEP_CACHE"
# What is fetched of a starting model from the Hub: weights, configs, tokenizer files; never code.
STARTING_MODEL_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]


def cache_root() -> Path:
    """This node's cache: the embedded model, and models and tokenizers downloaded from the Hub."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "lora-sweep-miner"))


def pick_device(requested: str) -> torch.device:
    """auto: the GPU Ray assigned to this process (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    if requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")



def resolve_attention(requested: str, device: torch.device) -> str:
    """auto: flash-attention 2 where it can run (a CUDA GPU and the flash-attn package), else torch's sdpa.
    Every choice keeps packed pairs apart (transformers reads the restarting position ids)."""
    from transformers.utils import is_flash_attn_2_available

    flash_possible = device.type == "cuda" and is_flash_attn_2_available()
    if requested == "auto":
        return "flash_attention_2" if flash_possible else "sdpa"
    if requested == "flash_attention_2" and not flash_possible:
        raise ValueError("--attn_implementation flash_attention_2 needs a CUDA GPU and the flash-attn package "
                         "(pip install flash-attn) on every worker; use sdpa or auto")
    return requested


def training_dtype(device: torch.device) -> torch.dtype:
    """bf16 weights where the GPU supports them; fp32 on the CPU and older GPUs."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def use_cpus(device: torch.device, cpus: int) -> None:
    """On the CPU, torch uses the cores Ray gave this trial, not every core of the machine."""
    if device.type == "cpu":
        torch.set_num_threads(cpus)


def hub_snapshot_source(model_dir: str) -> tuple[str, str, Path] | None:
    """(repo_id, commit, cache_dir) of a folder in the Hub cache layout .../models--ns--name/snapshots/<commit>."""
    path = Path(model_dir)
    if len(path.parts) < 4 or path.parent.name != "snapshots" or not path.parents[1].name.startswith("models--"):
        return None
    repo_id = path.parents[1].name[len("models--"):].replace("--", "/", 1)
    return repo_id, path.name, path.parents[2]


def ensure_model_here(model_dir: str, embedded: bool, hub_endpoint: str | None) -> None:
    """A node that lacks the starting model gets its own copy, once: the embedded model is built (deterministic,
    the same weights everywhere), a Hub model is downloaded into the same cache path (its files were checked at
    the edge; only STARTING_MODEL_PATTERNS)."""
    if Path(model_dir).is_dir():
        return
    if embedded:
        from trainables.embedded_model import ensure_embedded_model

        ensure_embedded_model(Path(model_dir).parent)
        return
    source = hub_snapshot_source(model_dir)
    if source is not None:
        from huggingface_hub import snapshot_download

        repo_id, commit, cache_dir = source
        snapshot_download(repo_id, revision=commit, cache_dir=str(cache_dir), endpoint=hub_endpoint,
                          allow_patterns=STARTING_MODEL_PATTERNS)


def load_causal_lm(model_dir: str | Path, dtype: torch.dtype | str, attn_implementation: str = "sdpa"):
    """A model folder as a causal LM: local files, safetensors, transformers' own code only."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True, local_files_only=True,
                                                trust_remote_code=False, attn_implementation=attn_implementation)


def release_accelerator_memory() -> None:
    """Hand cached GPU memory back, so whatever runs next in this process (a restarted attempt) starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
