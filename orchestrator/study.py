"""--study: the Optuna study kept in durable storage, so that sweep after sweep on the same inputs keeps learning.

Where: a journal file (Optuna's JournalFileBackend; a relative path is under --storage_path, which must then be a
local or shared file system), or any Optuna storage URL (sqlite:///..., postgresql://..., mysql://...), such as a
database a user already runs. One file or database holds many studies.

Which study: one per fingerprint of what the losses depend on, the starting model (its config and the bytes at
both ends of each weight file, with the files' sizes), the tokenized training and held-out data, the search space
(parameters, distributions, sampler) and the competition (its id and tasks), kept as the study's `fingerprint`
user attribute. Its name reads `model · competition · digest` (`tiny-llama-f02ee987b292 · m1 · 3f9a2c1b`). Sweeps on
the same inputs continue one study, found by name or by that attribute (so a study made before names were
readable, `lora-sweep-<digest>`, is continued under its old name): TPE's first suggestions in a new sweep already
use every earlier trial. A sweep on a different model, data set, space or competition gets a study of its own and
never mixes into another's. The objective is named `eval_loss`, and each trial carries its Ray Tune trial id as
the user attribute `ray_trial_id` (orchestrator.optuna_searcher), as trials.csv and the Ray dashboard name it.

Everything is checked in the driver before Ray starts, each failure one line: a file that is not an Optuna
journal, a storage that cannot be opened, and a file that already holds a study of the same model, data and
competition on another search space (one file serves one space: a changed space starts a new file, deliberately).
"""

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import ConfigError
from orchestrator.search_space import SearchSpace
from publishing.storage import is_remote
from trainables.compat.optuna_internals import distribution_holds
from trainables.data import SweepData

MODEL_LABEL_CHARS = 64
WEIGHT_SAMPLE_BYTES = 1 << 20  # hashed from each end of each weight file: distinct weights, without reading GBs


@dataclass(frozen=True)
class StudyChoice:
    storage: str          # the --study value resolved: an absolute journal path, or a storage URL
    name: str             # `model · competition · digest` (study_name), or the earlier study of these inputs
    fingerprint: dict     # what the digest was made of, stored with the study (user attributes)
    earlier_trials: int   # trials the study held before this sweep
    where: str            # for messages and the summary: the path, or the URL without its password

    def open_storage(self):
        return open_storage(self.storage)


def is_url(spec: str) -> bool:
    """A database URL (postgresql://...), not a journal file: told apart as storage locations are."""
    return is_remote(spec)


def redacted(url: str) -> str:
    """A storage URL with any password replaced, fit for logs and the summary."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def resolve_storage(spec: str, storage_path: str) -> str:
    """--study as an absolute journal path or a URL; a relative path is under --storage_path."""
    if is_url(spec):
        return spec
    if is_remote(storage_path) and not Path(spec).is_absolute():
        raise ConfigError(f"--study {spec} would be a journal file under --storage_path {storage_path}, which is not a "
                          "local or shared file system; pass an absolute path or a database URL "
                          "(e.g. postgresql://user@host/db)")
    path = Path(spec).expanduser()
    return str(path if path.is_absolute() else Path(storage_path).expanduser() / path)


def open_storage(storage: str):
    """The Optuna storage for a resolved --study; one ConfigError line when it cannot be used."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    with storage_errors(storage):
        if is_url(storage):
            return optuna.storages.RDBStorage(storage)
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        journal = JournalStorage(JournalFileBackend(storage))
        journal.get_all_studies()  # reads the log now: a damaged file fails here, not mid-sweep
        return journal


