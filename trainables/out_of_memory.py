"""Running out of accelerator memory is an outcome of a trial, not a crash to retry.

A configuration that did not fit once will not fit on a retry: the trial ends with one last report saying
where it ran out, its memory is freed for the next trial on the worker, and Optuna is told it failed.
"""

import contextlib
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


@dataclass(frozen=True)
class AllocationFailure:
    """For tests: trials whose hyperparameters include `when` run out of memory at the first matrix
    multiplication of their first training forward pass, as a full GPU's allocator would refuse it."""
    when: tuple[tuple[str, object], ...]

    def armed(self, hyperparameters: dict):
        if all(hyperparameters.get(name) == value for name, value in self.when):
            return _RefuseTrainingMatmuls()
        return contextlib.nullcontext()


class _RefuseTrainingMatmuls(TorchDispatchMode):
    MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.MATMULS and torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by AllocationFailure): the allocator "
                                         "refused the first training matmul's output")
        return func(*args, **(kwargs or {}))
