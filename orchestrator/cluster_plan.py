"""What each trial asks of the cluster and how many run at once, decided from what Ray sees (pure functions and
one thin reader of the running cluster)."""

import math
from dataclasses import dataclass

from orchestrator.config import ConfigError, SweepConfig


def trial_resources(device: str, cpus_per_trial: int, cluster_gpus: float) -> dict:
    """One GPU per trial wherever the cluster has GPUs (unless told to use the CPU)."""
    if device == "cpu" or cluster_gpus < 1:
        return {"cpu": cpus_per_trial}
    return {"cpu": cpus_per_trial, "gpu": 1}


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
    import ray

    from orchestrator.storage_probes import check_storage_reachable

    cluster = ray.cluster_resources()
    resources = trial_resources(config.run.device, config.run.cpus_per_trial, cluster.get("GPU", 0))
    if config.run.device.startswith("cuda") and "gpu" not in resources:
        raise ConfigError(f"--device {config.run.device} but Ray sees no GPU; use --device cpu or auto")
    if "gpu" not in resources and config.run.cpus_per_trial > cluster.get("CPU", 0):
        raise ConfigError(f"--cpus_per_trial {config.run.cpus_per_trial} is more than the cluster's "
                          f"{int(cluster.get('CPU', 0))} CPUs")
    check_storage_reachable(config.run.storage_path, joined=config.run.address is not None)
    return ClusterPlan(resources, config.search.max_concurrent_trials or concurrent_slots(resources, cluster))
