"""Can every node of the cluster reach --storage_path? Checked once before the sweep, with a probe file.

Trials resume from checkpoints in the storage on whichever node survives, and upload them from every node, so a
node that cannot see the storage would fail trials hours in. Each node reads the probe with its own file system or
credentials (the environment, ~/.aws or its role): credentials are never sent to a node.
"""

import os
import uuid
from pathlib import Path

from orchestrator.config import ConfigError
from orchestrator.every_node import alive_nodes, ask_each_node, blind_nodes
from publishing import storage


def check_shared_folder(storage_path: str) -> None:
    """On a cluster of several nodes, a local --storage_path must be a folder every node mounts."""
    nodes = alive_nodes()
    if len(nodes) < 2 or storage.is_remote(storage_path):
        return
    folder = Path(storage_path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".lora-sweep-probe-{uuid.uuid4().hex}"
    probe.write_text("probe")
    try:
        blind = blind_nodes(ask_each_node(os.path.exists, str(probe), nodes=nodes))
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise ConfigError(f"--storage_path {storage_path} is not shared: node(s) {', '.join(blind)} cannot see it; "
                          "on a multi-node cluster use s3://, gs:// or a folder every node mounts")


def _sees_object(location: str) -> bool:
    """On a node: can it read `location` with its own credentials?"""
    try:
        return storage.is_file(location)
    except Exception:  # noqa: BLE001: no credentials, no route, a bad endpoint: all mean "cannot see it"
        return False


def check_object_storage(storage_path: str, joined: bool = True) -> None:
    """An s3:// or gs:// --storage_path, on a cluster this driver joined (or of several nodes): every node must read
    a probe object written here. (A Ray this driver started shares its environment, so one node needs no probe.)"""
    if not storage.is_remote(storage_path):
        return
    nodes = alive_nodes()
    if len(nodes) < 2 and not joined:
        return
    probe = storage.join(storage_path, f".lora-sweep-probe-{uuid.uuid4().hex}")
    storage.write_text(probe, "probe")
    try:
        blind = blind_nodes(ask_each_node(_sees_object, probe, nodes=nodes))
    finally:
        storage.delete(probe)
    if blind:
        raise ConfigError(f"--storage_path {storage_path} cannot be read from node(s) {', '.join(blind)}; each node "
                          "needs the storage's credentials in its own environment, ~/.aws or role (and "
                          "AWS_ENDPOINT_URL for an S3-compatible server)")


def check_storage_reachable(storage_path: str, joined: bool) -> None:
    """Both probes: the one that applies to this storage runs."""
    check_shared_folder(storage_path)
    check_object_storage(storage_path, joined=joined)
