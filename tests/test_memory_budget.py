"""The memory a trial has: GPUs read with nvidia-smi (never torch on the driver), or a share of a node's memory; the
layers the driver then checkpoints; what loading the model costs the host."""

import dataclasses
import math

import pytest

from orchestrator.memory_budget import CUDA_RESERVE_BYTES, cpu_budget, gpu_budget, gpus_here

NVIDIA_SMI = """#!/bin/sh
echo "0, NVIDIA H100 80GB HBM3, 81559, 9.0"
echo "1, NVIDIA A10G, 23028, 8.6"
"""


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    script = tmp_path / "nvidia-smi"
    script.write_text(NVIDIA_SMI)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    return script


def test_visible_gpus_follow_cuda_visible_devices_unless_asked_for_all(fake_nvidia_smi, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert [name for name, _, _ in gpus_here()] == ["NVIDIA H100 80GB HBM3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what Ray sets in a task that asks for no GPU
    assert gpus_here() == [] and len(gpus_here(only_visible=False)) == 2


def test_the_budget_is_the_smallest_gpu_less_the_reserve_or_a_share_of_free_memory(fake_nvidia_smi, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    budget = gpu_budget(gpus_here(), "of the cluster")
    assert budget.bytes == 23028 * 2**20 - CUDA_RESERVE_BYTES and "NVIDIA A10G" in budget.where and budget.bf16
    assert cpu_budget(20 * 10**9, 4, "this machine").bytes == 5 * 10**9


def test_the_driver_checkpoints_the_layers_the_plan_chose_and_says_how_many(model_dir, sweep_data, capsys):
    """A budget that fits the embedded model with one of its two layers checkpointed, and not with none."""
    from orchestrator.config import load_config
    from orchestrator.inputs import trial_settings
    from orchestrator.memory_budget import Budget, largest_r, plan_trial_memory
    from orchestrator.search_space import load_search_space
    from trainables.lora_trial import micro_batch_shape, pair_lengths
    from trainables.memory_plan import ModelShape, estimate_peak, margin_bytes
    from transformers import AutoConfig

    config, space = load_config([]), load_search_space("default")
    settings = trial_settings(config, model_dir)
    shape = ModelShape.from_config(AutoConfig.from_pretrained(model_dir, trust_remote_code=False))
    rows, width = micro_batch_shape(settings.training, pair_lengths(sweep_data.train), "sdpa")
    needs = [estimate_peak(shape, weight_bytes=4, lora_r=largest_r(space), tokens=rows * width, row_tokens=width,
                           checkpointed_layers=k, device_type="cpu").total_bytes for k in range(shape.layers + 1)]
    needs = [n + margin_bytes(n) for n in needs]
    assert shape.layers == 2 and needs[1] < needs[0]

    planned = plan_trial_memory(config, settings, space, sweep_data, Budget("cpu", needs[1], "a test budget"))
    assert planned.checkpointed_layers == 1 and planned.memory_estimate_gb > 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("memory plan: ") and line.endswith("a 30% margin; activation checkpointing: 1 of 2 layers")
    on = dataclasses.replace(settings, training=dataclasses.replace(settings.training, gradient_checkpointing="on"))
    assert plan_trial_memory(config, on, space, sweep_data, Budget("cpu", 10**12, "")).checkpointed_layers == 2


def test_loading_straight_onto_the_device_gives_the_same_weights_and_reports_its_cost(model_dir):
    """On the CPU, loading through device_map changes nothing but the path; its load time and host peak are
    measured, and the measurement sees a transient allocation."""
    import mmap
    import time

    import torch

    from trainables.lora_trial import TrialSettings, load_lora_model
    from trainables.model_loading import load_causal_lm, measured_load

    plain = load_causal_lm(model_dir, torch.float32)
    placed, cost = measured_load(lambda: load_causal_lm(model_dir, torch.float32, device=torch.device("cpu")))
    assert plain.state_dict().keys() == placed.state_dict().keys()
    assert all(torch.equal(tensor, placed.state_dict()[name]) for name, tensor in plain.state_dict().items())
    assert {t.device.type for t in [*placed.parameters(), *placed.buffers()]} == {"cpu"}
    assert set(cost.metrics()) == {"load_s", "load_host_peak_mb"}
    assert all(math.isfinite(v) and v >= 0 for v in cost.metrics().values()) and cost.seconds > 0

    model, cost = measured_load(lambda: load_lora_model(TrialSettings(model_dir=str(model_dir), checkpointed_layers=1),
                                                        8, 16, torch.device("cpu")))
    assert [layer.gradient_checkpointing for layer in model.get_base_model().model.layers] == [True, False]
    assert math.isfinite(cost.host_peak_mb) and cost.seconds > 0

    def transient() -> None:  # 128 MiB held for 0.3 s, then freed: only the sampler can see it
        # fresh private pages from the kernel, each written (a tensor may reuse pages the process holds already)
        held = mmap.mmap(-1, 128 * 2**20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for offset in range(0, len(held), mmap.PAGESIZE):
            held[offset] = 1
        time.sleep(0.3)
        held.close()

    assert measured_load(transient)[1].host_peak_mb >= 120
