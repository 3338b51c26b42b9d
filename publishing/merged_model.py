"""The publishable form of a trial: its LoRA adapter merged into the base model.

Validators load a plain model with `use_safetensors=True`, so the folder holds the merged
weights as safetensors, the config, and the base model's tokenizer files; no adapter files.
"""

import shutil
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM

# Tokenizer files copied as the base model ships them (the chat template stays where it was).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja")


def merge_adapter(base_model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype="auto", use_safetensors=True,
                                                local_files_only=True)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (Path(base_model_dir) / name).is_file():
            shutil.copy2(Path(base_model_dir) / name, out_dir / name)
    return out_dir


def merge_checkpoint(base_model_dir: str, checkpoint, out_dir: str) -> str:
    """Merge a Ray Tune checkpoint's adapter; `as_directory` fetches it when it lives in remote storage."""
    with checkpoint.as_directory() as adapter_dir:
        return str(merge_adapter(base_model_dir, adapter_dir, out_dir))
