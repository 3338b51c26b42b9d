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

from orchestrator.trial_records import TrialStatus
from trainables.hyperparameters import NAMES, Hyperparameters
from trainables.trial_contract import BASE_EVAL_LOSS, EVAL_LOSS, RANK_LOSS, STEP, TRAINING_ITERATION, TRIAL_ID

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVES_PNG = "eval_loss_curves.png"
HYPERPARAMETERS_PNG = "eval_loss_vs_hyperparameters.png"
MAX_LEGEND_ENTRIES = 16  # more trials than this: only the best one gets a legend entry
UNTRAINED_COLOR = "dimgrey"


@dataclass(frozen=True)
class EndStyle:
    """How a trial that did not run to the end is drawn: its curve's line style, the marker at its last
    evaluation (and, in the hyperparameter panels, at its best), and what the legend says of it."""
    linestyle: str
    marker: str
    color: str | None  # None: the trial's own colour
    legend: str


# a trial with no status (write_plots without records) is drawn as one that ran to the end
END_STYLES = {
    TrialStatus.STOPPED: EndStyle("--", "x", None, "stopped early by ASHA (x: its last evaluation)"),
    TrialStatus.TIME_BUDGET: EndStyle("--", "s", None, "stopped by --time_budget (square: its last evaluation)"),
    TrialStatus.FAILED: EndStyle(":", "X", "red", "failed (red X: its last evaluation)"),
    TrialStatus.OUT_OF_MEMORY: EndStyle(":", "v", "red", "out of memory (red triangle: its last evaluation)"),
    TrialStatus.INTERRUPTED: EndStyle(":", "|", "grey", "interrupted (bar: its last evaluation)"),
}


@dataclass
class TrialCurve:
    """One trial: its folder name, Ray's trial id, its hyperparameters (None when params.json lacks them) and its
    (step, eval_loss) reports."""

    name: str
    trial_id: str
    hyperparameters: Hyperparameters | None
    points: list[tuple[int, float]] = field(default_factory=list)
    base_eval_loss: float = math.nan  # the untrained model's loss, which every trial's reports carry
    status: TrialStatus | None = None  # how it ended, from the sweep's trial records (None: not known)
    # (step, rank_loss) at every report: the fixed subset of the held-out set every trial is ranked on. `points`
    # (eval_loss, the whole set) come only from full evaluations, so a trial stopped early may have none.
    rank_points: list[tuple[int, float]] = field(default_factory=list)

    @property
    def curve(self) -> list[tuple[int, float]]:
        """What its line draws: rank_loss at every report where the trial has it, else its eval losses."""
        return self.rank_points or self.points

    @property
    def best_eval_loss(self) -> float:
        """Its lowest eval loss on the whole held-out set; NaN when it never had a full evaluation."""
        return min((loss for _, loss in self.points), default=math.nan)

    @property
    def best_loss(self) -> float:
        """Its lowest eval loss, else (no full evaluation) its lowest rank_loss: where its dot goes."""
        return self.best_eval_loss if self.points else min(loss for _, loss in self.curve)

    @property
    def best_step(self) -> int:
        return min(self.points or self.curve, key=lambda point: point[1])[0]

    @property
    def label(self) -> str:
        return self.hyperparameters.compact() if self.hyperparameters else self.trial_id


CURVE_METRICS = (EVAL_LOSS, RANK_LOSS)  # the whole held-out set's (full evaluations), the rank subset's (all)


