"""The driver: flags + YAML -> validated config -> prepared inputs -> Ray Tune sweep -> summary.

    python -m orchestrator.run            # the embedded default: an offline sweep on a tiny model
    python -m orchestrator.run --help     # every flag, with its default
"""

import sys

from orchestrator.config import ConfigError, load_config
from orchestrator.experiment import choose_experiment, finished_report
from trainables.compat import MissingInternal
from publishing.subnet.competitions import CompetitionError, competitions_table, load_competitions

INTERRUPTED_EXIT = 130  # the shell's code for a program ended by Ctrl-C
STORAGE_FAILED_EXIT = 1  # the storage filled or failed: the sweep stopped where --resume continues it


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = load_config(argv)
        if config.command.list_competitions:
            try:
                print(competitions_table(load_competitions(config.publishing.competitions_file)))
            except CompetitionError as e:
                raise ConfigError(f"--competitions_file: {e}") from None
            return 0
        # torch, transformers and Optuna are imported only now: --help, --list_competitions and a bad flag never
        # pay for them (a test checks)
        from orchestrator.inputs import (check_address, check_device, check_env_file, check_fused_kernels,
                                         check_publishing, check_tracking, check_training_size, prepare_data,
                                         resolve_model_dir, resolve_opponent, trial_settings)
        from orchestrator.search_space import load_search_space
        from orchestrator.study import choose_study, ranking

        check_env_file(config)
        check_tracking(config)
        check_device(config)
        check_fused_kernels(config)
        check_address(config)
        experiment = choose_experiment(config)
        if experiment.finished:
            print(finished_report(experiment))
            return 0
        space = load_search_space(config.search.search)
        model_dir = resolve_model_dir(config)
        publishing = check_publishing(config, model_dir)  # a model outside the competition fails before data is read
        data = prepare_data(config, model_dir)
        check_training_size(config, data)
        study = (choose_study(config.search.study, config.run.storage_path, model_dir, data, space,
                              config.publishing.competition_id, ranking(config.training))
                 if config.search.study else None)
        settings = trial_settings(config, model_dir)  # the memory plan is run_sweep's, once Ray shows the GPUs
        opponent = resolve_opponent(config)
    except (ConfigError, MissingInternal) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tasks = f" ({', '.join(f'{t.name} {t.stop - t.start}' for t in data.tasks)})" if data.tasks else ""
    print(f"model: {model_dir}\ndata: {len(data.train)} training pairs, {len(data.eval)} held-out eval pairs{tasks}")

    # Ray is imported only now, so bad input never pays for starting it.
    from orchestrator.ray_start import start_ray

    started_ray = False
    try:
        started_ray = start_ray(config)  # the sweep's own modules are imported while Ray starts
        from orchestrator.fault_lines import condense_storage_sync_failures
        from orchestrator.summary import summary_head
        from orchestrator.sweep import run_sweep

        condense_storage_sync_failures()  # Tune's failed uploads to a full storage: one line each, not a traceback

        def merged(outcome) -> None:
            """The best is merged: while the plots and importances are drawn, Ray is shut down (where this driver
            started it: that flushes the workers' last log lines, so the summary is the last thing printed) and
            the summary's first lines are printed."""
            if started_ray:
                shut_down_ray()
            print(summary_head(outcome, config), flush=True)

        outcome = run_sweep(config, space, settings, data, publishing, opponent, experiment=experiment,
                            command=["python", "-m", "orchestrator.run", *argv], study=study, merged=merged)
        if started_ray:
            shut_down_ray()  # an interrupted sweep's workers too (once down, a second call does nothing)
    except (ConfigError, MissingInternal) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: Tune stops without saving its last state
        from orchestrator.summary import resume_command

        print(f"\ninterrupted: nothing was merged or published. To continue:\n  {resume_command(argv, experiment.name)}",
              file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as e:  # a full or unwritable storage is an outcome: one line, and --resume; the rest is raised
        from orchestrator.storage_failure import StorageFailed, storage_failure_of
        from orchestrator.summary import render_storage_failure

        failure = (e.failure if isinstance(e, StorageFailed)
                   else storage_failure_of(experiment, [e]) if isinstance(e, OSError) else None)
        if failure is None:
            raise
        if started_ray:
            shut_down_ray()  # the workers' last log lines come before the error line, not after it
        print(f"error: {render_storage_failure(failure, argv, experiment.name)}", file=sys.stderr)
        return STORAGE_FAILED_EXIT
    from orchestrator.summary import render_interrupted, resume_command, summary_tail

    if outcome.interrupted:
        print(render_interrupted(outcome, resume_command(argv, outcome.experiment_name)))
        return INTERRUPTED_EXIT
    print(summary_tail(outcome, config))
    return 0


def shut_down_ray() -> None:
    import ray

    ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
