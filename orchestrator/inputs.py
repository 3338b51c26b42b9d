"""Everything a sweep reads from disk, checked and prepared before Ray starts.

The starting model folder and the dataset are validated here; the dataset is split and
tokenized once, in the driver, with the model's own tokenizer and chat template.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

from orchestrator.config import ConfigError, SweepConfig
from publishing.subnet.chain import ChainError
from publishing.subnet.competitions import COMPETITIONS_FILE, Competition, CompetitionError, Task, get_competition
from publishing.subnet.hub import HubClient
from publishing.subnet.model_id import ModelId
from publishing.subnet.remote_model import RemoteModelError, best_uid, committed_model_id, default_model_cache, fetch_model
from publishing.subnet.secrets import load_hf_token
from publishing.setup import (PublishSetup, SetupError, open_bittensor_chain,
                              prepare_publishing)
from orchestrator.data_sources import download_parquet_files, fetch_cortex_pairs, load_hub_dataset, read_local_dataset
from trainables.data import (DataError, EvalTask, SweepData, TokenizedSplit, read_pairs, split_pairs,
                             tokenize_split, with_responses)
from trainables.embedded_model import DATASET, ensure_embedded_model
from trainables.errors import one_line
from trainables.settings import TrialSettings
from trainables.trial_contract import Packing
from trainables.trial_plan import tokens_per_step
from trainables.task_data import TaskSamples, draw_task_samples, eval_tasks, mixture, parser_for, tokenize_references


def check_model_dir(path: str | Path) -> Path:
    """A folder from_pretrained can load with use_safetensors=True, tokenizer and chat template included."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"--load_model_dir {path} does not exist; pass a folder saved with save_pretrained")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"--load_model_dir {path} holds no model (no config.json); pass a folder saved with save_pretrained")
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(f"--load_model_dir {path} has no .safetensors weights; save the model with safe_serialization=True")
    needs_code = remote_code_reason(folder)
    if needs_code:
        raise ConfigError(f"--load_model_dir {path} {needs_code}; this miner never runs code from a model folder: "
                          "start from a model whose architecture and tokenizer transformers ships")
    return folder.resolve()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{path} is not valid JSON; the model folder is damaged") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; the model folder is damaged")
    return data


def remote_code_reason(folder: Path) -> str | None:
    """Why loading this folder would need Python code shipped in it, or None when transformers' own code loads it.

    Every load passes trust_remote_code=False as well; refusing here turns what would be a prompt, or an
    error deep inside a trial, into one line before anything starts.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = _read_json(folder / "config.json")
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        where = "its auto_map" if "auto_map" in config else "no architecture transformers knows"
        return f"has model_type {model_type!r}, which needs the folder's own code ({where})"
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        settings = _read_json(tokenizer_config)
        if "auto_map" in settings and not settings.get("tokenizer_class"):
            return "has a tokenizer that only the folder's own code builds (auto_map, no tokenizer_class)"
    return None


def load_tokenizer(model_dir: Path):
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load a tokenizer from {model_dir} ({type(e).__name__}); "
                          "the model folder needs its tokenizer files") from None
    if not tokenizer.chat_template:
        raise ConfigError(f"the tokenizer in {model_dir} has no chat template; validators score with the model's "
                          "chat template, so the folder needs one in tokenizer_config.json")
    return tokenizer


def read_only_chain(config: SweepConfig):
    """The chain for reading other miners' commitments; a wallet is used when given, never required."""
    if config.publishing.wallet_name and config.publishing.wallet_hotkey:
        return open_bittensor_chain(config.publishing.subtensor_network, config.publishing.subnet(), config.publishing.wallet_name,
                                    config.publishing.wallet_hotkey, config.publishing.wallet_path)
    from publishing.subnet.bittensor_chain import BittensorChain

    return BittensorChain(config.publishing.subtensor_network, config.publishing.subnet(), None)


def resolve_opponent(config: SweepConfig, chain_factory=None, hub_endpoint: str | None = None):
    """--comparison_uid's committed model, downloaded now so a bad uid fails before any training."""
    from publishing.head_to_head import Opponent

    if config.comparison.comparison_uid is None:
        return None
    try:
        competition = get_competition(config.publishing.competition_id, config.publishing.competitions_file)
        chain = (chain_factory or (lambda: read_only_chain(config)))()
        started = chain.current_block()  # before the download: epsilon only shrinks, this is the cautious one
        committed = fetch_committed_model(config, chain, config.comparison.comparison_uid, hub_endpoint)
        epsilon = competition.epsilon.at(started, committed.block)
    except (RemoteModelError, ChainError, CompetitionError) as e:
        raise ConfigError(f"--comparison_uid: {e}") from None
    return Opponent(uid=committed.uid, model_id=committed.model_id.to_compressed_str(), block=committed.block,
                    model_dir=str(committed.folder), epsilon=epsilon)