def _read_points(result_file: Path) -> tuple[dict[str, list[tuple[int, float]]], str | None, float]:
    """For each of CURVE_METRICS its (step, loss) by step, the trial id and the untrained model's eval loss (NaN when
    no report has it), from a result.json of one JSON object per line, read once.

    Blank lines and lines that are not a complete JSON object (the last line of a trial still
    writing) are skipped, as are losses that are not finite. A step reported twice (a
    trial restored from a checkpoint reports its steps again) keeps its latest loss.
    """
    by_step: dict[str, dict[int, float]] = {metric: {} for metric in CURVE_METRICS}
    trial_id, base = None, math.nan
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
        trial_id = row.get(TRIAL_ID, trial_id)
        if _finite(row.get(BASE_EVAL_LOSS)):
            base = float(row[BASE_EVAL_LOSS])
        step = row.get(STEP, row.get(TRAINING_ITERATION))
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            continue
        for metric in CURVE_METRICS:
            if _finite(row.get(metric)):
                by_step[metric][int(step)] = float(row[metric])
    return {metric: sorted(points.items()) for metric, points in by_step.items()}, trial_id, base


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_trials(experiment_dir: str | Path, statuses: dict[str, TrialStatus] | None = None) -> list[TrialCurve]:
    """Every trial folder of a Ray Tune experiment with at least one eval loss reported, by folder name, with its
    status from `statuses` (trial id -> how it ended) where given.

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
        curves, trial_id, base = _read_points(result_file)
        points, rank_points = curves[EVAL_LOSS], curves[RANK_LOSS]
        if points or rank_points:
            trial_id = str(trial_id or folder.name)
            trials.append(TrialCurve(name=folder.name, trial_id=trial_id, hyperparameters=_hyperparameters(params),
                                     points=points, base_eval_loss=base, status=(statuses or {}).get(trial_id),
                                     rank_points=rank_points))
    return trials


def _hyperparameters(params: dict) -> Hyperparameters | None:
    """A trial's params.json as hyperparameters; None for a folder of some other trainable."""
    try:
        return Hyperparameters.from_mapping(params)
    except (KeyError, TypeError, ValueError):
        return None


def best_trial(trials: list[TrialCurve]) -> TrialCurve | None:
    """The trial with the lowest eval loss at any full evaluation (the first such on a tie); None for none."""
    return min((t for t in trials if t.points), key=lambda trial: trial.best_eval_loss, default=None)


def untrained_loss(trials: list[TrialCurve]) -> float:
    """The untrained model's eval loss (each trial measures it the same way on the same data); NaN when unknown."""
    return next((t.base_eval_loss for t in trials if math.isfinite(t.base_eval_loss)), math.nan)


def _untrained_line(axes, base: float, label: bool) -> None:
    """The untrained model's loss as a horizontal reference; with `label`, named in the legend and on the line
    itself, at the right, where the curves have come down from it."""
    axes.axhline(base, color=UNTRAINED_COLOR, linestyle="-.", linewidth=1.5, zorder=1,
                 label=f"untrained model ({base:.4f})" if label else None)
    if label:
        axes.annotate(f"untrained model {base:.4f}", xy=(0.995, base), xycoords=("axes fraction", "data"),
                      xytext=(0, 3), textcoords="offset points", ha="right", fontsize="small", color=UNTRAINED_COLOR)


