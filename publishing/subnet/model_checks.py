"""The competition's limits, checked on a model folder before anything is uploaded.

Parameter counts come from the safetensors headers, so no model is loaded; weight norms are
read one tensor at a time, so even a 7B model is checked in bounded memory.
"""

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from publishing.subnet.competitions import Competition

_PROJECTION = re.compile(r"\.(q|k|v|o|gate|up|down)_proj\.weight$")


class ModelCheckError(ValueError):
    """The model breaks a competition limit; validators would reject it."""


@dataclass(frozen=True)
class ModelStats:
    architecture: str
    parameters: int
    total_bytes: int
    max_weight_norm: float
    high_norm_share: float


# safetensors' dtype names -> torch's, for the competitions' `dtype`
SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    return header


def safetensors_parameter_count(path: Path) -> int:
    count = 0
    for info in safetensors_header(path).values():
        n = 1
        for dim in info["shape"]:
            n *= dim
        count += n
    return count


def stored_dtypes(folder: Path) -> set[str]:
    """The dtypes the weights are stored in (torch's names), from the safetensors headers."""
    return {SAFETENSORS_DTYPES.get(info["dtype"], info["dtype"]) for path in folder.glob("*.safetensors")
            for info in safetensors_header(path).values()}


def projection_norms(folder: Path) -> list[float]:
    norms = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as tensors:
            for name in tensors.keys():
                if _PROJECTION.search(name):
                    norms.append(float(tensors.get_tensor(name).float().norm()))
    return norms


def check_model(folder: str | Path, competition: Competition, weight_norms: bool = True) -> ModelStats:
    """Raise ModelCheckError at the first limit broken; `weight_norms=False` skips reading every weight."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    architecture = (config.get("architectures") or ["<none>"])[0]
    if architecture not in competition.architectures:
        raise ModelCheckError(f"the model is a {architecture}, but competition {competition.id} takes "
                              f"{', '.join(competition.architectures)}; pick the competition that matches "
                              f"(--competition_id)")
    parameters = sum(safetensors_parameter_count(p) for p in folder.glob("*.safetensors"))
    if parameters > competition.max_parameters:
        raise ModelCheckError(f"the model has {parameters:,} parameters, over competition {competition.id}'s "
                              f"{competition.max_parameters:,}")
    if parameters < competition.min_parameters:
        raise ModelCheckError(f"the model has {parameters:,} parameters, under competition {competition.id}'s "
                              f"{competition.min_parameters:,}")
    if competition.dtype is not None:
        other = sorted(stored_dtypes(folder) - {competition.dtype})
        if other:
            raise ModelCheckError(f"the model's weights are stored in {', '.join(other)}, but competition "
                                  f"{competition.id} takes {competition.dtype}; save them as {competition.dtype}")
    total_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if total_bytes > competition.max_repo_bytes:
        raise ModelCheckError(f"the model's files total {total_bytes / 1024**3:.2f} GiB, over the "
                              f"{competition.max_repo_bytes / 1024**3:.0f} GiB validators accept")
    positions = config.get("max_position_embeddings", competition.sequence_length)
    if positions < competition.sequence_length:
        raise ModelCheckError(f"the model takes {positions} positions, but validators evaluate "
                              f"{competition.sequence_length}-token sequences")
    norms = projection_norms(folder) if weight_norms else []
    max_norm = max(norms, default=0.0)
    high_share = sum(n > competition.high_norm for n in norms) / len(norms) if norms else 0.0
    if max_norm > competition.max_weight_norm:
        raise ModelCheckError(f"a projection weight has norm {max_norm:.0f}, over the validators' "
                              f"{competition.max_weight_norm:g}; lower the learning rate")
    if high_share > competition.max_high_norm_share:
        raise ModelCheckError(f"{high_share:.0%} of projection weights have norm above {competition.high_norm:g}, "
                              f"over the validators' {competition.max_high_norm_share:.0%}")
    return ModelStats(architecture, parameters, total_bytes, max_norm, high_share)
