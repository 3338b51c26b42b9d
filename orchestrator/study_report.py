"""What mattered in a finished sweep: parameter importances, the compute it spent, and what early stopping saved.

Everything here is computed from the sweep's own trial records (`TrialRecord`: hyperparameters, best eval loss,
steps from the last report, Tune's `time_total_s`), so it needs no stored Optuna study: the importances come from
an in-memory study rebuilt from those trials, with Optuna's fANOVA evaluator. They score each trial by its best
eval loss (the loss of its best checkpoint, the one the coordinator would merge), which is the question a miner
asks; optuna-dashboard, on a --study, answers another (see `Importances.lines`), so the two may disagree. The
figures are drawn on matplotlib's Agg canvas (headless, no pyplot state), like orchestrator/plots.py.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.plots import new_figure
from orchestrator.trial_records import TrialRecord, TrialStatus
from trainables.hyperparameters import NAMES

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

IMPORTANCES_PNG = "param_importances.png"
PARALLEL_COORDINATES_PNG = "parallel_coordinates.png"
MIN_TRIALS_FOR_IMPORTANCES = 4  # fewer trials with a loss than this: fANOVA's forest would only fit noise
# trials whose best eval loss is no result: every other trial (ran to the end, or stopped early) is scored
UNSCORED = (TrialStatus.FAILED, TrialStatus.OUT_OF_MEMORY, TrialStatus.INTERRUPTED)
LABELS = {"learning_rate": "learning rate"}


def search_loss(record: TrialRecord) -> float:
    """What the search compared of a trial: its best rank_loss (a fixed subset of the held-out set, the same for
    every trial, reported at every evaluation, so even a trial stopped at its first rung has one); the best eval
    loss of a record from before rank_loss existed."""
    return record.best_rank_loss if math.isfinite(record.best_rank_loss) else record.best_eval_loss


def scored_trials(records: list[TrialRecord]) -> list[TrialRecord]:
    """The trials that reported a finite loss and ran to the end or were stopped early (by the scheduler, or by a
    time budget); failed, out-of-memory and interrupted trials are left out."""
    return [r for r in records if r.status not in UNSCORED and r.hyperparameters is not None
            and math.isfinite(search_loss(r))]


def observed_distributions(records: list[TrialRecord]) -> dict:
    """Distributions that hold every trial's values, when the search space is not at hand: a log-uniform range of
    the learning rates seen (a single value where only one was), and the values of r and alpha seen."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    chosen = [r.hyperparameters for r in records if r.hyperparameters is not None]
    rates = sorted({h.learning_rate for h in chosen}) or [1.0]
    return {"learning_rate": (FloatDistribution(rates[0], rates[-1], log=True) if len(rates) > 1
                              else CategoricalDistribution(rates)),
            "r": CategoricalDistribution(sorted({h.r for h in chosen}) or [0]),
            "alpha": CategoricalDistribution(sorted({h.alpha for h in chosen}) or [0])}


