"""The end-of-sweep summary: what a miner reads when the sweep is done."""

from orchestrator.sweep import SweepOutcome


def render_summary(outcome: SweepOutcome) -> str:
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
        f"experiment:      {outcome.experiment_path}",
        f"wall time:       {outcome.wall_s:.0f} s",
    ]
    return "\n".join(lines)
