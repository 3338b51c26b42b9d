"""A seal on the Tune state that a resume unpickles, so `--resume` never loads a pickle this miner's sweeps did not write.

`Tuner.restore` unpickles `tuner.pkl`, the searcher's state (`searcher-state-*.pkl`, `search_gen_state-*.json`) and
the experiment state (`experiment_state-*.json`: JSON, with cloudpickled values inside). Anyone who can write the
experiment folder (a shared bucket's prefix, a shared disk) could plant those files, and their code would run on the
miner's machine. So each time Tune saves its state, the sweep writes an HMAC-SHA256 of every such file into
`lora_sweep_seal.json` beside them (orchestrator.sealed_search), keyed by a secret that lives only in the user's config
folder, never in the experiment or the bucket; `--resume` checks every such file against the seal before Ray starts.

Imports neither Ray nor torch: the check runs with the other input checks, before anything starts.
"""

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from orchestrator.config import ConfigError
from publishing import storage as store

SEAL_FILE = "lora_sweep_seal.json"
KEY_FILE_ENV = "LORA_SWEEP_STATE_KEY_FILE"  # where the key is, when not in the user's config folder
KEY_BYTES = 32
# The file names Tune (2.x) loads state from when it restores an experiment; any other .pkl is treated as one too.
# (all but tuner.pkl are written again at each save, named for Tune's session: experiment_state-2026-12-06_10-00-00.json)
SESSION_STATE_PREFIXES = ("experiment_state", "searcher-state", "search_gen_state", "callback-states",
                          "basic-variant-state")
TUNE_STATE_PREFIXES = ("tuner", *SESSION_STATE_PREFIXES)


def key_path() -> Path:
    """$LORA_SWEEP_STATE_KEY_FILE, or lora-sweep/state.key in the user's config folder ($XDG_CONFIG_HOME, ~/.config)."""
    if explicit := os.environ.get(KEY_FILE_ENV):
        return Path(explicit).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(config_home).expanduser() / "lora-sweep" / "state.key"


def load_key(create: bool) -> bytes | None:
    """This machine's sealing key; created (readable by the user only) on first use when `create`, else None if absent."""
    path = key_path()
    try:
        key = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(KEY_BYTES)
        # O_EXCL: two sweeps starting at once must not each write a different key
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_key(create=False)
        with os.fdopen(descriptor, "w") as f:
            f.write(key.hex() + "\n")
        return key
    except (OSError, ValueError) as e:
        raise ConfigError(f"the state key {path} cannot be read ({type(e).__name__}); it must hold the hex key "
                          f"lora-sweep created there (delete it only if no sweep needs resuming)") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"the state key {path} is not a {KEY_BYTES}-byte hex key; restore the file lora-sweep "
                          "created there (delete it only if no sweep needs resuming)")
    return key


def is_tune_state(name: str) -> bool:
    """A top-level file of an experiment that Tune may unpickle on restore."""
    return name.endswith(".pkl") or name.startswith(TUNE_STATE_PREFIXES)


def digest(key: bytes, name: str, content: bytes) -> str:
    # the name is sealed too: a sealed file's bytes under another Tune file name do not pass
    return hmac.new(key, name.encode() + b"\0" + content, hashlib.sha256).hexdigest()


def seal(key: bytes, files: dict[str, bytes]) -> dict:
    """The seal's content for these files (name -> bytes)."""
    return {"algorithm": "hmac-sha256", "files": {name: digest(key, name, content)
                                                  for name, content in sorted(files.items())}}


def unsealed(key: bytes, sealed: dict, files: dict[str, bytes]) -> list[str]:
    """The files (name -> bytes) whose HMAC is not the one in the seal, by name."""
    expected = sealed.get("files") if isinstance(sealed, dict) else None
    expected = expected if isinstance(expected, dict) else {}
    return sorted(name for name, content in files.items()
                  if not hmac.compare_digest(str(expected.get(name, "")), digest(key, name, content)))


def check_sealed(folder: str) -> None:
    """Before a --resume loads anything: every file of `folder` that Tune would unpickle carries this machine's seal.
    Every failure is one line; nothing is unpickled here (the seal is JSON, the state files are only hashed)."""
    names = [name for name in store.files(folder) if is_tune_state(name)]
    try:
        sealed = json.loads(store.read_text(store.join(folder, SEAL_FILE)))
    except (OSError, ValueError):
        raise ConfigError(f"--resume: {folder} has no readable {SEAL_FILE}, so its Tune state was not written by a "
                          "sweep of this miner (or by one from before seals); nothing was loaded. Start a new sweep, "
                          "or check --experiment_name and --storage_path") from None
    key = load_key(create=False)
    if key is None:
        raise ConfigError(f"--resume: no state key at {key_path()}, so the seal of {folder} cannot be checked and "
                          "nothing was loaded; copy state.key from the machine that started the sweep (or set "
                          f"{KEY_FILE_ENV} to it)")
    if bad := unsealed(key, sealed, {name: store.read_bytes(store.join(folder, name)) for name in names}):
        raise ConfigError(f"--resume: {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''} in {folder} "
                          f"{'does' if len(bad) == 1 else 'do'} not match the seal under this machine's key "
                          f"({key_path()}): changed, planted, or sealed with another machine's key; nothing was "
                          "loaded. Resume on the machine that started the sweep, or copy its state.key here")
