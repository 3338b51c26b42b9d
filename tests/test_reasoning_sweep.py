"""Issue 13, end to end and offline: a sweep for a competition of two reference_loss tasks over local rows in the
later data sets' own schemas, on the embedded model. Trials are scored as the later validator scores a model
(per-task reference loss, weighted), and publish.json carries the competition id and the hotkey-salted hash."""

import json
import math
from pathlib import Path

import bittensor
import torch
from bittensor import wallets
from transformers import AutoModelForCausalLM, AutoTokenizer

from orchestrator.config import load_config
from orchestrator.run import main
from publishing.subnet.model_hash import hash_directory, hash_with_hotkey
from publishing.subnet.model_id import ModelId
from tests.tune_results import trial_results
from tests.validator_reference import validator_reference_loss
from trainables.reasoning_data import codeforces_sample, synthetic_1_sample
from trainables.task_data import draw_task_samples

FIXTURES = Path(__file__).parent / "fixtures" / "reasoning"
SYNTHETIC = FIXTURES / "synthetic_1_sft_rows.jsonl"
CODEFORCES = FIXTURES / "codeforces_cots_rows.jsonl"

COMPETITION = """competitions:
  r1:
    architectures: [LlamaForCausalLM]
    max_parameters: 4000000000
    tokenizer: {tokenizer}
    reward_share: 1.0
    max_repo_bytes: 16106127360
    sequence_length: 2048
    max_weight_norm: 1000
    high_norm: 200
    max_high_norm_share: 0.15
    hash: salted
    epsilon: {{start: 0.05, end: 0.01, decay_blocks: 21600}}
    eval_delay_blocks: 460
    tasks:
      - {{name: SYNTHETIC_1_SFT, method: reference_loss, dataset: PrimeIntellect/SYNTHETIC-1-SFT-Data, weight: 0.25}}
      - {{name: CODEFORCES_COTS, method: reference_loss, dataset: open-r1/codeforces-cots, weight: 0.75}}
"""


def make_wallet(path: Path) -> str:
    """A wallet 'miner' with an unencrypted hotkey 'default'; returns the hotkey's ss58 address."""
    quiet = lambda *_: None  # noqa: E731  (the SDK would print the mnemonics)
    bittensor.Wallet("miner", "default", str(path)).create_new_coldkey(use_password=False, on_mnemonic=quiet)
    wallets.new_hotkey("miner", "default", str(path), on_mnemonic=quiet)
    return wallets.list_wallets_detailed(str(path))[0].hotkeys[0].ss58


def test_a_reasoning_competition_sweeps_offline_scored_and_hashed_as_its_validators_do(local_ray, model_dir,
                                                                                       tmp_path, capsys):
    competitions = tmp_path / "competitions.yaml"
    competitions.write_text(COMPETITION.format(tokenizer=model_dir))  # the competition's tokenizer, a local folder
    hotkey = make_wallet(tmp_path / "wallets")
    argv = ["--competitions_file", str(competitions), "--competition_id", "r1", "--tokenizer", "competition",
            "--task_data", f"SYNTHETIC_1_SFT={SYNTHETIC},CODEFORCES_COTS={CODEFORCES}", "--eval_samples_per_task", "5",
            "--num_samples", "2", "--num_epochs", "1", "--scheduler", "fifo", "--storage_path", str(tmp_path),
            "--experiment_name", "reasoning", "--no-dashboard",
            "--wallet.name", "miner", "--wallet.hotkey", "default", "--wallet.path", str(tmp_path / "wallets")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(SYNTHETIC_1_SFT 5, CODEFORCES_COTS 5)" in out

    # every full evaluation's eval_loss is the weighted mean of its tasks' losses (the reports between full
    # evaluations carry the rank subset's rank_loss only)
    reports = [r for trial in trial_results(tmp_path / "reasoning") for r in trial["reports"] if "eval_loss" in r]
    assert reports
    for r in reports:
        tasks = r["task_losses"]
        assert math.isclose(r["eval_loss"], 0.25 * tasks["SYNTHETIC_1_SFT"] + 0.75 * tasks["CODEFORCES_COTS"])
    summary = out[out.index("=== Sweep summary ==="):]
    assert "task losses:     SYNTHETIC_1_SFT" in summary

    record = json.loads((tmp_path / "reasoning" / "publish.json").read_text())
    merged = Path(record["model_dir"])
    model_id = ModelId.from_compressed_str(record["model_id"])
    assert record["competition_id"] == model_id.competition_id == "r1"
    assert record["hash"] == model_id.hash == hash_with_hotkey(hash_directory(merged), hotkey) != hash_directory(merged)

    # the merged model, scored by a plain re-implementation of the validator's compute_reference_loss on the
    # held-out samples drawn the validator's way, gets the eval loss the sweep reported for it
    seed = load_config(argv).search.seed
    held_out = {name: draw_task_samples([path], parse, 2048, 5, 0, seed, name)[0]
                for name, path, parse in [("SYNTHETIC_1_SFT", SYNTHETIC, synthetic_1_sample),
                                          ("CODEFORCES_COTS", CODEFORCES, codeforces_sample)]}
    model = AutoModelForCausalLM.from_pretrained(merged, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        task_loss = {name: sum(validator_reference_loss(model, tokenizer, q, r) for q, r in samples) / len(samples)
                     for name, samples in held_out.items()}
    expected = 0.25 * task_loss["SYNTHETIC_1_SFT"] + 0.75 * task_loss["CODEFORCES_COTS"]
    assert math.isclose(record["eval_loss"], expected, abs_tol=1e-4), (record["eval_loss"], expected)
