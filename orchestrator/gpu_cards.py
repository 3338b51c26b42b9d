"""The GPUs a machine has, read with nvidia-smi, never through torch: torch would create a CUDA context in the
reading process, holding memory on a GPU that a trial then uses. The driver's memory planner and --device check
read it; it imports only the standard library, so the GPU benchmark uses it with nothing but torch and
transformers installed."""

import os
import shutil
import subprocess

# What a GPU gives a trial beyond max_memory_allocated: the CUDA context and kernels (~0.5 GB), and the caching
# allocator's fragmentation. The planner's estimate is compared against the card's memory less this.
CUDA_RESERVE_BYTES = int(1.5 * 2**30)


def gpus_here(only_visible: bool = True) -> list[tuple[str, int, float]]:
    """(name, memory bytes, compute capability) of every GPU this machine's CUDA_VISIBLE_DEVICES shows (all of
    them with only_visible=False: Ray hides every GPU from a task that asks for none)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,compute_cap",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[part.strip() for part in line.split(",")] for line in out.strip().splitlines() if line.count(",") == 3]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if only_visible else None
    if visible is not None:
        wanted = {v.strip() for v in visible.split(",") if v.strip()}
        rows = [row for row in rows if row[0] in wanted]
    return [(name, int(float(mib)) * 2**20, float(cap)) for _, name, mib, cap in rows]
