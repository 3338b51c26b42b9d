"""The end-of-sweep summary: what happened, where everything is, and what to run next."""

import os
import shlex
import time

from orchestrator.config import SweepConfig
from orchestrator.outcome import SweepOutcome
from orchestrator.trial_records import TrialRecord, TrialStatus
from trainables.hyperparameters import Hyperparameters


def manual_upload_command(config: SweepConfig, model_dir: str, experiment_path: str = "") -> str:
    """The publishing.upload command for the merged model, carrying every publishing flag of this sweep that the
    upload takes and would not set the same way by itself (its competition and competitions file always; a network,
    netuid, threshold... where the sweep's differs from the default or from what the competition gives): the model
    is then checked and committed under the rules the sweep followed."""
    import dataclasses

    from publishing import storage
    from publishing.setup import PublishOptions
    from publishing.subnet.competitions import get_competition, owned_settings
    from publishing.upload import REQUIRED, SWEEP_ONLY
    from trainables.documented import flag_name

    options = config.publishing
    # what the upload fills in itself, from the same competition, for a setting left unset
    implied = owned_settings(get_competition(options.competition_id, options.competitions_file))
    placeholders = {"hf_repo_id": "<namespace/name>", "wallet_name": "<coldkey>", "wallet_hotkey": "<hotkey>"}
    words = ["python", "-m", "publishing.upload", "--load_model_dir", model_dir]
    # an experiment in object storage keeps publish_state.json there, not beside the local model folder
    if storage.is_remote(experiment_path):
        words += ["--state_dir", experiment_path]
    always = (*REQUIRED, "competition_id")
    for f in sorted(dataclasses.fields(PublishOptions), key=lambda f: f.name not in REQUIRED):  # required first
        value = getattr(options, f.name)
        if f.name in SWEEP_ONLY or (f.name not in always and value in (f.default, implied.get(f.name, f.default))):
            continue
        if isinstance(value, bool):
            words.append(f"--{'' if value else 'no-'}{flag_name(f)}")
        else:
            words += [f"--{flag_name(f)}", str(value) if value is not None else placeholders.get(f.name, "")]
    # placeholders stay readable (<coldkey>); everything else is quoted for the shell where it must be
    return " ".join(word if word in placeholders.values() else shlex.quote(word) for word in words)


def resume_command(argv: list[str], experiment_name: str) -> str:
    """The exact command that continues this experiment: the same flags, plus --resume and its name."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--experiment_name":
            skip = True
        elif arg not in ("--resume", "--no-resume") and not arg.startswith("--experiment_name="):
            kept.append(arg)
    return shlex.join(["python", "-m", "orchestrator.run", *kept, "--resume", "--experiment_name", experiment_name])


def render_storage_failure(failure, argv: list[str], experiment_name: str) -> str:
    """One line: `storage /mnt/x is full (0.0 MiB free of 50.0 MiB): free space, then continue with: python -m ...`
    (`failure`: a publishing.storage.StorageFailure)."""
    return failure.line(f"continue with: {resume_command(argv, experiment_name)}")


def _hyperparameters(hp: Hyperparameters | dict | None) -> str:
    """A trial record's hyperparameters, or the coordinator's plain dict of the best ones; empty when unknown."""
    if not hp:
        return ""
    return (hp if isinstance(hp, Hyperparameters) else Hyperparameters.from_mapping(hp)).describe()


def trial_counts(outcome: SweepOutcome) -> str:
    interrupted = f", {outcome.interrupted_trials} interrupted" if outcome.interrupted_trials else ""
    out_of_memory = f", {outcome.out_of_memory} out of memory" if outcome.out_of_memory else ""
    budget = f", {outcome.stopped_by_budget} stopped by the time budget" if outcome.stopped_by_budget else ""
    return (f"{outcome.num_trials} ({outcome.finished} ran to the end, {outcome.stopped_early} stopped early by "
            f"the scheduler{budget}{out_of_memory}, {outcome.errored} failed{interrupted})")


def ended_lines(outcome: SweepOutcome) -> list[str]:
    """--time_budget: whether it ended the sweep, when, and what it cost the plan (nothing without a budget)."""
    return [f"ended:           {outcome.time_budget.line()}"] if outcome.time_budget else []


def failure_lines(trials: list[TrialRecord]) -> list[str]:
    labels = {TrialStatus.FAILED: "failed trial:   ", TrialStatus.OUT_OF_MEMORY: "out of memory:  "}
    return [f"{labels[t.status]} {t.trial_id} ({_hyperparameters(t.hyperparameters)}): {t.reason}"
            if t.status is TrialStatus.OUT_OF_MEMORY else
            f"{labels[t.status]} {t.trial_id} ({_hyperparameters(t.hyperparameters)}) at step {t.steps}: {t.reason}"
            for t in trials if t.status in labels]


def publisher_notes(report) -> list[str]:
    """The coordinator's notes on what happened while the sweep ran, less the two that the summary's own lines
    state (printed both ways, they read as two events): its "offline: prepared ..." note (the merged model and
    publish.json lines say it, with the reason) and its note of the final publish (the "published:" line)."""
    restated = ["offline: prepared "] if report.offline else []
    if report.published:
        restated.append(f"published {report.published.model_id} ")
    return [line for line in report.lines if not any(line.startswith(prefix) for prefix in restated)]


def publish_lines(outcome: SweepOutcome, config: SweepConfig) -> list[str]:
    report = outcome.publish
    notes = publisher_notes(report)
    lines = [f"{'publishing:' if i == 0 else '':<17}{note}" for i, note in enumerate(notes)]
    publish_json = report.best.publish_json if report.best else None
    if report.offline:
        reason = "--offline" if config.publishing.offline else "no --hf_repo_id"
        lines.append(f"publish.json:    {publish_json} (offline: {reason}; nothing uploaded or committed)")
    else:
        lines.append(f"publish.json:    {publish_json}")
    if report.published:
        lines.append(f"published:       {report.published.model_id} "
                     f"(eval loss {report.published.eval_loss:.4f}, block {report.published.block})")
    if report.result_lag:
        lines.append(f"coordinator:     {report.result_lag.line()}")
    if report.not_before:
        when = time.strftime("%H:%M:%S", time.localtime(report.not_before))
        lines.append(f"not yet published: the 20-minute window opens at {when}; then run")
        lines.append(f"  {manual_upload_command(config, outcome.best_model_dir, outcome.experiment_path)}")
    return lines


def next_steps(outcome: SweepOutcome, config: SweepConfig) -> list[str]:
    lines = ["next:"]
    if outcome.best_model_dir:
        lines.append(f"  load it:       AutoModelForCausalLM.from_pretrained({outcome.best_model_dir!r}, "
                     "use_safetensors=True)")
        if not outcome.publish.published and not outcome.publish.not_before:
            lines.append(f"  publish it:    {manual_upload_command(config, outcome.best_model_dir, outcome.experiment_path)}")
    if config.tracking.wandb_project and os.environ.get("WANDB_MODE") == "offline":
        lines.append(f"  W&B upload:    wandb sync {outcome.experiment_path}/wandb/offline-run-*")
    return lines if len(lines) > 1 else []


def study_lines(outcome: SweepOutcome) -> list[str]:
    """--study: which study this sweep continued, and where optuna-dashboard opens it."""
    study = outcome.study
    if study is None:
        return []
    dashboard = f"optuna-dashboard {study.where}"
    # quoted: a study's name has spaces (model · competition · digest)
    return [f'study:           "{study.name}" in {study.where}: {study.earlier_trials} earlier trials, '
            f"{outcome.num_trials} from this sweep (open it: {dashboard})"]


def evaluation_lines(trials) -> list[str]:
    """How the trials' time split between training and evaluating (the held-out set is scored while the GPU waits)."""
    from orchestrator.trial_records import eval_share

    evaluating, share = eval_share(trials)
    if share != share:  # NaN: no trial reported its seconds
        return []
    training = sum(t.train_s for t in trials if t.train_s == t.train_s and t.eval_s == t.eval_s)
    return [f"evaluation:      {share:.1%} of the trials' time ({evaluating:.0f} s evaluating, {training:.0f} s "
            f"training; each trial's in trials.csv)"]


