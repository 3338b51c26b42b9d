"""Out of memory is an outcome: the trial ends saying where, its memory is freed, it is not retried, Optuna
records a failure, and the sweep goes on with the other trials."""

import contextlib
import csv
import functools
import gc
import json
import sys
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import orchestrator.run as run
import trainables.lora_trial as lora_trial
from orchestrator.optuna_searcher import TruthfulOptunaSearch
from trainables.lora_trial import TrainingSettings, TrialSettings, train_lora
from trainables.out_of_memory import is_out_of_memory


class RefuseTrainingMatmuls(TorchDispatchMode):
    """While active, the first matrix multiplication of a training forward pass runs out of memory, as a full GPU's
    allocator would refuse its output (evaluation, under no_grad, still runs). The ops go by name: Ray pickles this
    class by value into the trials' workers, and torch.ops does not pickle."""
    MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name() in self.MATMULS and torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test): the allocator refused the "
                                         "first training matmul's output")
        return func(*args, **(kwargs or {}))


def refusing_r16(config, settings, data):
    """lora_trainable, except that a trial at r=16 runs out of memory at its first training step."""
    from trainables.lora_trial import lora_trainable

    with RefuseTrainingMatmuls() if config["r"] == 16 else contextlib.nullcontext():
        lora_trainable(config, settings, data)


def test_out_of_memory_errors_are_recognised_and_others_are_not():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                                         "memory: you tried to allocate 68719476736 bytes"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only the allocators' own errors


def test_a_trial_out_of_memory_reports_where_and_frees_its_model(model_dir, sweep_data, monkeypatch):
    built = []
    real_build = lora_trial.build_lora_model
    monkeypatch.setattr(lora_trial, "build_lora_model", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    settings = TrialSettings(model_dir=str(model_dir), memory_estimate_gb=1.5,
                             training=TrainingSettings(batch_size=8, accumulation_steps=1, eval_steps=5))
    reports = []
    with RefuseTrainingMatmuls():
        train_lora({"learning_rate": 1e-3, "r": 16, "alpha": 16}, settings, sweep_data,
                   lambda metrics, folder: reports.append((metrics, folder)))
    model = weakref.ref(built.pop())
    gc.collect()
    assert model() is None  # nothing holds the model: the next trial on this worker starts clean
    [(metrics, folder)] = reports
    assert folder is None and metrics["eval_loss"] == float("inf") and metrics["step"] == 0
    assert metrics["out_of_memory"].startswith("out of memory at step 1 with ")
    assert "-token micro-batches" in metrics["out_of_memory"] and "the planner estimated 1.5 GB" in metrics["out_of_memory"]
    # another configuration of the same sweep trains as usual
    other = []
    train_lora({"learning_rate": 1e-3, "r": 8, "alpha": 16}, settings, sweep_data, lambda m, f: other.append(m))
    assert other and all("out_of_memory" not in m for m in other)


def test_any_other_error_still_raises(model_dir, sweep_data):
    settings = TrialSettings(model_dir=str(model_dir / "missing"))
    with pytest.raises(OSError):
        train_lora({"learning_rate": 1e-3, "r": 8, "alpha": 16}, settings, sweep_data, lambda m, f: None)


@pytest.mark.slow
def test_the_sweep_goes_on_and_optuna_records_the_failure(local_ray, tmp_path, monkeypatch, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("sampler: grid\nspace:\n  learning_rate: [1.0e-3]\n  r: [8, 16]\n  alpha: [16]\n")
    from ray import cloudpickle

    import orchestrator.sweep as sweep

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    # the driver imports run_sweep from orchestrator.sweep when it runs: its trials run refusing_r16
    monkeypatch.setattr(sweep, "run_sweep", functools.partial(sweep.run_sweep, trial_function=refusing_r16))
    code = run.main(["--search", str(grid), "--scheduler", "fifo", "--num_epochs", "1", "--max_failures", "2",
                     "--storage_path", str(tmp_path), "--experiment_name", "oom", "--no-dashboard"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    summary = out[out.index("=== Sweep summary ==="):]
    assert "1 out of memory" in summary and "0 failed" in summary
    oom_line = next(line for line in summary.splitlines() if line.startswith("out of memory:"))
    assert "r=16" in oom_line and "out of memory at step 1 with" in oom_line
    assert "r=8" in summary.split("best trial:", 1)[1].splitlines()[0]

    rows = {r["r"]: r for r in csv.DictReader((tmp_path / "oom" / "trials.csv").open())}
    assert rows["16"]["status"] == "out of memory" and rows["16"]["reason"].startswith("out of memory at step 1")
    assert rows["8"]["status"] == "finished"
    # not retried: one report, no error file, despite --max_failures 2
    folder = next(p for p in (tmp_path / "oom").iterdir() if p.is_dir() and "r=16" in p.name)
    assert len((folder / "result.json").read_text().splitlines()) == 1 and not (folder / "error.txt").exists()
    assert json.loads((folder / "result.json").read_text())["out_of_memory"] == rows["16"]["reason"]

    searcher = TruthfulOptunaSearch()
    searcher.restore_from_dir(str(tmp_path / "oom"))
    states = {t.params["r"]: t.state.name for t in searcher.study.trials}
    assert states == {8: "COMPLETE", 16: "FAIL"}
