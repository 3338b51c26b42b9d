"""Fused kernels (issue 22, item 3): Liger Kernel's RMSNorm, RoPE and SwiGLU, patched into the base model before
peft wraps it, so the elementwise work between the matmuls runs as single Triton kernels.

Liger's kernels are Triton, so CUDA only, and a pip package (`pip install liger-kernel`; on a machine without
network, its wheel). `--fused_kernels`:
- `liger`: apply them (refused in one line on the CPU, or where the package is missing);
- `off`: never;
- `auto` (the default): on only on a card where the GPU benchmark measured them faster than without
  (`MEASURED_FASTER`, from BENCHMARKS.md section 5). No card has been measured yet, so `auto` is off everywhere.

The loss stays the project's chunked per-pair loss (trainables/evaluation.py): Liger's fused linear cross-entropy
returns one mean loss, not the per-pair losses validators score, so it is never applied; nor is its cross-entropy.
"""

import importlib.util

CHOICES = ("auto", "liger", "off")
# torch.cuda.get_device_name() of the cards where `benchmarks/gpu_throughput.py` measured the Liger rows faster
MEASURED_FASTER: frozenset[str] = frozenset()
# what is fused: the elementwise parts only (see the module's docstring for the loss)
LIGER_KWARGS = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                "fused_linear_cross_entropy": False}


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def choose(requested: str, device_type: str, card: str | None, installed: bool) -> tuple[bool, str]:
    """(apply Liger's kernels?, why), or ValueError with one line saying what to fix. Pure."""
    if requested not in CHOICES:
        raise ValueError(f"--fused_kernels must be one of {', '.join(CHOICES)}, got {requested!r}")
    if requested == "off":
        return False, "fused kernels off (--fused_kernels off)"
    if requested == "liger":
        if device_type != "cuda":
            raise ValueError("--fused_kernels liger needs a CUDA GPU (Liger's kernels are Triton); use auto or off")
        if not installed:
            raise ValueError("--fused_kernels liger needs the liger-kernel package on every GPU node "
                             "(pip install liger-kernel); or use auto or off")
        return True, "Liger's fused RMSNorm, RoPE and SwiGLU (--fused_kernels liger)"
    if device_type == "cuda" and card in MEASURED_FASTER and installed:
        return True, f"Liger's fused RMSNorm, RoPE and SwiGLU (measured faster on {card})"
    return False, ("fused kernels off: not measured faster on this card" if device_type == "cuda"
                   else "fused kernels off: CPU")


def apply(model, requested: str, device) -> str:
    """Patch `model` (the base, before peft wraps it) as `choose` decides; returns the one line that says what and
    why. Liger patches the instance's modules (and its model type's RoPE function) in place, through a private part
    of Liger's (trainables.compat.liger_internals): where that is gone, `auto` turns the kernels off (the line says
    why) and `liger` fails in one line."""
    card = None
    if device.type == "cuda":
        import torch

        card = torch.cuda.get_device_name(device)
    use, why = choose(requested, device.type, card, liger_installed())
    if use:
        from trainables.compat import MissingInternal, liger_internals

        try:
            liger_internals.apply_to_instance(model, **LIGER_KWARGS)
        except MissingInternal as gone:
            if requested == "liger":  # asked for: fail in one line
                raise
            return f"fused kernels off: {gone}"
    return why