def render_summary(outcome: SweepOutcome, config: SweepConfig) -> str:
    return "\n".join([summary_head(outcome, config), summary_tail(outcome, config)])


def summary_head(outcome: SweepOutcome, config: SweepConfig) -> str:
    """The summary's first lines: how the trials ended, the best, the merged model, what was published. Known the
    moment the coordinator has merged, before the plots and importances (summary_tail) are drawn."""
    gain = 1 - outcome.best_eval_loss / outcome.base_eval_loss if outcome.base_eval_loss else 0.0
    best = outcome.best_trial
    lines = [
        "",
        "=== Sweep summary ===",
        f"trials:          {trial_counts(outcome)}",
        *ended_lines(outcome),
        *failure_lines(outcome.trials),
        *evaluation_lines(outcome.trials),
        f"best trial:      {best.trial_id + '  ' if best else ''}{_hyperparameters(outcome.best_hyperparameters)}  "
        f"(step {outcome.best_step})",
        *([f"best trial dir:  {best.folder}"] if best else []),
        *study_lines(outcome),
        f"eval loss:       {outcome.best_eval_loss:.4f} best vs {outcome.base_eval_loss:.4f} untrained "
        f"({gain:.1%} lower)",
        *(["task losses:     " + ", ".join(f"{task} {loss:.4f}" for task, loss in outcome.best_task_losses.items())
           + " (the eval loss is their weighted mean, as validators score)"] if outcome.best_task_losses else []),
        f"merged model:    {outcome.best_model_dir or 'none (no checkpoint was left to merge; see the lines below)'}",
        *publish_lines(outcome, config),
        *([f"head-to-head:    {outcome.comparison.line()}",
           f"                 (per-pair losses in {outcome.experiment_path}/comparison.json)"]
          if outcome.comparison else []),
    ]
    return "\n".join(lines)


def summary_tail(outcome: SweepOutcome, config: SweepConfig) -> str:
    """The rest: what mattered (importances, compute, early stopping), the plots, where everything is, what next."""
    lines = [
        # with --study, why optuna-dashboard's importances can differ
        *(outcome.what_mattered.lines(stored_study=outcome.study is not None) if outcome.what_mattered else []),
        *(f"plot:            {path}" for path in outcome.plots),
        f"trials.csv:      {outcome.trials_csv}",
        f"experiment:      {outcome.experiment_path}",
        f"wall time:       {outcome.wall_s:.0f} s",
        *next_steps(outcome, config),
    ]
    return "\n".join(lines)


def render_interrupted(outcome: SweepOutcome, continue_with: str) -> str:
    """The interrupted sweep's summary, ending with `continue_with`: the command that continues it (the sweep's
    own resume_command; orchestrator.mine's, for a round)."""
    lines = [
        "",
        "=== Sweep interrupted ===",
        f"trials:          {trial_counts(outcome)}",
        *failure_lines(outcome.trials),
        "nothing was merged or published at the end (a half-trained best is not a result)",
        f"trials.csv:      {outcome.trials_csv}",
        f"experiment:      {outcome.experiment_path}",
        "to continue from the last checkpoints:",
        f"  {continue_with}",
    ]
    return "\n".join(lines)
