"""The fence around Liger Kernel's private parts. liger-kernel is optional (`pip install liger-kernel`), not a
dependency, and not installed where the test suite runs: its API here was read from its source
(liger_kernel/transformers/monkey_patch.py), never run. Liger is imported inside the function."""

from trainables.compat import MissingInternal, installed_version

LIGER = "liger-kernel"


def apply_to_instance(model, **kernels) -> None:
    """Patch an already loaded model in place with Liger's kernels (`kernels`: rope=, rms_norm=, swiglu=, ...), for
    whatever model type it is.

    Relies on `liger_kernel.transformers._apply_liger_kernel_to_instance(model=..., **kernels)` (its public
    `apply_liger_kernel_to_<model type>` functions patch a model type's classes before loading, not an instance).
    Where it is gone: MissingInternal (loud); trainables.fused_kernels turns that into one line saying fused kernels
    are off where they were only `auto`, and fails where `--fused_kernels liger` asked for them.
    """
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        raise MissingInternal(f"{LIGER} {installed_version(LIGER)} has no "
                              "liger_kernel.transformers._apply_liger_kernel_to_instance (read from liger-kernel's "
                              "source): cannot patch a loaded model with Liger's kernels") from None
    _apply_liger_kernel_to_instance(model=model, **kernels)
