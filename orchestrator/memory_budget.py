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
from orchestrator.gpu_cards import CUDA_RESERVE_BYTES, gpus_here
from trainables.memory_plan import GB  # what messages say: the planner's unit
from trainables.settings import TrialSettings
from trainables.trial_contract import Checkpointing
from trainables.trial_plan import micro_batch_shape, pair_lengths



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


def trial_budget(config: SweepConfig, uses_gpus: bool) -> Budget:
    """The one decision of where a trial's memory is counted: this machine's, or, on a cluster this driver joined
    (--address), the cluster's smallest."""
    return local_budget(config) if config.run.address is None else cluster_budget(config, uses_gpus)


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
    from orchestrator.every_node import alive_nodes, ask_each_node

    nodes = alive_nodes()
    if uses_gpus:
        # every card of each GPU node, from its own nvidia-smi (Ray hides the GPUs from a task that asks for none)
        gpu_nodes = [node for node in nodes if node["Resources"].get("GPU", 0) >= 1]
        found = [card for _, cards in ask_each_node(gpus_here, False, nodes=gpu_nodes) for card in cards]
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
                                   if settings.training.gradient_checkpointing == Checkpointing.ON else 0)
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