@contextlib.contextmanager
def storage_errors(storage: str):
    """Whatever a storage raises (JSONDecodeError, OSError, SQLAlchemy's errors, a missing driver) as one line."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        what = "an Optuna storage" if is_url(storage) else "an Optuna journal file"
        raise ConfigError(f"--study {redacted(storage)} is not {what} this sweep can use ({type(e).__name__}: "
                          f"{reason}); pass a new file, or repair or move this one") from None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(WEIGHT_SAMPLE_BYTES))
        if size > 2 * WEIGHT_SAMPLE_BYTES:
            f.seek(size - WEIGHT_SAMPLE_BYTES)
            h.update(f.read())
    return h.hexdigest()


def model_digest(model_dir: Path) -> str:
    h = hashlib.sha256((Path(model_dir) / "config.json").read_bytes())
    for weights in sorted(Path(model_dir).glob("*.safetensors")):
        h.update(_file_digest(weights).encode())
    return h.hexdigest()[:16]


def data_digest(data: SweepData) -> str:
    h = hashlib.sha256()
    for split in (data.train, data.eval):
        for array in (split.tokens, split.offsets, split.prompt_lens):
            h.update(array.tobytes())
    h.update(json.dumps([[t.name, t.weight, t.start, t.stop] for t in data.tasks]).encode())
    return h.hexdigest()[:16]


def space_description(space: SearchSpace) -> str:
    return json.dumps({"sampler": space.sampler,
                       "distributions": {name: repr(d) for name, d in sorted(space.distributions.items())}},
                      sort_keys=True)


def ranking(training) -> str | None:
    """What a study's values are, where they are not the whole held-out set's loss: rank_loss on a subset
    (--eval_tokens' cadence with --eval_rank_share below 1). None where every evaluation scores the whole set
    (--eval_steps, or a share of 1), as every study before rank_loss existed did: those stay one study."""
    if training.eval_steps is not None and training.eval_tokens is None or training.eval_rank_share >= 1:
        return None
    return f"rank_loss on {training.eval_rank_share:g} of each task's held-out samples"


def fingerprint(model_dir: Path, data: SweepData, space: SearchSpace, competition: str,
                ranked_on: str | None = None) -> dict:
    parts = {"model": model_digest(model_dir), "data": data_digest(data), "space": space_description(space),
             "competition": competition}
    # values scored on a subset never mix with the whole set's in one study
    return {**parts, "ranked_on": ranked_on} if ranked_on else parts


def _digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def model_label(model_dir: Path) -> str:
    """The starting model as a person names it: a Hub repo id for a model in a Hub cache
    (.../models--org--name/snapshots/<commit>), else its folder's name; only characters every storage and shell
    takes, at most 64 of them."""
    path = Path(model_dir)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        label = path.parent.parent.name[len("models--"):].replace("--", "/", 1)  # the Hub's own folder naming
    else:
        label = path.name or "model"
    return re.sub(r"[^A-Za-z0-9._/-]+", "-", label).strip("-")[:MODEL_LABEL_CHARS] or "model"


def study_name(parts: dict, model: str) -> str:
    """`model · competition · fingerprint`, e.g. `tiny-llama-f02ee987b292 · m1 · 3f9a2c1b`: which model and
    competition at a glance (optuna-dashboard lists studies by name), and 8 hex digits of the fingerprint that tell
    one data set or search space from another. (U+00B7, the middle dot, is in Latin-1 as well as UTF-8: every
    Optuna storage keeps it.)"""
    return f"{model} · {parts['competition']} · {_digest(parts)[:8]}"


def continued_study(parts: dict, existing: dict, name: str) -> str:
    """The name of the study a sweep of this fingerprint continues: `name` where it is in the storage; else the
    oldest study whose `fingerprint` attribute is this one, under another name: one made before names were readable
    (`lora-sweep-<digest>`), or with the model in another folder (the fingerprint is of the model's bytes, not its
    path); else `name`, for a new study."""
    if name in existing:
        return name
    # `existing` is in the storage's order, oldest first
    return next((s.study_name for s in existing.values() if (s.user_attrs or {}).get("fingerprint") == parts), name)


def fits_space(params: dict, space: SearchSpace) -> bool:
    """Every parameter of an earlier trial is one of this space's, with a value its distribution holds."""
    if set(params) != set(space.distributions):
        return False
    return all(distribution_holds(space.distributions[name], value) for name, value in params.items())


def choose_study(spec: str, storage_path: str, model_dir: Path, data: SweepData, space: SearchSpace,
                 competition: str, ranked_on: str | None = None) -> StudyChoice:
    """The study this sweep continues (or starts), checked: called in the driver before Ray starts."""
    import optuna

    storage = resolve_storage(spec, storage_path)
    parts = fingerprint(model_dir, data, space, competition, ranked_on)
    where = redacted(storage)
    with storage_errors(storage):
        backend = open_storage(storage)
        existing = {s.study_name: s for s in backend.get_all_studies()}
        name = continued_study(parts, existing, study_name(parts, model_label(model_dir)))
        for other in existing.values():  # one space per file for the same model, data and competition
            theirs = other.user_attrs.get("fingerprint") or {}
            same_inputs = all(theirs.get(k) == parts[k] for k in ("model", "data", "competition"))
            if same_inputs and theirs.get("space") != parts["space"]:
                raise ConfigError(f"--study {where} holds study {other.study_name} of this model and data on another "
                                  f"search space; pass a new --study file for this space, or the search that made it")
        earlier = 0
        if name in existing:
            study = optuna.load_study(study_name=name, storage=backend)
            misfits = [t.number for t in study.trials if t.params and not fits_space(t.params, space)]
            if misfits:
                raise ConfigError(f"--study {where}: study {name} holds trials outside this search space (trial "
                                  f"{misfits[0]}); pass a new --study file")
            earlier = len(study.trials)
        else:
            study = optuna.create_study(study_name=name, storage=backend, direction="minimize")
            study.set_user_attr("fingerprint", parts)
            study.set_user_attr("model", model_label(model_dir))
    return StudyChoice(storage=storage, name=name, fingerprint=parts, earlier_trials=earlier, where=where)
