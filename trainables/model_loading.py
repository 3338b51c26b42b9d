"""Model loading, in one home: where a model runs, in which dtype, how a node gets the starting model,
and how a folder is loaded. Trials, the head-to-head and the merge all load through here.

Every load is local (`local_files_only`), safetensors only, and never runs code from the folder
(`trust_remote_code=False`): a starting model is data, not a program.
"""

import gc
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch

from trainables.trial_contract import LOAD_HOST_PEAK_MB, LOAD_S

T = TypeVar("T")

CACHE_ENV = "LORA_SWEEP_CACHE"
# What is fetched of a starting model from the Hub: weights, configs, tokenizer files; never code.
STARTING_MODEL_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]


def is_model_file(name: str) -> bool:
    """A file a model folder is loaded from (STARTING_MODEL_PATTERNS): configs, safetensors weights, tokenizer
    files; never a pickle or code."""
    import fnmatch

    return any(fnmatch.fnmatch(name, pattern) for pattern in STARTING_MODEL_PATTERNS)


def cache_root() -> Path:
    """This node's cache: the embedded model, and models and tokenizers downloaded from the Hub."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "lora-sweep-miner"))


def pick_device(requested: str) -> torch.device:
    """auto: the GPU Ray assigned to this process (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    if requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")



def resolve_attention(requested: str, device: torch.device) -> str:
    """The attention implementation a model on `device` is built with, ready to use (varlen registered with
    transformers): auto picks the fastest exact one that runs here (trainables.attention.choose_attention); an
    explicit choice that cannot run here is refused in one line (ValueError). Every choice keeps packed pairs apart
    (each reads the restarting position ids)."""
    from trainables.attention import attention_here, ensure_registered

    attention = attention_here(requested, device).name
    ensure_registered(attention)
    return attention


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


def load_causal_lm(model_dir: str | Path, dtype: torch.dtype | str, attn_implementation: str = "sdpa",
                   device: torch.device | str | None = None):
    """A model folder as a causal LM: local files, safetensors, transformers' own code only.

    device: where the weights go. Each is read from its file straight onto it (transformers' device_map, through
    accelerate: one device, so no dispatch hooks), rather than the whole model into host memory first and then
    moved, which holds every page of the file at once and, where the file's dtype is not the trial's (an fp32
    checkpoint trained in bf16), a private host copy per trial: 16 GB for an 8B model. None: host memory."""
    from transformers import AutoModelForCausalLM

    from trainables.attention import ensure_registered

    ensure_registered(attn_implementation)  # varlen is ours: transformers must know it before it builds the model
    placement = {} if device is None else {"device_map": {"": torch.device(device)}}
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True, local_files_only=True,
                                                trust_remote_code=False, attn_implementation=attn_implementation,
                                                **placement)


@dataclass(frozen=True)
class LoadCost:
    """What loading a trial's model cost the trial before it trained."""
    seconds: float
    host_peak_mb: float  # the most anonymous host memory the load held at once beyond what the process held before

    def metrics(self) -> dict:
        """For the trial's report."""
        return {LOAD_S: round(self.seconds, 3), LOAD_HOST_PEAK_MB: round(self.host_peak_mb, 1)}


def _anonymous_resident_bytes() -> int:
    """This process's resident memory that is not file pages (0 where there is no /proc: macOS). The safetensors
    files are memory-mapped: the pages a load reads count in the resident set too, but they are the kernel's page
    cache, shared by every trial reading the same file and dropped under pressure, not what a trial costs the host."""
    try:
        with open("/proc/self/statm") as f:
            _, resident, shared = (int(field) for field in f.read().split()[:3])
    except OSError:
        return 0
    return (resident - shared) * os.sysconf("SC_PAGE_SIZE")


def measured_load(load: Callable[[], T], interval_s: float = 0.002) -> tuple[T, LoadCost]:
    """Run `load` (e.g. a model's), and say how long it took and its host memory peak, sampled every interval_s
    from a thread (the process's own peak, VmHWM, could only be read by resetting it, which would lose the worker's
    lifetime peak that its reports carry; a load's tensors outlive any sampling interval)."""
    before = _anonymous_resident_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval_s):
            peak[0] = max(peak[0], _anonymous_resident_bytes())

    sampler = threading.Thread(target=sample, name="load-host-memory", daemon=True)
    started = time.perf_counter()
    sampler.start()
    try:
        result = load()
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _anonymous_resident_bytes())
    return result, LoadCost(seconds=seconds, host_peak_mb=(peak[0] - before) / 2**20)


def release_accelerator_memory() -> None:
    """Hand cached GPU memory back, so whatever runs next in this process (a restarted attempt) starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
