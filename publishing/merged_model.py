"""The publishable form of a trial: its LoRA adapter merged into the base model.

Validators load a plain model with `use_safetensors=True`, so the folder holds the merged
weights as safetensors, the config, and the base model's tokenizer files; no adapter files.
"""

import shutil
from pathlib import Path

from publishing.package import strip_remote_code

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what peft's save_pretrained writes
# Tokenizer files copied as the base model ships them (the chat template stays where it was).
BASE_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja")


class CheckpointGone(FileNotFoundError):
    """The checkpoint's adapter is no longer there (Tune replaced it with better checkpoints of its trial)."""


def import_merge_libraries() -> None:
    """Import what merging needs ahead of time (seconds of CPU), so the end of the sweep does not wait for it."""
    import peft  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401


def merge_adapter(base_model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path,
                  dtype: str = "auto") -> Path:
    """The base with the adapter merged in, saved in `dtype` ("auto": the base's own; a competition that takes one
    dtype gets it: peft adds the fp32 delta to each weight, and the sum is stored in that dtype either way)."""
    # Imported here, not at the top: the coordinator actor imports this module when the sweep starts, and
    # importing peft and transformers there (seconds of CPU) would slow the first trials' start for nothing.
    from peft import PeftModel

    from trainables.model_loading import load_causal_lm

    # load_causal_lm never runs a folder's code, and none is passed on (below)
    base = load_causal_lm(base_model_dir, dtype=dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir, trust_remote_code=False).merge_and_unload()
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    for name in BASE_TOKENIZER_FILES:  # named files only: a repo's *.py files are never copied
        if (Path(base_model_dir) / name).is_file():
            shutil.copy2(Path(base_model_dir) / name, out_dir / name)
    # save_pretrained writes the base config's auto_map back, and the tokenizer config is copied as it is
    strip_remote_code(out_dir)
    return out_dir


def merge_checkpoint(base_model_dir: str, checkpoint, out_dir: str, dtype: str = "auto") -> str:
    """Merge a Ray Tune checkpoint's adapter; `as_directory` fetches it when it lives in remote storage."""
    # The adapter is copied out first (it is small): Tune may delete the checkpoint while the base model loads.
    adapter = Path(out_dir).parent / f".adapter-{Path(out_dir).name}"
    shutil.rmtree(adapter, ignore_errors=True)
    try:
        with checkpoint.as_directory() as checkpoint_dir:
            adapter.mkdir(parents=True)
            for name in ADAPTER_FILES:
                shutil.copy2(Path(checkpoint_dir) / name, adapter / name)
    except FileNotFoundError as e:
        shutil.rmtree(adapter, ignore_errors=True)
        raise CheckpointGone(f"checkpoint {checkpoint.path} is gone ({e})") from None
    try:
        return str(merge_adapter(base_model_dir, adapter, out_dir, dtype))
    finally:
        shutil.rmtree(adapter, ignore_errors=True)