@dataclass(frozen=True)
class CommittedModel:
    """A uid's committed model of the competition, fetched and checked."""
    uid: int
    model_id: ModelId
    block: int   # the block its commitment landed in
    folder: Path


def fetch_committed_model(config: SweepConfig, chain, uid: int, hub_endpoint: str | None = None) -> CommittedModel:
    """uid's committed model, with every check --comparison_uid applies (and orchestrator.score's --load_uid and
    --load_best): a ModelId for this competition that names a commit; the repo at that commit within the
    competition's size with safetensors weights, read from the Hub's metadata before anything is downloaded; only
    weights, configs and tokenizer files fetched, once per node; the folder loadable without its own code. Raises
    RemoteModelError, ChainError or CompetitionError for the caller to name its flag; ConfigError for the folder."""
    competition = get_competition(config.publishing.competition_id, config.publishing.competitions_file)
    model_id = committed_model_id(chain, uid, competition.id)
    hotkey = {n.uid: n.hotkey for n in chain.neurons()}[uid]
    block = chain.read_commitment(hotkey).block
    hub = HubClient(load_hf_token(config.publishing.env_file), endpoint=hub_endpoint)
    folder = fetch_model(hub, model_id.repo_id, model_id.commit, competition.max_repo_bytes)
    return CommittedModel(uid=uid, model_id=model_id, block=block, folder=check_model_dir(folder))


def resolve_model_dir(config: SweepConfig, chain_factory=None, hub_endpoint: str | None = None) -> Path:
    """The starting model's local folder: given, downloaded once into this node's cache, or the embedded one."""
    if config.data.load_model_dir:
        return check_model_dir(config.data.load_model_dir)
    if config.data.embedded_model:
        return ensure_embedded_model()
    try:
        competition = get_competition(config.publishing.competition_id, config.publishing.competitions_file)
        hub = HubClient(load_hf_token(config.publishing.env_file), endpoint=hub_endpoint)
        if config.data.load_repo:
            repo_id, commit = config.data.load_repo, config.data.download_repo_latest_commit
            if len(repo_id.split("/")) != 2:
                raise RemoteModelError(f"--load_repo {repo_id!r} must be namespace/name")
        else:
            chain = (chain_factory or (lambda: read_only_chain(config)))()
            uid = best_uid(chain, competition.id) if config.data.load_best else config.data.load_uid
            model_id = committed_model_id(chain, uid, competition.id)
            repo_id, commit = model_id.repo_id, model_id.commit
            print(f"starting from uid {uid}'s model {repo_id}@{commit[:8]}")
        folder = fetch_model(hub, repo_id, commit, competition.max_repo_bytes)
    except (RemoteModelError, ChainError, CompetitionError) as e:
        raise ConfigError(str(e)) from None
    return check_model_dir(folder)


def read_training_pairs(config: SweepConfig, hub_endpoint: str | None = None) -> list[dict]:
    """The question/response pairs from the one source the flags choose (default: the bundled dataset), less those
    whose response is empty: they teach nothing but the end-of-turn token."""
    return with_responses(source_pairs(config, hub_endpoint))


def source_pairs(config: SweepConfig, hub_endpoint: str | None = None) -> list[dict]:
    columns = {"question_column": config.data.question_column, "response_column": config.data.response_column}
    if config.data.dataset_path:
        return read_local_dataset(config.data.dataset_path, **columns)
    if config.data.dataset_repo_id:
        token = load_hf_token(config.publishing.env_file)
        return load_hub_dataset(config.data.dataset_repo_id, **columns,
                                endpoint=hub_endpoint or os.environ.get("HF_ENDPOINT"),
                                token=token.reveal() if token else None)
    if config.data.use_cortex:
        return fetch_cortex_pairs(config.data.cortex_steps, config.data.cortex_samples_per_epoch)
    return read_pairs(DATASET)


COMPETITION_TOKENIZER_PATTERNS = ["tokenizer*", "special_tokens_map.json", "added_tokens.json", "*.jinja"]