def study_from_records(records: list[TrialRecord], distributions: dict | None = None) -> optuna.Study:
    """An in-memory Optuna study of this sweep's scored trials: each trial's hyperparameters (with the search
    space's distributions) and its best eval loss. A trial whose values lie outside the distributions (a search
    space changed between runs of one experiment) is left out."""
    import optuna

    distributions = {name: (distributions or observed_distributions(records))[name] for name in NAMES}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" in the summary
    try:
        study = optuna.create_study(direction="minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for record in scored_trials(records):
        try:
            trial = optuna.trial.create_trial(params=record.hyperparameters.as_dict(), distributions=distributions,
                                              value=search_loss(record), user_attrs={"trial_id": record.trial_id})
        except ValueError:  # a value the distribution does not contain
            continue
        study.add_trial(trial)
    return study


@dataclass(frozen=True)
class Importances:
    """Each hyperparameter's share of the variance of the best eval loss (fANOVA), largest first, summing to 1;
    empty, with the reason in `note`, when they were not computed."""
    values: dict[str, float]
    trials: int        # the trials they were computed over (scored trials inside the search space)
    note: str = ""

    def line(self) -> str:
        if not self.values:
            return f"importances:     {self.note}"
        shares = ", ".join(f"{name} {share:.2f}" for name, share in self.values.items())
        return f"importances:     {shares} (fANOVA over {self.trials} trials of this sweep, each by its best loss)"

    def lines(self, stored_study: bool = False) -> list[str]:
        """The line, and with a stored study (--study), why optuna-dashboard's importances for it can differ: it
        computes them with another evaluator (PED-ANOVA), over what the study stores, which is each complete
        trial's last reported loss (the scheduler's stopped trials among them, unless --pruned_trials pruned), and
        earlier sweeps' trials too."""
        if not (self.values and stored_study):
            return [self.line()]
        return [self.line(), "                 (optuna-dashboard's can differ: PED-ANOVA over the study's complete "
                             "trials, earlier sweeps' too, each by its last value)"]


def param_importances(records: list[TrialRecord], distributions: dict | None = None, seed: int = 0,
                      min_trials: int = MIN_TRIALS_FOR_IMPORTANCES) -> Importances:
    """fANOVA importances of learning rate, r and alpha for the best eval loss, over the sweep's scored trials."""
    import optuna

    study = study_from_records(records, distributions)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if len(trials) < min_trials:
        return Importances({}, len(trials), f"need at least {min_trials} trials with a loss for fANOVA "
                                            f"(this sweep has {len(trials)})")
    if len({tuple(t.params[name] for name in NAMES) for t in trials}) < 2:
        return Importances({}, len(trials), "none: every trial had the same hyperparameters")
    if len({t.value for t in trials}) < 2:
        return Importances({}, len(trials), "none: every trial had the same best eval loss")
    try:
        import sklearn  # noqa: F401: fANOVA's random forest
    except ImportError:
        return Importances({}, len(trials), "not computed: fANOVA needs scikit-learn (pip install 'scikit-learn>=1.3')")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    values = optuna.importance.get_param_importances(study, evaluator=evaluator, params=list(NAMES))
    return Importances({name: float(share) for name, share in values.items()}, len(trials))


def _unit(resources: dict) -> tuple[str, float]:
    """What a trial held, as counted here: its GPUs where it had any, else its CPUs."""
    if resources.get("gpu"):
        return "GPU", float(resources["gpu"])
    return "CPU", float(resources.get("cpu", 1))


def _hours(hours: float) -> str:
    return f"{hours:.2f}" if hours >= 0.1 else f"{hours:.2g}"


@dataclass(frozen=True)
class Compute:
    """What the trials held: the sum over trials of their wall seconds times the GPUs (or CPUs) each held."""
    unit: str            # "GPU" or "CPU"
    per_trial: float     # GPUs (or CPUs) each trial held
    seconds: float       # GPU-seconds (or CPU-seconds)
    trials: int

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    def line(self) -> str:
        return f"compute:         {_hours(self.hours)} {self.unit}-hours over {self.trials} trials"


def compute_spent(records: list[TrialRecord], resources: dict) -> Compute:
    unit, per_trial = _unit(resources)
    return Compute(unit, per_trial, sum(r.seconds for r in records) * per_trial, len(records))


@dataclass(frozen=True)
class EarlyStopping:
    """What the scheduler's early stops saved against running every trial to the end."""
    unit: str
    steps_per_trial: int       # a full trial's optimizer steps
    planned_steps: int         # every trial run to the end
    steps_saved: int           # the steps the stopped trials did not run
    seconds_saved: float       # GPU-seconds (or CPU-seconds), at each stopped trial's own seconds per step
    stopped: int               # trials stopped by the scheduler

    @property
    def share(self) -> float:
        return self.steps_saved / self.planned_steps if self.planned_steps else 0.0

    @property
    def hours_saved(self) -> float:
        return self.seconds_saved / 3600

    def line(self) -> str:
        return (f"early stopping:  saved {self.steps_saved} of {self.planned_steps} steps ({self.share:.1%}), "
                f"about {_hours(self.hours_saved)} {self.unit}-hours")


def early_stopping_savings(records: list[TrialRecord], steps_per_trial: int, resources: dict) -> EarlyStopping:
    """For each trial the scheduler stopped: the full trial's steps minus the steps it ran (its last report's
    `step`), and their time at the pace of the trials that ran to the end (the median of their seconds per step):
    a stopped trial's own pace counts its start-up (loading, the untrained evaluation) over a few steps, and would
    price the steps it never ran far above what they cost. Before any trial finished, its own pace it is."""
    unit, per_trial = _unit(resources)
    finished = [r.seconds / r.steps for r in records if r.status is TrialStatus.FINISHED and r.steps > 0]
    full_pace = statistics.median(finished) if finished else None
    steps_saved, seconds_saved, stopped = 0, 0.0, 0
    for record in records:
        if record.status is not TrialStatus.STOPPED:
            continue
        stopped += 1
        left = max(0, steps_per_trial - record.steps)
        steps_saved += left
        pace = full_pace if full_pace is not None else (record.seconds / record.steps if record.steps else 0.0)
        seconds_saved += left * pace * per_trial
    return EarlyStopping(unit, steps_per_trial, steps_per_trial * len(records), steps_saved, seconds_saved,
                         stopped)


@dataclass(frozen=True)
class StudyReport:
    """What mattered: the summary's importances, compute and early-stopping lines, and the plots drawn."""
    importances: Importances
    compute: Compute
    early_stopping: EarlyStopping
    plots: list[str] = field(default_factory=list)

    def lines(self, stored_study: bool = False) -> list[str]:
        """stored_study: the sweep kept its Optuna study (--study), which optuna-dashboard opens."""
        return [*self.importances.lines(stored_study), self.compute.line(), self.early_stopping.line()]

    def record(self) -> dict:
        """Plain values, for W&B's summary run."""
        stopping = self.early_stopping
        return {"param_importances": dict(self.importances.values),
                "param_importances_trials": self.importances.trials,
                f"{self.compute.unit.lower()}_hours": self.compute.hours,
                "early_stopping_steps_saved": stopping.steps_saved,
                "early_stopping_planned_steps": stopping.planned_steps,
                "early_stopping_share_saved": stopping.share,
                f"early_stopping_{stopping.unit.lower()}_hours_saved": stopping.hours_saved}


def importances_figure(importances: Importances) -> Figure:
    """Horizontal bars, the most important hyperparameter on top, each labelled with its share."""
    figure = new_figure(7, 3.5)
    axes = figure.add_subplot()
    names = list(importances.values)[::-1]
    shares = [importances.values[name] for name in names]
    bars = axes.barh([LABELS.get(name, name) for name in names], shares, color="tab:blue")
    axes.bar_label(bars, labels=[f"{share:.2f}" for share in shares], padding=3)
    axes.set_xlim(0, max([1.0, *shares]) * 1.12)
    axes.set_xlabel("share of the best eval loss's variance (fANOVA)")
    axes.grid(True, axis="x", alpha=0.3)
    axes.set_title(f"Hyperparameter importances ({importances.trials} trials)")
    return figure


def _axis_ticks(name: str, values: list[float]) -> list[float]:
    distinct = sorted(set(values))
    if name in ("r", "alpha") or len(distinct) <= 5:
        return distinct
    if name == "learning_rate":
        low, high = math.log10(distinct[0]), math.log10(distinct[-1])
        return [10 ** (low + (high - low) * i / 4) for i in range(5)]
    return [distinct[0] + (distinct[-1] - distinct[0]) * i / 4 for i in range(5)]


def _tick_label(name: str, value: float) -> str:
    if name == "learning_rate":
        return f"{value:.1e}"
    if name in ("r", "alpha"):
        return f"{value:g}"
    return f"{value:.3f}"


def parallel_coordinates_figure(records: list[TrialRecord]) -> Figure:
    """Every trial as a line across learning rate (log axis), r and alpha (log2 axes) and its best eval loss,
    coloured by that loss; a trial without a loss (failed, out of memory) is a grey dotted line over the
    hyperparameters only. Solid lines ran to the end, dashed ones were stopped early. The untrained model's loss
    is marked on the loss axis (which stretches to hold it), so a trial's height there reads against it."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    chosen = [r for r in records if r.hyperparameters is not None]
    columns = [*NAMES, "best_eval_loss"]
    values = {name: [float(getattr(r.hyperparameters, name)) for r in chosen] for name in NAMES}
    values["best_eval_loss"] = [r.best_eval_loss for r in chosen if math.isfinite(r.best_eval_loss)]
    base = next((r.base_eval_loss for r in records if math.isfinite(r.base_eval_loss)), math.nan)
    losses = list(values["best_eval_loss"])  # the colours: the trials' losses only
    if math.isfinite(base) and losses:
        values["best_eval_loss"].append(base)
    scale = {"learning_rate": math.log10, "r": math.log2, "alpha": math.log2, "best_eval_loss": float}

    def position(name: str, value: float) -> float:
        """A value's height on its axis, 0 (lowest of the sweep) to 1 (highest); 0.5 where all are equal."""
        seen = [scale[name](v) for v in values[name] if v > 0 or name == "best_eval_loss"]
        low, high = min(seen), max(seen)
        return 0.5 if high == low else (scale[name](value) - low) / (high - low)

    figure = new_figure(11, 5.5)
    axes = figure.add_subplot()
    norm = Normalize(min(losses), max(losses)) if losses else Normalize(0, 1)
    cmap = colormaps["viridis"]
    best = min((r for r in chosen if math.isfinite(r.best_eval_loss)), key=lambda r: r.best_eval_loss, default=None)
    for record in chosen:
        heights = [position(name, float(getattr(record.hyperparameters, name))) for name in NAMES]
        if not math.isfinite(record.best_eval_loss):
            axes.plot(range(len(NAMES)), heights, color="grey", linestyle=":", linewidth=1.2, alpha=0.8)
            continue
        heights.append(position("best_eval_loss", record.best_eval_loss))
        axes.plot(range(len(columns)), heights, color=cmap(norm(record.best_eval_loss)),
                  linestyle="-" if record.status is TrialStatus.FINISHED else "--",
                  linewidth=3.5 if record is best else 1.8, alpha=1.0 if record is best else 0.8,
                  zorder=3 if record is best else 2)
    for x, name in enumerate(columns):
        axes.axvline(x, color="black", linewidth=1)
        if not values[name]:
            continue
        # the untrained loss is labelled apart (in red), not as one of the trials' ticks
        for tick in _axis_ticks(name, losses if name == "best_eval_loss" else values[name]):
            axes.text(x - 0.03, position(name, tick), _tick_label(name, tick), ha="right", va="center",
                      fontsize="small", zorder=5,
                      bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1})
    if math.isfinite(base) and losses:
        loss_axis, height = len(NAMES), position("best_eval_loss", base)
        axes.plot([loss_axis, loss_axis + 0.12], [height, height], color="red", linestyle="-.", linewidth=2.5,
                  zorder=6)
        axes.text(loss_axis + 0.14, height, f"untrained\n{base:.4f}", ha="left", va="center", fontsize="small",
                  color="red", zorder=6)
    axes.set_xticks(range(len(columns)), ["learning rate (log)", "r (log2)", "alpha (log2)", "best eval loss"])
    axes.set_xlim(-0.35, len(columns) - 0.75)
    axes.set_ylim(-0.05, 1.05)
    axes.set_yticks([])
    for side in ("left", "right", "top"):
        axes.spines[side].set_visible(False)
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="best eval loss")
    handles = [Line2D([], [], color="black", linestyle="-", label="ran to the end"),
               Line2D([], [], color="black", linestyle="--", label="stopped early"),
               Line2D([], [], color="grey", linestyle=":", label="no eval loss (failed, out of memory)"),
               Line2D([], [], color="black", linewidth=3.5, label="best"),
               *([Line2D([], [], color="red", linestyle="-.", linewidth=2.5, label="untrained model's loss")]
                 if math.isfinite(base) and losses else [])]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    axes.set_title(f"Every trial's hyperparameters and best eval loss ({len(chosen)} trials)")
    return figure


