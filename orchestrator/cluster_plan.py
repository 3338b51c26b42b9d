"""What each trial asks of the cluster and how many run at once, decided from what Ray sees (pure functions and
thin readers of the running cluster; on a cluster this driver joined, a wait for the worker nodes that are still
to join)."""

import functools
import math
import time
from dataclasses import dataclass

from orchestrator.config import ConfigError, SweepConfig


def trial_resources(device: str, cpus_per_trial: int, cluster_gpus: float) -> dict:
    """One GPU per trial wherever the cluster has GPUs (unless told to use the CPU)."""
    if device == "cpu" or cluster_gpus < 1:
        return {"cpu": cpus_per_trial}
    return {"cpu": cpus_per_trial, "gpu": 1}


def room_for_a_trial(device: str, cpus_per_trial: int, cluster: dict) -> bool:
    """Whether the cluster, as it is now, holds what one trial asks: a GPU for --device cuda; for auto, a GPU or
    cpus_per_trial CPUs (the README's cluster gives its head no CPU for trials: before its first GPU worker joins,
    nothing can train there)."""
    gpus, cpus = cluster.get("GPU", 0), cluster.get("CPU", 0)
    if device.startswith("cuda"):
        return gpus >= 1
    return (device != "cpu" and gpus >= 1) or cpus >= cpus_per_trial


# A new node takes minutes to join: the first GPU worker after `ray up` (a spot request, then this project's install),
# or one replacing a spot worker reclaimed between two mining rounds. A driver that joined a cluster waits this long.
WORKER_WAIT_S = 30 * 60
WAIT_POLL_S = 2.0  # (ray.cluster_resources() is one call to the head: cheap)


def wait_for_room(config: SweepConfig, wait_s: float = WORKER_WAIT_S, poll_s: float = WAIT_POLL_S,
                  say=functools.partial(print, flush=True)) -> dict:
    """The cluster's resources (ray.cluster_resources()) once it has room for one trial. On a cluster this driver
    joined (--address), it waits for worker nodes, at most `wait_s`, one line when it starts waiting and one when a
    node has joined (with --device cuda it also asks the autoscaler for a GPU node); then ConfigError in one line.
    A Ray started here has what this machine has: nothing to wait for."""
    import ray

    cluster = ray.cluster_resources()
    device, cpus = config.run.device, config.run.cpus_per_trial
    if config.run.address is None or room_for_a_trial(device, cpus, cluster):
        return cluster
    wanted = "a GPU" if device.startswith("cuda") else f"a GPU or {cpus} CPU{'s' if cpus > 1 else ''}"
    if device.startswith("cuda"):
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"GPU": 1, "CPU": cpus}])  # a standing request: the autoscaler keeps one such node
    say(f"waiting for a worker node: the cluster has no room for a trial yet ({wanted}; it has "
        f"{cluster.get('GPU', 0):g} GPUs, {cluster.get('CPU', 0):g} CPUs). A new node takes minutes to join; "
        f"`ray status` on the head shows the autoscaler's launches")
    started = time.monotonic()
    while time.monotonic() - started < wait_s:
        time.sleep(poll_s)
        cluster = ray.cluster_resources()
        if room_for_a_trial(device, cpus, cluster):
            say(f"a worker node joined after {time.monotonic() - started:.0f} s: {cluster.get('GPU', 0):g} GPUs, "
                f"{cluster.get('CPU', 0):g} CPUs")
            return cluster
    raise ConfigError(f"no worker node with {wanted} joined the cluster in {wait_s / 60:g} minutes; check `ray "
                      f"status` and the autoscaler's log on the head (`ray monitor <cluster.yaml>`), then run again")


def scoring_task_options(config: SweepConfig) -> dict | None:
    """Where a driver scores a model (orchestrator.score --address, orchestrator.mine's contenders): on a cluster it
    joined, as a trial would run, a Ray task with a trial's resources (on a GPU node where trials use GPUs: the
    README's head has none, and a 3B model at 16k tokens would take it hours), once the cluster has room for one
    trial; without --address, in its own process (None), on this machine, where trials run too."""
    if config.run.address is None:
        return None
    cluster = wait_for_room(config)  # (a spot GPU worker reclaimed since the last round: wait for its replacement)
    resources = trial_resources(config.run.device, config.run.cpus_per_trial, cluster.get("GPU", 0))
    return ClusterPlan(resources, 1).task_options


def scoring_place(options: dict) -> str:
    """Where scoring_task_options' task runs, in words: `a Ray task with a GPU`, `a Ray task with 2 CPU(s)`."""
    return "a Ray task with " + ("a GPU" if options.get("num_gpus") else f"{options.get('num_cpus', 1)} CPU(s)")


def concurrent_slots(resources: dict, cluster: dict) -> int:
    """How many trials fit in the cluster at once."""
    return max(1, min(math.floor(cluster.get(k.upper(), 0) / v) for k, v in resources.items()))


@dataclass(frozen=True)
class ClusterPlan:
    resources: dict           # per trial: {"cpu": n} or {"cpu": n, "gpu": 1}
    max_concurrent: int

    @property
    def uses_gpus(self) -> bool:
        return "gpu" in self.resources

    @property
    def task_options(self) -> dict:
        """The same resources for a Ray task (the head-to-head's evaluations)."""
        return {"num_cpus": self.resources.get("cpu", 1), "num_gpus": self.resources.get("gpu", 0)}


def plan_cluster(config: SweepConfig) -> ClusterPlan:
    """Checks that need the running cluster (its GPUs, CPUs and nodes, and whether each reaches the storage), done
    before anything trains."""
    from orchestrator.storage_probes import check_storage_reachable

    cluster = wait_for_room(config)
    resources = trial_resources(config.run.device, config.run.cpus_per_trial, cluster.get("GPU", 0))
    if config.run.device.startswith("cuda") and "gpu" not in resources:
        raise ConfigError(f"--device {config.run.device} but Ray sees no GPU; use --device cpu or auto")
    if "gpu" not in resources and config.run.cpus_per_trial > cluster.get("CPU", 0):
        raise ConfigError(f"--cpus_per_trial {config.run.cpus_per_trial} is more than the cluster's "
                          f"{int(cluster.get('CPU', 0))} CPUs")
    check_storage_reachable(config.run.storage_path, joined=config.run.address is not None)
    return ClusterPlan(resources, config.search.max_concurrent_trials or concurrent_slots(resources, cluster))