def _end_handles(trials: list[TrialCurve]):
    """One legend entry per way of ending that some trial here shows (the order of END_STYLES)."""
    from matplotlib.lines import Line2D

    present = {t.status for t in trials}
    return [Line2D([], [], color=style.color or "black", linestyle=style.linestyle, marker=style.marker,
                   markersize=8, label=style.legend)
            for status, style in END_STYLES.items() if status in present]


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot state), for every picture of the sweep (study_report's too)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def curves_figure(trials: list[TrialCurve]) -> Figure:
    """Eval loss over steps, one line per trial, the best trial drawn thick and starred at its best report; the
    untrained model's loss a horizontal reference; a trial that did not run to the end dashed (stopped) or dotted
    (failed), with a marker at its last evaluation that the legend explains."""
    best = best_trial(trials)
    figure = new_figure(10, 6)
    axes = figure.add_subplot()
    labelled = len(trials) <= MAX_LEGEND_ENTRIES
    # rank_loss on a subset between full evaluations (--eval_tokens): the line and the circles differ
    ranked_apart = any(t.rank_points and t.rank_points != t.points for t in trials)
    base = untrained_loss(trials)
    if math.isfinite(base):
        _untrained_line(axes, base, label=True)
    for trial in trials:
        style = END_STYLES.get(trial.status)
        steps, losses = zip(*trial.curve)
        if trial is best:
            line, = axes.plot(steps, losses, color="black", marker="o", linewidth=3, zorder=3,
                              linestyle=style.linestyle if style else "-",
                              label=f"best: {best.label} ({best.best_eval_loss:.4f})")
        else:
            line, = axes.plot(steps, losses, marker=".", linewidth=1.2, alpha=0.6,
                              linestyle=style.linestyle if style else "-", label=trial.label if labelled else None)
        if style:
            axes.plot([steps[-1]], [losses[-1]], marker=style.marker, markersize=11, markeredgewidth=2.5,
                      color=style.color or line.get_color(), linestyle="none", zorder=4)
        if ranked_apart and trial.points:  # its full evaluations, where they differ from the line's subset
            axes.plot(*zip(*trial.points), marker="o", markersize=7, markerfacecolor="none", linestyle="none",
                      color=line.get_color(), zorder=4)
    if best is not None:
        axes.plot([best.best_step], [best.best_eval_loss], marker="*", markersize=18, color="gold",
                  markeredgecolor="black", linestyle="none", zorder=5)
    axes.set_xlabel(STEP)
    if ranked_apart:
        axes.set_ylabel("loss")
        axes.set_title(f"rank_loss over steps ({len(trials)} trials): lines, the fixed subset every trial is ranked on;"
                       f"\ncircles, eval_loss on the whole held-out set", fontsize="medium")
    else:
        axes.set_ylabel("eval loss")
        axes.set_title(f"Eval loss over steps ({len(trials)} trials)")
    axes.grid(True, alpha=0.3)
    if trials:
        handles, _ = axes.get_legend_handles_labels()
        axes.legend(handles=handles + _end_handles(trials), fontsize="small", loc="upper left",
                    bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return figure


def hyperparameters_figure(trials: list[TrialCurve]) -> Figure:
    """Each trial's best eval loss against learning rate (log x), r (log2 x) and alpha (log2 x); the best starred,
    a trial that did not run to the end marked as in the curves, the untrained model's loss a reference line."""
    best = best_trial(trials)
    figure = new_figure(15, 5)
    panels = figure.subplots(1, len(NAMES), sharey=True)
    chosen = [t for t in trials if t.hyperparameters is not None]
    base = untrained_loss(trials)
    # one scatter per way of ending (ran to the end first, then END_STYLES' order): one legend entry for each
    groups = {status: [t for t in chosen if (t.status if t.status in END_STYLES else None) is status]
              for status in (None, *END_STYLES)}
    groups = {status: group for status, group in groups.items() if group}
    for axes, name in zip(panels, NAMES):
        xs = [float(getattr(t.hyperparameters, name)) for t in chosen]
        if math.isfinite(base):
            _untrained_line(axes, base, label=axes is panels[0])
        for status, group in groups.items():
            style = END_STYLES.get(status)
            axes.scatter([float(getattr(t.hyperparameters, name)) for t in group],
                         [t.best_loss for t in group], s=60 if style else 40, alpha=0.8,
                         marker=style.marker if style else "o",
                         color=(style.color or "tab:orange") if style else "tab:blue",
                         label=style.legend.split(" (")[0] if style else "ran to the end")
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
    handles, labels = panels[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", fontsize="small", ncols=len(handles))
    figure.suptitle(f"Best eval loss against hyperparameters ({len(trials)} trials)")
    return figure


def write_plots(experiment_dir: str | Path, out_dir: str | Path | None = None,
                statuses: dict[str, TrialStatus] | None = None) -> list[Path]:
    """Write eval_loss_curves.png and eval_loss_vs_hyperparameters.png; return their paths.

    out_dir defaults to experiment_dir/plots. `statuses` (trial id -> how it ended, from the sweep's trial records;
    the result files do not tell a stopped trial from a finished one) marks the trials that did not run to the end.
    With no trial to draw, nothing is written and [] returned.
    """
    trials = read_trials(experiment_dir, statuses)
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


def rounds_figure(records) -> Figure:
    """orchestrator.mine's rounds.png: per round (orchestrator.rounds.RoundRecord), our best score and the leader's,
    each on that round's held-out samples (a round draws its own, so the lines compare within a round, not across)."""
    figure = new_figure(7, 4)
    axes = figure.add_subplot()
    rounds = [r.round for r in records]
    ours = [r.best_score for r in records]
    leader = [r.leader_score for r in records]
    axes.plot(rounds, ours, "o-", color="tab:blue", label="our best this round")
    if any(_finite(v) for v in leader):
        axes.plot(rounds, leader, "s--", color="tab:red", label="the leader")
    for r, score in zip(records, ours):
        if r.published and _finite(score):
            axes.annotate("published", (r.round, score), textcoords="offset points", xytext=(0, 8), ha="center",
                          fontsize=8, color="tab:green")
    axes.set_xlabel("round")
    axes.set_ylabel("score (eval loss, lower is better)")
    axes.set_xticks(rounds)
    axes.set_title("Mining: our score and the leader's, each on its round's held-out samples", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure
