"""The GPU benchmark (benchmarks/gpu_throughput.py): its FLOP accounting, the packing it relies on, and one
real timed run of its training step on the CPU. On a CUDA machine, LORA_SWEEP_GPU=1 runs the 1B model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_throughput import (check_packing, flops_per_token_6n, flops_per_token_hw, peak_bf16_flops,
                                       token_weighted_ctx)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_throughput.py"


def test_flops_per_token_follow_the_6n_convention_and_what_a_frozen_base_computes():
    assert flops_per_token_6n(n_base=1000, n_layers=2, d_attn=8, ctx=10) == 6000 + 12 * 2 * 8 * 10
    # LoRA: forward 2N + activation gradients 2N for the frozen base, full 6 N_lora for the adapters
    assert flops_per_token_hw(1000, 10, 2, 8, 10, full_finetune=False, gradient_checkpointing=False) == \
        4000 + 60 + 1920
    assert flops_per_token_hw(1000, 0, 2, 8, 10, full_finetune=True, gradient_checkpointing=False) == 6000 + 1920
    # checkpointing recomputes one forward pass
    assert flops_per_token_hw(1000, 10, 2, 8, 10, full_finetune=False, gradient_checkpointing=True) == \
        4000 + 60 + 1920 + 2 * 1010 + 1920 / 3


def test_context_is_token_weighted_and_cards_map_to_their_peaks():
    assert token_weighted_ctx([10, 30]) == (100 + 900) / 40
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989e12)
    assert peak_bf16_flops("a card nobody lists") is None


def test_a_packed_row_scores_like_its_pairs_run_alone():
    result = check_packing("sdpa", torch.device("cpu"))
    assert result["ok"], result
    assert result["loss_packed"] == pytest.approx(result["loss_separate_token_weighted"], abs=1e-4)
    assert abs(result["loss_packed_without_position_ids_control"] - result["loss_separate_token_weighted"]) > 1e-4


def run_script(*flags) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_timed_run_trains_and_counts_only_real_tokens_on_the_cpu():
    padded = run_script("--model", "tiny", "--steps", "2", "--warmup", "1", "--seq_len", "256", "--batch_size", "2",
                        "--threads", "1", "--no-packing")
    packed = run_script("--model", "tiny", "--steps", "2", "--warmup", "1", "--seq_len", "256", "--batch_size", "2",
                        "--threads", "1", "--packing")
    assert padded["card"] == "cpu" and padded["mfu_6n"] is None  # no peak to divide by on a CPU
    assert padded["finite_losses"] and packed["finite_losses"] and padded["tokens_per_s"] > 0
    assert padded["padding_efficiency"] < 1.0 == packed["padding_efficiency"]
    assert packed["real_tokens_per_step"] == 2 * 256
    assert 0 < packed["params_trainable"] < packed["params_total"]  # LoRA: the base is frozen


def test_the_1b_model_is_1_1b_parameters_without_allocating_them():
    dry = run_script("--model", "1b", "--dry_run")
    assert dry["params_total"] - dry["params_lora"] == 1_100_048_384  # the TinyLlama-1.1B shape


@pytest.mark.skipif(os.environ.get("LORA_SWEEP_GPU") != "1" or not torch.cuda.is_available(),
                    reason="set LORA_SWEEP_GPU=1 on a machine with a CUDA GPU")
def test_the_1b_model_trains_in_bf16_on_the_gpu_and_reports_mfu():
    result = run_script("--model", "1b", "--steps", "5", "--warmup", "2", "--check_packing")
    assert result["packing_check"]["ok"] and result["finite_losses"]
    assert result["dtype"] == "bfloat16" and result["peak_mem_gb"] > 2
    assert result["mfu_6n"] is None or 0 < result["mfu_6n"] < 1
