"""Competitions are data (configs/competitions.yaml); a user adds one without touching code.

A competition says what its validators apply: the subnet it runs on, the model classes, parameter bounds, dtype,
byte and sequence limits, the tokenizer they score with, weight-norm limits, the hash form, epsilon and the
evaluation delay, and its evaluation tasks (a scoring method, a data source and a weight each). The original
competitions (m1, g1) keep their values; keys they leave out take the original validators' behaviour.
"""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from publishing.subnet.constants import VALIDATOR_EPSILON
from publishing.subnet.epsilon import Epsilon

COMPETITIONS_FILE = Path(__file__).resolve().parents[2] / "configs" / "competitions.yaml"
SCORING_METHODS = ("response_loss", "reference_loss")
HASH_FORMS = ("plain", "salted")


class CompetitionError(ValueError):
    pass


@dataclass(frozen=True)
class Task:
    name: str
    method: str       # one of SCORING_METHODS
    dataset: str      # where validators draw the samples
    weight: float


ORIGINAL_TASKS = (Task("response", "response_loss", "cortex", 1.0),)


@dataclass(frozen=True)
class Competition:
    id: str
    architectures: tuple[str, ...]
    max_parameters: int
    tokenizer: str
    reward_share: float
    max_repo_bytes: int
    sequence_length: int
    max_weight_norm: float
    high_norm: float
    max_high_norm_share: float
    netuid: int = 6
    min_parameters: int = 0
    dtype: str | None = None
    hash: str = "plain"
    epsilon: Epsilon = Epsilon(VALIDATOR_EPSILON)
    eval_delay_blocks: int = 0
    eval_samples: int = 120   # samples validators draw per task of a reference_loss competition
    tasks: tuple[Task, ...] = field(default=ORIGINAL_TASKS)

    @property
    def scored_by_reference(self) -> bool:
        """Its tasks score reference_loss on their own data sets (the later validators); else the original
        response loss on the training data's held-out share."""
        return any(t.method == "reference_loss" for t in self.tasks)

    @property
    def architecture(self) -> str:
        """The first allowed class: what a model of this competition is usually built as."""
        return self.architectures[0]


def owned_settings(c: Competition) -> dict:
    """The settings a competition defines, by the config field each fills when the user sets none: what validators
    apply must not be pinned by a shipped default (a pinned max_length once made competition 4 train on its short
    samples only)."""
    return {"max_length": c.sequence_length, "netuid": c.netuid, "use_hotkey_in_hash": c.hash == "salted",
            "publish_min_improvement": c.epsilon.floor, "eval_samples_per_task": c.eval_samples}


def follow_competition(settings: dict, competition: Competition) -> dict:
    """`settings` (field -> value) with every competition-owned one the user left unset (None) filled in."""
    owned = {name: value for name, value in owned_settings(competition).items()
             if name in settings and settings[name] is None}
    return {**settings, **owned}


def _competition(cid: str, fields: dict, path: Path) -> Competition:
    where = f"competition {cid} in {path.name}"
    fields = dict(fields)
    architectures = fields.pop("architectures", None) or fields.pop("architecture", None)
    if isinstance(architectures, str):
        architectures = [architectures]
    if not architectures:
        raise CompetitionError(f"{where} names no architecture; add `architectures: [LlamaForCausalLM, ...]`")
    epsilon = fields.pop("epsilon", VALIDATOR_EPSILON)
    if isinstance(epsilon, dict):
        epsilon = Epsilon(float(epsilon["start"]), float(epsilon["end"]), int(epsilon["decay_blocks"]))
    else:
        epsilon = Epsilon(float(epsilon))
    tasks = tuple(Task(t["name"], t["method"], t["dataset"], float(t["weight"])) for t in fields.pop("tasks", []))
    for task in tasks:
        if task.method not in SCORING_METHODS:
            raise CompetitionError(f"{where}: task {task.name} has method {task.method!r}; use one of "
                                   f"{', '.join(SCORING_METHODS)}")
    if len({t.method for t in tasks}) > 1:
        raise CompetitionError(f"{where} mixes scoring methods; a competition's tasks all score response_loss or "
                               f"all reference_loss")
    if fields.get("hash", "plain") not in HASH_FORMS:
        raise CompetitionError(f"{where}: hash must be plain or salted, got {fields['hash']!r}")
    try:
        return Competition(id=cid, architectures=tuple(architectures), epsilon=epsilon,
                           tasks=tasks or ORIGINAL_TASKS, **fields)
    except TypeError as e:
        raise CompetitionError(f"{where} is not a competition ({e}); see the keys of m1") from None


def load_competitions(path: str | Path | None = None) -> dict[str, Competition]:
    """The competitions of `path` (default: the shipped configs/competitions.yaml)."""
    path = Path(path or COMPETITIONS_FILE).expanduser()
    try:
        raw = yaml.safe_load(path.read_text())["competitions"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise CompetitionError(f"cannot read competitions from {path} ({type(e).__name__}); pass a YAML file with a "
                               f"`competitions:` mapping like configs/competitions.yaml") from None
    return {str(cid): _competition(str(cid), fields, path) for cid, fields in raw.items()}


def get_competition(competition_id: str, path: str | Path | None = None) -> Competition:
    path = Path(path or COMPETITIONS_FILE)
    competitions = load_competitions(path)
    if competition_id not in competitions:
        raise CompetitionError(f"unknown competition {competition_id!r}; known: {', '.join(sorted(competitions))} "
                               f"(add one in {path.name})")
    if len(competition_id) > 2:
        raise CompetitionError(f"competition id {competition_id!r} is longer than the chain's 2 characters")
    return competitions[competition_id]


def _epsilon_text(epsilon: Epsilon) -> str:
    if epsilon.end is None:
        return f"{epsilon.start:g}"
    return f"{epsilon.start:g} -> {epsilon.end:g} over {epsilon.decay_blocks:,} blocks"


def describe(c: Competition) -> list[str]:
    """Every rule of a competition, one line each, for --list_competitions."""
    scoring = " + ".join(f"{t.weight:g} x {t.method}({t.dataset})" for t in c.tasks)
    return [
        f"competition {c.id} (netuid {c.netuid}, reward share {c.reward_share:g})",
        f"  architectures:   {', '.join(c.architectures)}",
        f"  parameters:      {c.min_parameters:,} to {c.max_parameters:,}" + (f", {c.dtype}" if c.dtype else ""),
        f"  tokenizer:       {c.tokenizer} (validators score with it)",
        f"  sequence length: {c.sequence_length:,}; repo at most {c.max_repo_bytes / 1024**3:g} GiB",
        f"  weight norms:    none above {c.max_weight_norm:g}, at most {c.max_high_norm_share:.0%} above "
        f"{c.high_norm:g}",
        f"  hash:            {c.hash}; epsilon {_epsilon_text(c.epsilon)}; evaluated after "
        f"{c.eval_delay_blocks} blocks",
        f"  score:           {scoring}" + (f" ({c.eval_samples} samples a task)" if c.scored_by_reference else ""),
    ]


def competitions_table(competitions: dict[str, Competition]) -> str:
    return "\n".join(line for c in competitions.values() for line in describe(c))
