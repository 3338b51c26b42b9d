"""Ray nodes of a test's own on this machine: `ray start --block` in a process group of its own (so a test can kill a
node whole without touching any other Ray here), started when the node says so, not after a fixed sleep."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
STARTED = "Ray runtime started"  # what `ray start` prints once its node has joined the cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], env: dict, timeout_s: float = 90) -> subprocess.Popen:
    """`ray start --block <args>`; returns once the node has started (its head's ports open, or, for a worker,
    registered with the head), or raises with the node's last output."""
    log = tempfile.NamedTemporaryFile(prefix="ray-node-", suffix=".log", delete=False)
    node = subprocess.Popen([RAY, "start", "--block", *args], env=env, start_new_session=True, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while STARTED not in Path(log.name).read_text(errors="replace"):
        if node.poll() is not None or time.monotonic() > deadline:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
            raise RuntimeError(f"`ray start {' '.join(args)}` did not start: "
                               f"{Path(log.name).read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return node
