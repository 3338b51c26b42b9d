"""The fences around our libraries' private parts (issue 24, item 3): one module per library, and no other module of
the product touches a private name of these libraries (`grep` for `_private`, `_internal`, `_generated`,
`_attn_implementation`, `_ot_`, ... outside this package finds nothing).

- `ray_internals`:          Ray (Tune, Train, its W&B and Optuna integrations, the GCS state API)
- `optuna_internals`:       Optuna
- `transformers_internals`: transformers
- `bittensor_internals`:    the bittensor SDK
- `liger_internals`:        Liger Kernel (optional: `pip install liger-kernel`)

Each fenced use says in its docstring what it relies on (the exact internal, the version it was checked on: the
ranges in pyproject.toml) and what happens where it is gone: either the product fails loudly, with a one-line
`MissingInternal` naming the library, its installed version and the internal, or it prints ONE line, once per process,
saying which feature it turned off (`turned_off`). Never silently. tests/test_compat.py exercises every fenced use
against the installed libraries, and each one's "gone" behaviour.

This package sits in the bottom layer (trials and the driver both import it) and stays cheap to import: only the
standard library here; each fence imports its library inside its functions, where the code it replaced did.
"""

import importlib.metadata
import threading

_ANNOUNCED: set[str] = set()
_LOCK = threading.Lock()


class MissingInternal(RuntimeError):
    """A library no longer has a private part this product relies on; the message is one line that names the library,
    its installed version, the internal, the version it was checked on, and what to do."""


def installed_version(distribution: str) -> str:
    """The installed version of `distribution` (its pip name), or "(version unknown)"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def gone(distribution: str, internal: str, checked: str, consequence: str) -> str:
    """The one line for a missing internal: `ray 2.61.0 has no ray._private.state...get_draining_nodes (checked on
    ray 2.60.0): <consequence>`."""
    return (f"{distribution} {installed_version(distribution)} has no {internal} (checked on {distribution} "
            f"{checked}): {consequence}")


def missing(distribution: str, internal: str, checked: str, consequence: str) -> MissingInternal:
    """The loud failure: a MissingInternal with the one line (raise it)."""
    return MissingInternal(gone(distribution, internal, checked, consequence))


def turned_off(line: str) -> None:
    """Print `line` (a feature turned off, and why) once in this process, however often it is met."""
    with _LOCK:
        if line in _ANNOUNCED:
            return
        _ANNOUNCED.add(line)
    print(line, flush=True)
