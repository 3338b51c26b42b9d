"""What every trial of a sweep shares (its training flags and its model), apart from the code that trains.

Kept free of torch and transformers: Ray unpickles these settings in every trial's worker, and the driver reads
them, before anything needs the libraries that train.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainables.documented import check_choices, setting, typed_choices
from trainables.fused_kernels import CHOICES as FUSED_KERNEL_CHOICES
from trainables.trial_contract import Checkpointing, Packing

# transformers attention implementations a trial may ask for (varlen is registered by trainables.attention)
ATTENTION_CHOICES = ("sdpa", "flash_attention_2", "varlen", "flex_attention", "eager")


@dataclass(frozen=True)
class TrainingSettings:
    """How every trial of a sweep trains: the training group of the sweep's config (each is a flag)."""
    num_epochs: int = setting(1, "passes over the training pairs per trial")
    packing: Packing = setting(Packing.ON, "on: pairs share rows of up to --micro_batch_tokens tokens, each "
                                           "attending only to itself (no padding); off: padded micro-batches of "
                                           "--batch_size pairs", choices=Packing)
    tokens_per_step: int = setting(0, "tokens per optimizer step; 0: batch_size x accumulation_steps pairs of "
                                      "average length")
    micro_batch_tokens: int = setting(0, "packed: tokens per micro-batch (one row); 0: batch_size x the longest pair")
    batch_size: int = setting(1, "pairs per padded micro-batch; with the accumulation steps, sizes the default step")
    accumulation_steps: int = setting(32, "micro-batches per optimizer step, for the default --tokens_per_step")
    gradient_checkpointing: Checkpointing = setting(Checkpointing.AUTO, "auto: the fewest decoder layers the memory "
                                                                        "planner says a trial needs to fit (often "
                                                                        "none); on: every layer; off: none",
                                                    choices=Checkpointing)
    attn_implementation: str = setting("auto", "auto: the first that runs on the trial's device of "
                                               "flash_attention_2 (flash-attn installed), varlen (PyTorch's own "
                                               "variable-length attention, CUDA), flex_attention (CUDA), sdpa; the "
                                               "first three make a packed micro-batch one row and skip the blocks "
                                               "between pairs; eager",
                                       choices=("auto", *ATTENTION_CHOICES))
    eval_steps: int | None = setting(None, "optimizer steps between evaluations, checkpoints and reports, each "
                                           "evaluation on the whole held-out set (the cadence before --eval_tokens)",
                                     unset="by --eval_tokens")
    eval_tokens: int | None = setting(None, "training tokens between evaluations, checkpoints and reports (at the "
                                            "step that reaches them; set, it wins over --eval_steps); every 4th "
                                            "evaluation and the last score the whole held-out set, the others the "
                                            "rank subset (--eval_rank_share)",
                                      unset="auto: evaluation at most 15 percent of a trial's work")
    eval_rank_share: float = setting(0.25, "share of each task's held-out samples that evaluations between full ones "
                                           "score: a fixed seeded subset, the same for every trial, which ASHA and "
                                           "Optuna rank on (rank_loss); 1: every evaluation scores the whole set")
    eval_batch_size: int = setting(8, "pairs per padded evaluation batch (packed evaluation rows are as large as "
                                      "training's micro-batches)")
    warmup_ratio: float = setting(0.05, "share of the steps spent warming the learning rate up")
    weight_decay: float = setting(0.01, "AdamW weight decay")
    lora_dropout: float = setting(0.0, "dropout on the LoRA layers")
    fused_kernels: str = setting("auto", "liger: Liger Kernel's fused RMSNorm, RoPE and SwiGLU (CUDA, pip install "
                                         "liger-kernel); off; auto: on only on a card where the GPU benchmark "
                                         "measured them faster (none yet)", choices=FUSED_KERNEL_CHOICES)

    def __post_init__(self):
        typed_choices(self)  # "on" from a flag or YAML -> Packing.ON; a word not allowed stays, for check() to name

    def check(self) -> None:
        """Raise ValueError naming the flag to fix."""
        for name in ("num_epochs", "batch_size", "accumulation_steps", "eval_steps", "eval_tokens", "eval_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.eval_rank_share <= 1:
            raise ValueError(f"--eval_rank_share must be in (0, 1], got {self.eval_rank_share}")
        for name in ("tokens_per_step", "micro_batch_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be 0 (automatic) or more, got {getattr(self, name)}")
        check_choices(self)
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight_decay must be 0 or more, got {self.weight_decay}")


@dataclass(frozen=True)
class TrialSettings:
    """Everything a trial needs besides its hyperparameters; the same for every trial of a sweep."""
    model_dir: str
    training: TrainingSettings = TrainingSettings()
    min_lr_ratio: float = 0.01     # cosine decays to 1% of the peak rate, as the original miner did
    seed: int = 0
    cpus_per_trial: int = 1
    device: str = "auto"           # auto: the GPU Ray assigned to this trial, else the CPU
    embedded_model: bool = False   # model_dir is the embedded model: a node without it builds its own copy
    hub_endpoint: str | None = None  # where a node without a Hub-downloaded model_dir fetches it
    # decoder layers checkpointed, from the first (0: none), decided by the driver's memory planner from
    # --gradient_checkpointing: on, every layer; off, none; auto, the fewest that let a trial fit
    checkpointed_layers: int = 0
    memory_estimate_gb: float | None = None  # the planner's estimate of a trial's peak, reported beside the measured
