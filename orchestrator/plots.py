"""The pictures a miner looks at after a sweep, drawn from the experiment folder Ray Tune wrote.

Reading (`read_trials`, `best_trial`) needs only the standard library; drawing (`curves_figure`,
`hyperparameters_figure`, `write_plots`) imports matplotlib when called and renders with its
non-interactive Agg canvas, so it works headless and never touches pyplot's global state.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trainables.hyperparameters import NAMES, Hyperparameters

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVES_PNG = "eval_loss_curves.png"
HYPERPARAMETERS_PNG = "eval_loss_vs_hyperparameters.png"
MAX_LEGEND_ENTRIES = 16  # more trials than this: only the best one gets a legend entry


@dataclass
class TrialCurve:
    """One trial: its folder name, Ray's trial id, its hyperparameters (None when params.json lacks them) and its
    (step, eval_loss) reports."""

    name: str
    trial_id: str
    hyperparameters: Hyperparameters | None
    points: list[tuple[int, float]] = field(default_factory=list)

    @property
    def best_eval_loss(self) -> float:
        return min(loss for _, loss in self.points)

    @property
    def best_step(self) -> int:
        return min(self.points, key=lambda point: point[1])[0]

    @property
    def label(self) -> str:
        return self.hyperparameters.compact() if self.hyperparameters else self.trial_id


def _read_points(result_file: Path) -> tuple[list[tuple[int, float]], str | None]:
    """(step, eval_loss) by step, and the trial id, from a result.json of one JSON object per line.

    Blank lines and lines that are not a complete JSON object (the last line of a trial still
    writing) are skipped, as are reports without a finite eval_loss. A step reported twice (a
    trial restored from a checkpoint reports its steps again) keeps its latest loss.
    """
    by_step: dict[int, float] = {}
    trial_id = None
    for line in result_file.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        trial_id = row.get("trial_id", trial_id)
        step = row.get("step", row.get("training_iteration"))
        loss = row.get("eval_loss")
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            continue
        if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
            continue
        by_step[int(step)] = float(loss)
    return sorted(by_step.items()), trial_id


def read_trials(experiment_dir: str | Path) -> list[TrialCurve]:
    """Every trial folder of a Ray Tune experiment with at least one eval loss reported, by folder name.

    Folders without params.json or result.json (or whose params.json is unreadable, or whose
    result.json has no complete report with an eval_loss yet) are skipped.
    """
    trials = []
    for folder in sorted(Path(experiment_dir).iterdir()):
        params_file, result_file = folder / "params.json", folder / "result.json"
        if not (folder.is_dir() and params_file.is_file() and result_file.is_file()):
            continue
        try:
            params = json.loads(params_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(params, dict):
            continue
        points, trial_id = _read_points(result_file)
        if points:
            trials.append(TrialCurve(name=folder.name, trial_id=str(trial_id or folder.name),
                                     hyperparameters=_hyperparameters(params), points=points))
    return trials


def _hyperparameters(params: dict) -> Hyperparameters | None:
    """A trial's params.json as hyperparameters; None for a folder of some other trainable."""
    try:
        return Hyperparameters.from_mapping(params)
    except (KeyError, TypeError, ValueError):
        return None


def best_trial(trials: list[TrialCurve]) -> TrialCurve | None:
    """The trial with the lowest eval loss at any report (the first such on a tie); None for no trials."""
    return min(trials, key=lambda trial: trial.best_eval_loss, default=None)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def curves_figure(trials: list[TrialCurve]) -> Figure:
    """Eval loss over steps, one line per trial, the best trial drawn thick and starred at its best report."""
    best = best_trial(trials)
    figure = _new_figure(10, 6)
    axes = figure.add_subplot()
    labelled = len(trials) <= MAX_LEGEND_ENTRIES
    for trial in trials:
        if trial is best:
            continue
        steps, losses = zip(*trial.points)
        axes.plot(steps, losses, marker=".", linewidth=1.2, alpha=0.6,
                  label=trial.label if labelled else None)
    if best is not None:
        steps, losses = zip(*best.points)
        axes.plot(steps, losses, color="black", marker="o", linewidth=3, zorder=3,
                  label=f"best: {best.label} ({best.best_eval_loss:.4f})")
        axes.plot([best.best_step], [best.best_eval_loss], marker="*", markersize=18, color="gold",
                  markeredgecolor="black", linestyle="none", zorder=4)
    axes.set_xlabel("step")
    axes.set_ylabel("eval loss")
    axes.set_title(f"Eval loss over steps ({len(trials)} trials)")
    axes.grid(True, alpha=0.3)
    if trials:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return figure


def hyperparameters_figure(trials: list[TrialCurve]) -> Figure:
    """Each trial's best eval loss against learning rate (log x), r (log2 x) and alpha (log2 x); the best starred."""
    best = best_trial(trials)
    figure = _new_figure(15, 5)
    panels = figure.subplots(1, len(NAMES), sharey=True)
    chosen = [t for t in trials if t.hyperparameters is not None]
    for axes, name in zip(panels, NAMES):
        xs = [float(getattr(t.hyperparameters, name)) for t in chosen]
        axes.scatter(xs, [t.best_eval_loss for t in chosen], s=40, alpha=0.7)
        if any(t is best for t in chosen):
            axes.scatter([float(getattr(best.hyperparameters, name))], [best.best_eval_loss], marker="*", s=300,
                         color="gold", edgecolors="black", zorder=3, label=f"best: {best.label}")
        if xs and min(xs) > 0:
            if name == "learning_rate":
                axes.set_xscale("log")
            else:
                values = sorted(set(xs))
                axes.set_xscale("log", base=2)
                axes.set_xticks(values, [f"{v:g}" for v in values])
                axes.minorticks_off()
                axes.set_xlim(values[0] / 1.4, values[-1] * 1.4)
        axes.set_xlabel({"learning_rate": "learning rate"}.get(name, name))
        axes.grid(True, alpha=0.3)
    panels[0].set_ylabel("best eval loss of the trial")
    starred = [handle for axes in panels for handle in axes.get_legend_handles_labels()[0]]
    if starred:
        figure.legend(starred[:1], [starred[0].get_label()], loc="outside upper right", fontsize="small")
    figure.suptitle(f"Best eval loss against hyperparameters ({len(trials)} trials)")
    return figure


def write_plots(experiment_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write eval_loss_curves.png and eval_loss_vs_hyperparameters.png; return their paths.

    out_dir defaults to experiment_dir/plots. With no trial to draw, nothing is written and [] returned.
    """
    trials = read_trials(experiment_dir)
    if not trials:
        return []
    out = Path(out_dir) if out_dir is not None else Path(experiment_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, draw in ((CURVES_PNG, curves_figure), (HYPERPARAMETERS_PNG, hyperparameters_figure)):
        path = out / filename
        draw(trials).savefig(path, format="png")
        written.append(path)
    return written