def competition_tokenizer_dir(config: SweepConfig, hub_endpoint: str | None = None) -> Path:
    """The competition's tokenizer files: a local folder when the competition names one (absolute, or relative to
    its competitions file), else its Hub repo's tokenizer files, downloaded once into this node's cache."""
    competition = get_competition(config.publishing.competition_id, config.publishing.competitions_file)
    competitions_dir = Path(config.publishing.competitions_file or COMPETITIONS_FILE).expanduser().resolve().parent
    for folder in (Path(competition.tokenizer).expanduser(), competitions_dir / competition.tokenizer):
        if folder.is_dir():
            return folder
    hub = HubClient(load_hf_token(config.publishing.env_file), endpoint=hub_endpoint)
    return hub.download(competition.tokenizer, None, default_model_cache(), allow_patterns=COMPETITION_TOKENIZER_PATTERNS)


def choose_tokenizer(config: SweepConfig, model_dir: Path, hub_endpoint: str | None = None):
    """Validators tokenize every model with the competition's tokenizer; train and evaluate with it too."""
    embedded = config.data.embedded_model
    if config.data.tokenizer == "model" or (config.data.tokenizer == "auto" and embedded):
        return load_tokenizer(model_dir)
    try:
        folder = competition_tokenizer_dir(config, hub_endpoint)
    except Exception as e:  # no network, or the repo is gated
        reason = one_line(e)
        if config.data.tokenizer == "competition":
            raise ConfigError(f"cannot fetch competition {config.publishing.competition_id}'s tokenizer: {reason}; "
                              "use --tokenizer model") from None
        print(f"note: cannot fetch competition {config.publishing.competition_id}'s tokenizer ({reason}); "
              "tokenizing with the model's own")
        return load_tokenizer(model_dir)
    tokenizer = load_tokenizer(folder)
    vocab = json.loads((model_dir / "config.json").read_text()).get("vocab_size", len(tokenizer))
    if len(tokenizer) > vocab:
        raise ConfigError(f"competition {config.publishing.competition_id}'s tokenizer has {len(tokenizer)} tokens but the model "
                          f"embeds {vocab}; start from a model of that competition, or use --tokenizer model")
    return tokenizer


def prepare_data(config: SweepConfig, model_dir: Path, hub_endpoint: str | None = None) -> SweepData:
    """Tokenized once, here: the training pairs and the held-out set every trial is scored on, the competition's
    way (the original competitions: response loss on a held-out share of the training data; a competition with
    reference_loss tasks: each task's samples drawn from its own data set, the score their weighted mean)."""
    competition = data_competition(config)
    max_length = config.data.max_length or competition.sequence_length
    below = (f"; competition {competition.id} scores up to {competition.sequence_length} tokens: leave --max_length "
             f"out to keep them" if max_length < competition.sequence_length else "")
    try:
        tokenizer = choose_tokenizer(config, model_dir, hub_endpoint)
        check_task_data(config, competition)
        if competition.scored_by_reference:
            return prepare_task_data(config, competition, tokenizer, max_length, hub_endpoint, below)
        pairs = read_training_pairs(config, hub_endpoint)
        train, held_out = split_pairs(pairs, config.data.eval_fraction, config.search.seed)
        return SweepData(train=tokenize_split(tokenizer, train, max_length, below),
                         eval=tokenize_split(tokenizer, held_out, max_length))
    except DataError as e:
        raise ConfigError(str(e)) from None


def prepare_eval_data(config: SweepConfig, model_dir: Path,
                      hub_endpoint: str | None = None) -> tuple[TokenizedSplit, tuple[EvalTask, ...]]:
    """Only the held-out samples every trial is scored on, and the tasks they belong to: drawn by the same calls,
    with the same seed, as prepare_data draws them, so `prepare_data(config, ...).eval` is the same split. The
    training samples are neither tokenized nor, for a competition with tasks, drawn or read (orchestrator.score)."""
    competition = data_competition(config)
    max_length = config.data.max_length or competition.sequence_length
    try:
        tokenizer = choose_tokenizer(config, model_dir, hub_endpoint)
        check_task_data(config, competition)
        if competition.scored_by_reference:
            return eval_tasks(draw_tasks(config, competition, 0, hub_endpoint), tokenizer)
        _, held_out = split_pairs(read_training_pairs(config, hub_endpoint), config.data.eval_fraction,
                                  config.search.seed)
        return tokenize_split(tokenizer, held_out, max_length), ()
    except DataError as e:
        raise ConfigError(str(e)) from None


