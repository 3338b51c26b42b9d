"""The hyperparameters a LoRA trial is trained with: one typed record, owned by the trainable.

The search space suggests exactly these fields (by name), Tune hands them to the trial in its config,
and the trial table, the plots, the summary and the model card read them back through this record.
"""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Hyperparameters:
    """What one trial searches over; everything else a trial needs is a fixed setting (TrialSettings).

    learning_rate: AdamW's peak learning rate (warmup, then cosine decay to a share of it)
    r: the rank of the LoRA matrices
    alpha: the LoRA scale's numerator (the adapter's update is scaled by alpha / r)
    """

    learning_rate: float
    r: int
    alpha: int

    @classmethod
    def from_mapping(cls, values: Mapping) -> "Hyperparameters":
        """From a Tune config (or any mapping with these names; other keys are ignored), cast to the fields' types:
        YAML and JSON may hand an integer learning rate, and Optuna a numpy number."""
        return cls(learning_rate=float(values["learning_rate"]), r=int(values["r"]), alpha=int(values["alpha"]))

    def as_dict(self) -> dict:
        """Plain values by name, in field order (for JSON, W&B and the model card)."""
        return asdict(self)

    def describe(self) -> str:
        """The summary's form: `learning_rate=0.000863  r=8  alpha=16`."""
        return f"learning_rate={self.learning_rate:.3g}  r={self.r}  alpha={self.alpha}"

    def compact(self) -> str:
        """The form of a trial's log line and of plot legends: `lr=8.63e-04 r=8 alpha=16`."""
        return f"lr={self.learning_rate:.2e} r={self.r} alpha={self.alpha}"


NAMES = tuple(f.name for f in fields(Hyperparameters))
# name -> float or int: what values a search space may give it (a float may also be a range)
TYPES = {f.name: f.type for f in fields(Hyperparameters)}
