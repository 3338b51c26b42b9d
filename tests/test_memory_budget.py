"""The memory a trial has: GPUs read with nvidia-smi (never torch on the driver), or a share of a node's memory."""

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
