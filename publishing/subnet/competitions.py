"""Competitions are data (configs/competitions.yaml); a user adds one without touching code."""

from dataclasses import dataclass
from pathlib import Path

import yaml

COMPETITIONS_FILE = Path(__file__).resolve().parents[2] / "configs" / "competitions.yaml"


class CompetitionError(ValueError):
    pass


@dataclass(frozen=True)
class Competition:
    id: str
    architecture: str
    max_parameters: int
    tokenizer: str
    reward_share: float
    max_repo_bytes: int
    sequence_length: int
    max_weight_norm: float
    high_norm: float
    max_high_norm_share: float


def load_competitions(path: Path = COMPETITIONS_FILE) -> dict[str, Competition]:
    raw = yaml.safe_load(Path(path).read_text())["competitions"]
    return {cid: Competition(id=cid, **fields) for cid, fields in raw.items()}


def get_competition(competition_id: str, path: Path = COMPETITIONS_FILE) -> Competition:
    competitions = load_competitions(path)
    if competition_id not in competitions:
        raise CompetitionError(f"unknown competition {competition_id!r}; known: {', '.join(sorted(competitions))} "
                               f"(add one in {path.name})")
    if len(competition_id) > 2:
        raise CompetitionError(f"competition id {competition_id!r} is longer than the chain's 2 characters")
    return competitions[competition_id]


def competitions_table(competitions: dict[str, Competition]) -> str:
    rows = [("id", "architecture", "max parameters", "tokenizer", "reward share")]
    rows += [(c.id, c.architecture, f"{c.max_parameters:,}", c.tokenizer, f"{c.reward_share:.2f}")
             for c in competitions.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
