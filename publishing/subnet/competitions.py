"""Competitions are data (configs/competitions.yaml); a user adds one without touching code.

A competition says what its validators apply: the subnet it runs on, the model classes, parameter bounds, dtype,
byte and sequence limits, the tokenizer they score with, weight-norm limits, the hash form, epsilon and the
evaluation delay, and its evaluation tasks (a scoring method, a data source and a weight each). The original
competitions (m1, g1) keep their values; keys they leave out take the original validators' behaviour.
"""

import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from publishing.subnet.constants import VALIDATOR_EPSILON, VALIDATOR_EVAL_SAMPLES
from publishing.subnet.epsilon import Epsilon
from trainables.trial_contract import ScoringMethod

COMPETITIONS_FILE = Path(__file__).resolve().parents[2] / "configs" / "competitions.yaml"
HASH_FORMS = ("plain", "salted")


class CompetitionError(ValueError):
    pass


@dataclass(frozen=True)
class Task:
    name: str
    method: ScoringMethod
    dataset: str      # where validators draw the samples
    weight: float


ORIGINAL_TASKS = (Task("response", ScoringMethod.RESPONSE_LOSS, "cortex", 1.0),)


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
    eval_samples: int = VALIDATOR_EVAL_SAMPLES
    tasks: tuple[Task, ...] = field(default=ORIGINAL_TASKS)

    @property
    def scored_by_reference(self) -> bool:
        """Its tasks score reference_loss on their own data sets (the later validators); else the original
        response loss on the training data's held-out share."""
        return any(t.method == ScoringMethod.REFERENCE_LOSS for t in self.tasks)

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


def _epsilon(value, where: str) -> Epsilon:
    """A number, or {start, end, decay_blocks}: epsilon decaying linearly over that many blocks."""
    def fraction(x, what: str) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x < 1:
            raise CompetitionError(f"{where}: epsilon {what} must be a number in [0, 1), got {x!r}")
        return float(x)

    if isinstance(value, dict):
        if set(value) != {"start", "end", "decay_blocks"}:
            raise CompetitionError(f"{where}: epsilon takes start, end and decay_blocks (or one number), got "
                                   f"{', '.join(map(str, value)) or 'nothing'}")
        blocks = value["decay_blocks"]
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise CompetitionError(f"{where}: epsilon decay_blocks must be a whole number of blocks, got {blocks!r}")
        return Epsilon(fraction(value["start"], "start"), fraction(value["end"], "end"), blocks)
    return Epsilon(fraction(value, "value"))


def _tasks(value, where: str) -> tuple[Task, ...]:
    if not isinstance(value, list):
        raise CompetitionError(f"{where}: tasks must be a list of {{name, method, dataset, weight}}")
    tasks = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"name", "method", "dataset", "weight"}:
            raise CompetitionError(f"{where}: each task needs exactly name, method, dataset and weight, got "
                                   f"{item!r:.120}")
        weight = item["weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise CompetitionError(f"{where}: task {item['name']} has weight {weight!r}; a weight must be a positive "
                                   f"number (the score is the weight-averaged task loss)")
        if item["method"] not in tuple(ScoringMethod):
            raise CompetitionError(f"{where}: task {item['name']} has method {item['method']!r}; use one of "
                                   f"{', '.join(ScoringMethod)}")
        tasks.append(Task(str(item["name"]), ScoringMethod(item["method"]), str(item["dataset"]), float(weight)))
    if len({t.name for t in tasks}) < len(tasks):
        raise CompetitionError(f"{where} names a task twice; task names must differ")
    if len({t.method for t in tasks}) > 1:
        raise CompetitionError(f"{where} mixes scoring methods; a competition's tasks all score "
                               f"{ScoringMethod.RESPONSE_LOSS} or all {ScoringMethod.REFERENCE_LOSS}")
    return tuple(tasks)


def _check_types(fields: dict, where: str) -> None:
    """Each remaining key is a Competition field, of its type (a number where a number is meant)."""
    hints = typing.get_type_hints(Competition)
    for key, value in fields.items():
        if key not in hints:
            raise CompetitionError(f"{where} has an unknown key {key!r}; see the keys of m1 and 4")
        kind = hints[key]
        allowed = tuple(t for t in typing.get_args(kind) if t is not type(None)) or (kind,)
        if float in allowed:
            allowed = (*allowed, int)
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            if value is None and type(None) in typing.get_args(kind):
                continue
            raise CompetitionError(f"{where}: {key} must be {' or '.join(t.__name__ for t in allowed)}, got "
                                   f"{value!r:.60}")


def _competition(cid: str, fields, path: Path) -> Competition:
    where = f"competition {cid} in {path.name}"
    if not isinstance(fields, dict):
        raise CompetitionError(f"{where} must be a mapping of its rules (see m1), got {fields!r:.60}")
    fields = dict(fields)
    architectures = fields.pop("architectures", None) or fields.pop("architecture", None)
    if isinstance(architectures, str):
        architectures = [architectures]
    if not architectures or not isinstance(architectures, list):
        raise CompetitionError(f"{where} names no architecture; add `architectures: [LlamaForCausalLM, ...]`")
    epsilon = _epsilon(fields.pop("epsilon", VALIDATOR_EPSILON), where)
    tasks = _tasks(fields.pop("tasks", []), where)
    if fields.get("hash", "plain") not in HASH_FORMS:
        raise CompetitionError(f"{where}: hash must be plain or salted, got {fields['hash']!r}")
    _check_types(fields, where)
    try:
        return Competition(id=cid, architectures=tuple(map(str, architectures)), epsilon=epsilon,
                           tasks=tasks or ORIGINAL_TASKS, **fields)
    except TypeError as e:
        raise CompetitionError(f"{where} is not a competition ({e}); see the keys of m1") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a mapping that repeats a key (`r1` twice, or `4` and "4") is an error, not a silent last-wins."""


def _unique_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)  # YAML merge keys (<<: *constraints) first: a merged key may be overridden
    seen = set()
    for key_node, _ in node.value:
        key = str(loader.construct_object(key_node, deep=deep))
        if key in seen:
            raise CompetitionError(f"the key {key!r} appears twice (line {key_node.start_mark.line + 1}); each "
                                   f"competition and rule once")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_competitions(path: str | Path | None = None) -> dict[str, Competition]:
    """The competitions of `path` (default: the shipped configs/competitions.yaml)."""
    path = Path(path or COMPETITIONS_FILE).expanduser()
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)["competitions"]
        items = raw.items()
    except CompetitionError as e:
        raise CompetitionError(f"{path.name}: {e}") from None
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as e:
        # ValueError: a binary file (UnicodeDecodeError); TypeError/AttributeError: not a mapping
        raise CompetitionError(f"cannot read competitions from {path} ({type(e).__name__}); pass a YAML file with a "
                               f"`competitions:` mapping like configs/competitions.yaml") from None
    return {str(cid): _competition(str(cid), fields, path) for cid, fields in items}


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
