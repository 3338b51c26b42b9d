"""The end-of-sweep summary: what a miner reads when the sweep is done."""

import time

from orchestrator.config import SweepConfig
from orchestrator.sweep import SweepOutcome


def manual_upload_command(config: SweepConfig, model_dir: str) -> str:
    return (f"python -m publishing.upload --load_model_dir {model_dir} --hf_repo_id {config.hf_repo_id} "
            f"--wallet.name {config.wallet_name} --wallet.hotkey {config.wallet_hotkey} "
            f"--competition_id {config.competition_id}")


def publish_lines(outcome: SweepOutcome, config: SweepConfig) -> list[str]:
    report = outcome.publish
    lines = [f"  {line}" for line in report["lines"]]
    if report["offline"]:
        reason = "--offline" if config.offline else "no --hf_repo_id"
        lines.append(f"publish.json:    {report['publish_json']} (offline: {reason}; nothing uploaded or committed)")
    else:
        lines.append(f"publish.json:    {report['publish_json']}")
    if report["published"]:
        lines.append(f"published:       {report['published']['model_id']} "
                     f"(eval loss {report['published']['eval_loss']:.4f}, block {report['published']['block']})")
    if report["not_before"]:
        when = time.strftime("%H:%M:%S", time.localtime(report["not_before"]))
        lines.append(f"not yet published: the 20-minute window opens at {when}; then run")
        lines.append(f"  {manual_upload_command(config, outcome.best_model_dir)}")
    return lines


def render_summary(outcome: SweepOutcome, config: SweepConfig) -> str:
    hp = outcome.best_hyperparameters
    gain = 1 - outcome.best_eval_loss / outcome.base_eval_loss if outcome.base_eval_loss else 0.0
    lines = [
        "",
        "=== Sweep summary ===",
        f"trials:          {outcome.num_trials} ({outcome.finished} ran to the end, "
        f"{outcome.stopped_early} stopped early by the scheduler, {outcome.errored} failed)",
        f"best trial:      learning_rate={hp['learning_rate']:.3g}  r={hp['r']}  alpha={hp['alpha']}  (step {outcome.best_step})",
        f"eval loss:       {outcome.best_eval_loss:.4f} best vs {outcome.base_eval_loss:.4f} untrained "
        f"({gain:.1%} lower)",
        f"merged model:    {outcome.best_model_dir}",
        *publish_lines(outcome, config),
        *([f"head-to-head:    {outcome.comparison.line()}",
           f"                 (per-pair losses in {outcome.experiment_path}/comparison.json)"]
          if outcome.comparison else []),
        *(f"plot:            {path}" for path in outcome.plots),
        f"experiment:      {outcome.experiment_path}",
        f"wall time:       {outcome.wall_s:.0f} s",
    ]
    return "\n".join(lines)