def data_competition(config: SweepConfig) -> Competition:
    try:
        return get_competition(config.publishing.competition_id, config.publishing.competitions_file)
    except CompetitionError as e:
        raise ConfigError(f"--competition_id: {e}") from None


def check_task_data(config: SweepConfig, competition: Competition) -> None:
    if config.data.task_data and not competition.scored_by_reference:
        raise DataError(f"--task_data gives rows for a competition's tasks, but competition {competition.id} has "
                        f"none (it scores a held-out share of the training pairs); leave it out, or pass "
                        f"--competition_id of a competition with tasks (4)")


def task_files(task: Task, sources: dict[str, str], config: SweepConfig, hub_endpoint: str | None) -> list[Path]:
    """A task's rows: the local file --task_data names, else its data set's parquet files from the Hub."""
    if task.name in sources:
        path = Path(sources[task.name]).expanduser()
        if not path.is_file():
            raise DataError(f"--task_data {task.name}={sources[task.name]} does not exist; pass a .jsonl or .parquet "
                            f"file of {task.dataset} rows")
        return [path]
    token = load_hf_token(config.publishing.env_file)
    try:
        return download_parquet_files(task.dataset, endpoint=hub_endpoint or os.environ.get("HF_ENDPOINT"),
                                      token=token.reveal() if token else None)
    except DataError as e:
        raise DataError(f"task {task.name}: {e} (or pass --task_data {task.name}=PATH)") from None


def prepare_task_data(config: SweepConfig, competition: Competition, tokenizer, max_length: int,
                      hub_endpoint: str | None = None, below: str = "") -> SweepData:
    """Each task's held-out samples drawn the validators' way; training on the tasks' other samples mixed by task
    weight, or on one task's data set (--dataset_repo_id naming it), or on the pairs --dataset_path,
    --dataset_repo_id or --use_cortex choose (each pair's response scored as a reference)."""
    samples = draw_tasks(config, competition, config.data.train_samples_per_task, hub_endpoint)
    eval_split, tasks = eval_tasks(samples, tokenizer)
    one_task = [s for s, t in zip(samples, competition.tasks) if t.dataset == config.data.dataset_repo_id]
    if one_task:
        train = mixture(one_task, config.search.seed)
    elif config.data.dataset_path or config.data.dataset_repo_id or config.data.use_cortex:
        train = [(p["question"], p["response"]) for p in read_training_pairs(config, hub_endpoint)]
    else:
        train = mixture(samples, config.search.seed)
    return SweepData(train=tokenize_references(tokenizer, train, max_length, below), eval=eval_split, tasks=tasks)


def draw_tasks(config: SweepConfig, competition: Competition, pool_samples: int,
               hub_endpoint: str | None = None) -> list[TaskSamples]:
    """Each task's held-out samples, drawn the validators' way, and up to pool_samples training samples after them
    (0: the held-out samples only; they are the same whatever pool_samples is)."""
    sources = config.data.task_sources()
    unknown = set(sources) - {t.name for t in competition.tasks}
    if unknown:
        raise DataError(f"--task_data names {', '.join(sorted(unknown))}, not a task of competition {competition.id} "
                        f"(its tasks: {', '.join(t.name for t in competition.tasks)})")
    samples = []
    for task in competition.tasks:
        held_out, pool = draw_task_samples(task_files(task, sources, config, hub_endpoint), parser_for(task.dataset),
                                           competition.sequence_length,
                                           config.data.eval_samples_per_task or competition.eval_samples,
                                           pool_samples, config.search.seed, task.name)
        samples.append(TaskSamples(task.name, task.weight, held_out, pool))
        print(f"task {task.name}: {len(held_out)} held-out samples" +
              (f", {len(pool)} for training" if pool_samples else ""))
    return samples


def trial_settings(config: SweepConfig, model_dir: Path) -> TrialSettings:
    """What every trial receives: the training group as it is, and where and from what it trains."""
    return TrialSettings(model_dir=str(model_dir), training=config.training, seed=config.search.seed,
                         cpus_per_trial=config.run.cpus_per_trial,
                         device="cpu" if config.run.device == "cpu" else "auto",
                         embedded_model=config.data.embedded_model, hub_endpoint=os.environ.get("HF_ENDPOINT"),
                         # how many layers, `on` (all) included, the memory planner says once it has read the model's
                         # shape and the budget (orchestrator.memory_budget.plan_trial_memory, before any trial)
                         checkpointed_layers=0)


