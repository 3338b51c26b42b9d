"""Will a trial fit? The memory a trial has (the smallest GPU of the cluster, or on CPUs a share of a node's
memory), and the planner's verdict for the largest r of the search space, decided before any trial starts.

The decision itself is `trainables.memory_plan.plan` (pure); this module only finds the budget and the inputs.
GPU memory is read with nvidia-smi, never through torch: torch would create a CUDA context on the driver,
holding memory on a GPU that a trial then uses.
"""

import dataclasses
import os
from dataclasses import dataclass

from orchestrator.config import ConfigError, SweepConfig
from orchestrator.search_space import SearchSpace
from trainables.data import SweepData
from trainables.gpu_cards import CUDA_RESERVE_BYTES, gpus_here
from trainables.settings import TrialSettings
from trainables.trial_plan import micro_batch_shape, pair_lengths

GIB = 2**30
GB = 1e9  # what messages say: the planner's unit


@dataclass(frozen=True)
class Budget:
    device_type: str     # "cuda" or "cpu"
    bytes: int           # what one trial may use
    where: str           # for the messages: "the smallest GPU (NVIDIA H100 80GB HBM3, 79.6 GiB)"
    bf16: bool = False   # the GPU computes in bf16 (compute capability 8.0 or later)


def gpu_budget(gpus: list[tuple[str, int, float]], where: str) -> Budget:
    name, memory, cap = min(gpus, key=lambda gpu: gpu[1])
    return Budget("cuda", memory - CUDA_RESERVE_BYTES, f"the smallest GPU {where}: {name}, {memory / GB:.1f} GB",
                  bf16=all(c >= 8.0 for _, _, c in gpus))


def cpu_budget(available_bytes: int, trials_at_once: int, where: str) -> Budget:
    share = available_bytes // max(1, trials_at_once)
    return Budget("cpu", share, f"{where}: {available_bytes / GB:.1f} GB free, shared by {trials_at_once} "
                                f"trial(s) at once")


def local_budget(config: SweepConfig) -> Budget:
    """The budget of a sweep that runs on this machine (no --address)."""
    import psutil

    gpus = gpus_here() if config.run.device != "cpu" else []
    if gpus:
        return gpu_budget(gpus, "here")
    at_once = config.search.max_concurrent_trials or max(1, (os.cpu_count() or 1) // config.run.cpus_per_trial)
    return cpu_budget(psutil.virtual_memory().available, at_once, "this machine")


def cluster_budget(config: SweepConfig, uses_gpus: bool) -> Budget:
    """The budget on a cluster this driver joined: each GPU node's cards, read on the node itself; else the
    smallest node memory Ray reports, shared by the trials that node runs at once."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if uses_gpus:
        probe = ray.remote(gpus_here)  # run on each GPU node: its own nvidia-smi
        found = []
        for node in (n for n in nodes if n["Resources"].get("GPU", 0) >= 1):
            pinned = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            found += ray.get(probe.options(num_cpus=0, scheduling_strategy=pinned).remote(False), timeout=120)
        if found:
            return gpu_budget(found, "of the cluster")
    smallest = min(nodes, key=lambda n: n["Resources"].get("memory", 0))
    at_once = max(1, int(smallest["Resources"].get("CPU", 1)) // config.run.cpus_per_trial)
    return cpu_budget(int(smallest["Resources"].get("memory", 0)), at_once, "the smallest node")


def largest_r(space: SearchSpace) -> int:
    return max(space.distributions["r"].choices)  # r is always a list of values


def plan_trial_memory(config: SweepConfig, settings: TrialSettings, space: SearchSpace, data: SweepData,
                      budget: Budget) -> TrialSettings:
    """The trial settings with the checkpointed layers decided and the estimate recorded; ConfigError when nothing
    fits."""
    from transformers import AutoConfig

    from trainables.attention import choose_attention, planning_facts
    from trainables.memory_plan import FRAGMENTATION_MARGIN, MemoryPlanError, ModelShape, plan

    model_config = AutoConfig.from_pretrained(settings.model_dir, local_files_only=True, trust_remote_code=False)
    try:
        shape = ModelShape.from_config(model_config)
    except (AttributeError, TypeError, ValueError) as e:  # not a decoder the planner knows: nothing is decided
        print(f"memory plan: skipped, {model_config.model_type} is not a shape the planner knows ({e}); "
              f"--gradient_checkpointing auto means off")
        every_layer = getattr(model_config, "num_hidden_layers", 0)
        return dataclasses.replace(settings, checkpointed_layers=every_layer
                                   if settings.training.gradient_checkpointing == "on" else 0)
    # the attention a worker on this card picks (auto) or was asked for: it decides the rows and the masks
    try:
        assumed = choose_attention(settings.training.attn_implementation,
                                   planning_facts(budget.device_type, budget.bf16))
    except ValueError as e:  # e.g. varlen asked for where no GPU is: refused here, before any trial starts
        raise ConfigError(str(e)) from None
    attention = assumed.name
    rows, width = micro_batch_shape(settings.training, pair_lengths(data.train), attention)
    try:
        decided = plan(shape, weight_bytes=2 if budget.bf16 else 4, lora_r=largest_r(space), tokens=rows * width,
                       row_tokens=width, attn_implementation=attention, device_type=budget.device_type,
                       budget_bytes=budget.bytes, gradient_checkpointing=settings.training.gradient_checkpointing)
    except MemoryPlanError as e:
        raise ConfigError(f"{e} (budget: {budget.where})") from None
    print(f"memory plan: {decided.estimate.describe()} per trial at r={largest_r(space)}, {rows} x {width} tokens "
          f"a micro-batch under {attention} attention ({assumed.why}); {budget.bytes / GB:.1f} GB a trial "
          f"({budget.where}) for the estimate and a "
          f"{FRAGMENTATION_MARGIN:.0%} margin; {decided.describe_checkpointing()}")
    return dataclasses.replace(settings, checkpointed_layers=decided.checkpointed_layers,
                               memory_estimate_gb=decided.estimate.total_bytes / GB)
