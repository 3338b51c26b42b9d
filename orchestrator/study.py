"""--study: the Optuna study kept in durable storage, so that sweep after sweep on the same inputs keeps learning.

Where: a journal file (Optuna's JournalFileBackend; a relative path is under --storage_path, which must then be a
local or shared file system), or any Optuna storage URL (sqlite:///..., postgresql://..., mysql://...), such as a
database a user already runs. One file or database holds many studies.

Which study: its name is a fingerprint of what the losses depend on, the starting model (its config and the
bytes at both ends of each weight file, with the files' sizes), the tokenized training and held-out data, the
search space (parameters, distributions, sampler) and the competition (its id and tasks). Sweeps on the same
inputs continue one study: TPE's first suggestions in a new sweep already use every earlier trial. A sweep on a
different model, data set, space or competition gets a study of its own and never mixes into another's.

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
from trainables.data import SweepData

STUDY_PREFIX = "lora-sweep-"
WEIGHT_SAMPLE_BYTES = 1 << 20  # hashed from each end of each weight file: distinct weights, without reading GBs


@dataclass(frozen=True)
class StudyChoice:
    storage: str          # the --study value resolved: an absolute journal path, or a storage URL
    name: str             # STUDY_PREFIX + the fingerprint's digest
    fingerprint: dict     # what the digest was made of, stored with the study (user attributes)
    earlier_trials: int   # trials the study held before this sweep
    where: str            # for messages and the summary: the path, or the URL without its password

    def open_storage(self):
        return open_storage(self.storage)


def is_url(spec: str) -> bool:
    return "://" in spec


def redacted(url: str) -> str:
    """A storage URL with any password replaced, fit for logs and the summary."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def resolve_storage(spec: str, storage_path: str) -> str:
    """--study as an absolute journal path or a URL; a relative path is under --storage_path."""
    if is_url(spec):
        return spec
    if "://" in storage_path and not Path(spec).is_absolute():
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


def fingerprint(model_dir: Path, data: SweepData, space: SearchSpace, competition: str) -> dict:
    return {"model": model_digest(model_dir), "data": data_digest(data), "space": space_description(space),
            "competition": competition}


def study_name(parts: dict) -> str:
    return STUDY_PREFIX + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def fits_space(params: dict, space: SearchSpace) -> bool:
    """Every parameter of an earlier trial is one of this space's, with a value its distribution holds."""
    if set(params) != set(space.distributions):
        return False
    return all(space.distributions[name]._contains(space.distributions[name].to_internal_repr(value))
               for name, value in params.items())


def choose_study(spec: str, storage_path: str, model_dir: Path, data: SweepData, space: SearchSpace,
                 competition: str) -> StudyChoice:
    """The study this sweep continues (or starts), checked: called in the driver before Ray starts."""
    import optuna

    storage = resolve_storage(spec, storage_path)
    parts = fingerprint(model_dir, data, space, competition)
    name = study_name(parts)
    where = redacted(storage)
    with storage_errors(storage):
        backend = open_storage(storage)
        existing = {s.study_name: s for s in backend.get_all_studies()}
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
    return StudyChoice(storage=storage, name=name, fingerprint=parts, earlier_trials=earlier, where=where)