def check_publishing(config: SweepConfig, model_dir: Path) -> PublishSetup:
    """Repo id, competition, token, wallet and registration: all checked before any training."""
    try:
        return prepare_publishing(config.publishing, model_dir)
    except SetupError as e:
        raise ConfigError(str(e)) from None


def check_training_size(config: SweepConfig, data: SweepData) -> None:
    """What the data leaves for training must make sense of the flags: at least one optimizer step of pairs, and
    packed rows no shorter than the longest pair (which `--micro_batch_tokens` would otherwise silently raise)."""
    import numpy as np

    lengths = np.diff(data.train.offsets)
    longest = int(lengths.max())
    training = config.training
    if training.packing == Packing.ON and 0 < training.micro_batch_tokens < longest:
        raise ConfigError(f"--micro_batch_tokens {training.micro_batch_tokens} is shorter than the longest training "
                          f"pair ({longest} tokens); pass at least {longest}, or 0 to size it automatically")
    per_step = max(1, round(tokens_per_step(training, lengths) / float(lengths.mean())))  # the trial's own rule
    if len(lengths) < per_step:
        raise ConfigError(f"only {len(lengths)} training pair(s) left after holding out the eval set, fewer than "
                          f"one optimizer step ({per_step} pairs); lower --eval_fraction (now "
                          f"{config.data.eval_fraction}) or --tokens_per_step, or add data")


ADDRESS_TIMEOUT_S = 10


def check_address(config: SweepConfig, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """--address host:port must answer before Ray is asked to join it: ray.init retries a dead address for minutes
    without a word. (`auto` and `ray://` addresses are Ray's own to resolve.)"""
    import socket

    address = config.run.address
    if not address or address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--address {address!r} must be host:port (the head's GCS port, 6379 by default) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"--address {address}: nothing answers there ({one_line(e, 80)}); check the head's address "
                          f"and port (6379 by default), or use --address auto on the head node") from None


def check_env_file(config: SweepConfig) -> None:
    """--env_file is optional, but one that exists must be a text file: a folder or a binary file would otherwise
    read as "no token in it", which blames the wrong thing."""
    path = Path(config.publishing.env_file).expanduser()
    if not path.exists():
        return
    if not path.is_file():
        raise ConfigError(f"--env_file {path} is a folder, not a file of NAME=value lines; pass the .env file")
    try:
        path.read_text(encoding="utf-8")
    except ValueError:
        raise ConfigError(f"--env_file {path} is not UTF-8 text; pass a file of NAME=value lines") from None
    except OSError as e:
        raise ConfigError(f"--env_file {path} cannot be read ({one_line(e)})") from None


def check_tracking(config: SweepConfig) -> None:
    if not config.tracking.wandb_project:
        return  # without W&B, skip importing Ray's W&B integration (seconds before anything starts)
    from orchestrator.tracking import wandb_key_available

    if not wandb_key_available(config.publishing.env_file):
        raise ConfigError(f"W&B logging needs WANDB_API_KEY in the environment or {config.publishing.env_file}, or `wandb login`, "
                          "or WANDB_MODE=offline")


def check_fused_kernels(config: SweepConfig) -> None:
    """--fused_kernels liger where it cannot run fails here, not in every trial: a CPU run, or no liger-kernel."""
    from trainables import fused_kernels

    if config.training.fused_kernels != "liger":
        return
    if config.run.device == "cpu":
        raise ConfigError("--fused_kernels liger needs CUDA GPUs (Liger's kernels are Triton); drop it with --device cpu")
    if not fused_kernels.liger_installed():
        raise ConfigError("--fused_kernels liger needs the liger-kernel package on the driver and every GPU node "
                          "(pip install liger-kernel); or use auto or off")


def check_device(config: SweepConfig) -> None:
    """--device cuda[:N] on a machine without that GPU fails here, not after Ray starts (local runs only). The GPUs
    are counted with nvidia-smi (orchestrator.gpu_cards): torch on the driver would hold a CUDA context on a GPU
    a trial then trains on."""
    from orchestrator.gpu_cards import gpus_here

    if config.run.address is not None or not config.run.device.startswith("cuda"):
        return
    count = len(gpus_here())
    index = int(config.run.device.split(":")[1]) if ":" in config.run.device else 0
    if index >= count:
        raise ConfigError(f"--device {config.run.device} but this machine has {count} CUDA GPU(s); "
                          "use --device cpu or auto")
