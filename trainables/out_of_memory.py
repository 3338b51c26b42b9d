"""Running out of accelerator memory is an outcome of a trial, not a crash to retry.

A configuration that did not fit once will not fit on a retry: the trial ends with one last report saying
where it ran out, its memory is freed for the next trial on the worker, and Optuna is told it failed.
"""

import torch

# what torch's CPU allocator says when malloc fails (it raises a plain RuntimeError there)
CPU_ALLOCATOR_FAILURE = "DefaultCPUAllocator: can't allocate memory"


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and CPU_ALLOCATOR_FAILURE in str(error))


def out_of_memory_reason(step: int, micro_batch_tokens: int, device: torch.device,
                         estimate_gb: float | None) -> str:
    """One line for the trial table and the summary: where it ran out, how big the micro-batch was, how much
    memory it had reached, against the planner's estimate."""
    parts = [f"out of memory at step {step} with {micro_batch_tokens:,}-token micro-batches"]
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 1e9
        parts.append(f"peak {torch.cuda.max_memory_allocated(device) / 1e9:.1f} GB of {total:.1f} GB")
    if estimate_gb is not None:
        parts.append(f"the planner estimated {estimate_gb:.1f} GB")
    return "; ".join(parts)
