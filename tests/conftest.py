import os
import re
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The key that seals resumable sweeps (orchestrator.state_seal): this test session's own, never the user's
os.environ.setdefault("LORA_SWEEP_STATE_KEY_FILE", str(Path(tempfile.mkdtemp(prefix="lora-sweep-key-")) / "state.key"))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The embedded tiny Llama, built into a cache folder of this test session."""
    from trainables.embedded_model import ensure_embedded_model

    return ensure_embedded_model(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def sweep_data(tokenizer):
    from trainables.data import SweepData, read_pairs, split_pairs, tokenize_split
    from trainables.embedded_model import DATASET

    train, held_out = split_pairs(read_pairs(DATASET), 0.15, seed=0)
    return SweepData(tokenize_split(tokenizer, train, 2048), tokenize_split(tokenizer, held_out, 2048))


@pytest.fixture(scope="module")
def adapter_checkpoint(model_dir, sweep_data, tmp_path_factory) -> Path:
    """A real LoRA checkpoint of the tiny model, trained for a few steps (once per test module that asks)."""
    import shutil

    from trainables.lora_trial import TrainingSettings, TrialSettings, train_lora

    folder = tmp_path_factory.mktemp("checkpoint") / "adapter"
    settings = TrialSettings(model_dir=str(model_dir),
                             training=TrainingSettings(batch_size=8, accumulation_steps=1, eval_steps=5))

    class Enough(Exception):
        pass

    def keep_first(metrics, checkpoint_dir):
        shutil.copytree(checkpoint_dir, folder)
        raise Enough

    with pytest.raises(Enough):
        train_lora({"learning_rate": 1e-3, "r": 8, "alpha": 16}, settings, sweep_data, keep_first)
    return folder


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray with this machine's 2 CPUs, shared by every test that needs one."""
    import ray

    from orchestrator.ray_start import WORKER_ENV

    # the local Hub server speaks plain HTTP/LFS, not Xet (see tests/hub_server.py)
    env = {**WORKER_ENV, "HF_HUB_DISABLE_XET": "1"}
    # "local": a new Ray of this session's own, even where another was started with `ray start`
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


# Ray prefixes each line it forwards from a worker with "(task pid=N)", colored on a terminal
RAY_WORKER_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\([^)\n]* pid=\d+[^)\n]*\)")


def own_stderr(capsys) -> str:
    """What this process itself wrote to stderr: the test session's shared Ray may still be forwarding the logs of
    an earlier test's workers, and those lines land in whichever test is capturing when they arrive."""
    err = capsys.readouterr().err
    return "".join(line for line in err.splitlines(keepends=True) if not RAY_WORKER_LINE.match(line))