def write_study_plots(importances: Importances, records: list[TrialRecord], out_dir: str | Path) -> list[Path]:
    """param_importances.png (when importances were computed) and parallel_coordinates.png (when any trial has
    hyperparameters) in out_dir; their paths."""
    out = Path(out_dir)
    written = []
    if importances.values:
        out.mkdir(parents=True, exist_ok=True)
        importances_figure(importances).savefig(out / IMPORTANCES_PNG, format="png")
        written.append(out / IMPORTANCES_PNG)
    if any(r.hyperparameters is not None for r in records):
        out.mkdir(parents=True, exist_ok=True)
        parallel_coordinates_figure(records).savefig(out / PARALLEL_COORDINATES_PNG, format="png")
        written.append(out / PARALLEL_COORDINATES_PNG)
    return written


def study_report(records: list[TrialRecord], resources: dict, steps_per_trial: int, plots_dir: str | Path,
                 distributions: dict | None = None, seed: int = 0) -> StudyReport:
    """The end of a sweep: importances, compute spent, early-stopping savings, and their plots in plots_dir."""
    importances = param_importances(records, distributions, seed)
    plots = write_study_plots(importances, records, plots_dir)
    return StudyReport(importances, compute_spent(records, resources),
                       early_stopping_savings(records, steps_per_trial, resources), [str(p) for p in plots])
