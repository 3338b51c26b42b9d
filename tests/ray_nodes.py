"""Ray nodes of a test's own on this machine: `ray start --block` in a process group of its own (so a test can kill a
node whole without touching any other Ray here), started when the node says so, not after a fixed sleep."""

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STARTED = "Ray runtime started"  # what `ray start` prints once its node has joined the cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_start_env(cluster_file: str = "cluster.yaml") -> dict[str, str]:
    """The environment a cluster file's head starts Ray with (the `VAR=value` words before its `ray start`): a test's
    head gets what `ray up`'s does."""
    import yaml

    commands = yaml.safe_load((CONFIGS / cluster_file).read_text())["head_start_ray_commands"]
    words = shlex.split(next(c for c in commands if "ray start" in c).split(";")[-1])
    return dict(word.split("=", 1) for word in words[:words.index("ray")])


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


class Cluster:
    """Head and worker, one CPU each, each `ray start --block` in its own process group, so that each can be killed
    whole without touching any other Ray on this machine (`ray stop` would stop them all, including the test
    session's own, and Ray ends a driver whose raylet is gone). Shared by a module's tests: a test may kill (or drain)
    the worker, and `ensure_worker` starts a new one for the next."""

    def __init__(self, env: dict):
        self.env, self.port, self.nodes, self.worker = env, free_port(), [], None
        self.address = f"127.0.0.1:{self.port}"

    def _start(self, *args) -> subprocess.Popen:
        node = start_node([*args, "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"],
                          self.env)
        self.nodes.append(node)
        return node

    def start(self) -> None:
        self._start("--head", "--port", str(self.port), "--include-dashboard", "false")
        self.ensure_worker()

    def ensure_worker(self) -> None:
        if self.worker is None or self.worker.poll() is not None:
            self.worker = self._start("--address", self.address)

    def worker_pids(self) -> set[int]:
        out = subprocess.run(["ps", "-o", "pid=", "-g", str(self.worker.pid)], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    def worker_node_id(self) -> str:
        """The worker's Ray node id, read from its raylet's command line (no driver needed)."""
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                for arg in args:
                    if arg.startswith((b"--node_id=", b"--node-id=")):
                        return arg.split(b"=", 1)[1].decode()
        raise AssertionError("the worker's raylet has no --node_id")

    def kill_worker(self) -> None:
        """The whole worker node: every process of its session (Ray's workers run in process groups of their own, so
        killing the node's group alone leaves a trial training on until it notices its raylet is gone)."""
        for _ in range(2):
            for pid in self.worker_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.worker.wait()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
