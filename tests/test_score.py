"""python -m orchestrator.score (issue 25): any model scored for a competition the validators' way, with the sweep's
own code, offline on the embedded model, the local Hub server and the in-process chain."""

import json
import re
import shutil
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.inputs import prepare_data, trial_settings
from orchestrator.score import main
from publishing.subnet.competitions import COMPETITIONS_FILE
from publishing.subnet.constants import BLOCK_SECONDS
from tests.hub_server import local_hub  # noqa: F401  (the fixture)
from tests.in_memory_chain import chain_with_rival
from trainables.lora_trial import model_pair_losses
from trainables.scoring import competition_score

FIXTURES = Path(__file__).parent / "fixtures" / "reasoning"
TASK_DATA = (f"SYNTHETIC_1_SFT={FIXTURES / 'synthetic_1_sft_rows.jsonl'},"
             f"CODEFORCES_COTS={FIXTURES / 'codeforces_cots_rows.jsonl'}")
SCORE = re.compile(r"^(?P<label>.+): score (?P<score>\d+\.\d{4})", re.MULTILINE)


@pytest.fixture
def embedded_cache(model_dir, monkeypatch):
    """No model flag scores the embedded model: the one the suite already built (its cache root)."""
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(model_dir.parent))


@pytest.fixture(scope="module")
def worse_model(model_dir, tmp_path_factory) -> Path:
    """The embedded model with its output layer scaled up: sharper random guesses, a higher loss on every pair.
    Saved by transformers as safetensors, beside the same tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("worse") / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(folder, safe_serialization=True)
    for path in model_dir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")) or path.suffix == ".jinja":
            shutil.copy2(path, folder / path.name)
    return folder


def scores(out: str) -> dict[str, float]:
    return {m["label"]: float(m["score"]) for m in SCORE.finditer(out)}


def the_verdict(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("verdict: "))


def test_with_no_flags_it_scores_the_embedded_model_on_fresh_samples_that_a_seed_repeats(embedded_cache, capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    seed = re.search(r"fresh: drawn at random; repeat with --seed (\d+)", out).group(1)
    first = scores(out)
    assert list(first) == ["the embedded default model"]
    assert "epsilon: 0.01, constant (competition m1)" in out and "verdict" not in out  # one model: nothing to compare

    assert main(["--seed", seed]) == 0
    again = capsys.readouterr().out
    assert scores(again) == first and "fresh" not in again
    assert main(["--seed", seed]) == 0
    assert capsys.readouterr().out == again  # the same model and seed: the same numbers, to the last digit


def test_the_score_is_the_trials_own_computation(embedded_cache, model_dir, tmp_path, capsys):
    """The sweep draws its eval set (prepare_data) and a worker scores a model (model_pair_losses, as the
    head-to-head runs it) then competition_score: this prints that number."""
    config = load_config(["--seed", "0"])
    data = prepare_data(config, model_dir)
    losses = model_pair_losses(str(model_dir), trial_settings(config, model_dir), data.eval)
    expected = competition_score(losses, data.tasks)[0]

    assert main(["--seed", "0", "--json", str(tmp_path / "scores.json")]) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "scores.json").read_text())
    (model,) = record["models"]
    assert model["score"] == pytest.approx(expected, abs=1e-6)
    assert model["pair_losses"] == pytest.approx(losses, abs=1e-6) and record["samples"] == len(data.eval)
    assert f"the embedded default model: score {expected:.4f}" in out
    assert f"samples: {len(data.eval)} held-out samples of competition m1, seed 0" in out


def test_a_competition_of_tasks_scores_each_task_as_the_sweep_does(model_dir, tmp_path, capsys):
    """Competition 4's weighted reference-loss tasks, over local rows: the same draw as the sweep's eval set, the
    same per-task losses; the tiny model breaks the competition's limits, and the line says so."""
    flags = ["--competition_id", "4", "--tokenizer", "model", "--task_data", TASK_DATA,
             "--eval_samples_per_task", "4", "--seed", "5"]
    config = load_config(flags)
    data = prepare_data(config, model_dir)
    losses = model_pair_losses(str(model_dir), trial_settings(config, model_dir), data.eval)
    expected, per_task = competition_score(losses, data.tasks)

    assert main([*flags, "--load_model_dir", str(model_dir), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    (model,) = json.loads((tmp_path / "s.json").read_text())["models"]
    assert model["score"] == pytest.approx(expected, abs=1e-6)
    assert model["task_losses"] == pytest.approx(per_task, abs=1e-6)
    assert "(SYNTHETIC_1_SFT 4, CODEFORCES_COTS 4)" in out
    assert f"SYNTHETIC_1_SFT {per_task['SYNTHETIC_1_SFT']:.4f}" in out
    assert "validators would reject it: the model has" in out and "under competition 4's" in out
    assert "epsilon: 0.05 for a model committed now (competition 4: 0.05 at a commit, decaying to 0.01" in out


def test_two_models_are_scored_on_the_same_samples_and_the_better_one_wins(model_dir, worse_model, tmp_path,
                                                                           capsys):
    argv = ["--load_model_dir", str(worse_model), "--load_model_dir", str(model_dir), "--tokenizer", "model",
            "--seed", "0", "--json", str(tmp_path / "s.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    found = scores(out)
    assert list(found) == [str(worse_model.resolve()), str(model_dir.resolve())]  # in the order given
    assert found[str(model_dir.resolve())] < found[str(worse_model.resolve())] - 0.5
    assert the_verdict(out).startswith(f"verdict: {model_dir.resolve()} wins under competition m1's rule (win rate")
    assert "all at the same block" in out and "the same block: no epsilon either way" in out
    record = json.loads((tmp_path / "s.json").read_text())
    assert len({len(m["pair_losses"]) for m in record["models"]}) == 1  # the same samples for both
    assert record["verdict"]["winner"] == str(model_dir.resolve())


@pytest.fixture
def rival_on_chain(local_hub, model_dir, tmp_path, monkeypatch):
    """uid 1, the leader, has committed the embedded model for m1 through the local Hub."""
    monkeypatch.setenv("LORA_SWEEP_CACHE", str(tmp_path / "cache"))
    return chain_with_rival(local_hub.url, model_dir, tmp_path)


def test_a_committed_model_keeps_epsilon_against_local_ones(local_hub, rival_on_chain, model_dir, worse_model,
                                                            capsys):
    chain, commit = rival_on_chain
    argv = ["--load_uid", "1", "--load_model_dir", str(model_dir), "--load_best", "--tokenizer", "model",
            "--seed", "0"]
    assert main(argv, chain_factory=lambda: chain, hub_endpoint=local_hub.url) == 0
    out = capsys.readouterr().out
    block = chain.read_commitment("hk1").block
    uid, local, leader = scores(out).items()
    assert uid[0] == f"uid 1 (rival/tiny@{commit[:8]}, block {block:,})"
    assert leader[0] == f"uid 1, the leader (rival/tiny@{commit[:8]}, block {block:,})"
    assert uid[1] == local[1] == leader[1]  # the same weights, fetched from the Hub: the same score
    # the same losses, but the folder counts as committed now: the on-chain model keeps epsilon and wins every pair
    assert f"count as committed now (block {chain.current_block():,}), after every on-chain model" in out
    assert "epsilon: 0.01, constant" in out
    assert re.search(rf"uid 1 \(rival.*\) vs {re.escape(str(model_dir.resolve()))}: (\d+) of \1 pairs to the first, "
                     r"0 to the second \(epsilon 0\.0100 to the earlier commitment, uid 1", out)
    # uid 1 twice (by uid and as the leader): the same model at the same block ties with itself, and the folder loses
    assert the_verdict(out) == (f"verdict: a tie under competition m1's rule: {uid[0]} and {leader[0]} "
                                "(win rate 50.0% each)")


def test_a_decaying_epsilon_is_read_at_the_current_block(local_hub, rival_on_chain, worse_model, tmp_path, capsys):
    chain, _ = rival_on_chain
    competitions = tmp_path / "competitions.yaml"
    competitions.write_text(COMPETITIONS_FILE.read_text().replace(
        "  g1:", "  d1:\n    architecture: LlamaForCausalLM\n    max_parameters: 7516192768\n    tokenizer: x/y\n"
                 "    reward_share: 0.1\n    epsilon: {start: 0.05, end: 0.01, decay_blocks: 100}\n"
                 "    <<: *constraints\n  g1:"))
    chain.commit_as("hk1", chain.read_commitment("hk1").data.replace(":m1", ":d1"))
    start = chain.clock
    chain.clock = lambda: start() + 50 * BLOCK_SECONDS  # 50 blocks later: epsilon halfway down, 0.03
    argv = ["--competitions_file", str(competitions), "--competition_id", "d1", "--load_uid", "1",
            "--load_model_dir", str(worse_model), "--tokenizer", "model", "--seed", "0"]
    assert main(argv, chain_factory=lambda: chain, hub_endpoint=local_hub.url) == 0
    out = capsys.readouterr().out
    assert re.search(r"epsilon at block [\d,]+: 0\.03\d\d against uid 1 \(committed at block", out)
    assert the_verdict(out).startswith("verdict: uid 1")


def bad_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(b"\x80" * 16)
    return folder


@pytest.mark.parametrize("argv, message", [
    (["--competition_id", "zz"], "--competition_id: unknown competition 'zz'"),
    (["--load_model_dir", "{tmp}/missing"], "--load_model_dir {tmp}/missing does not exist"),
    (["--load_model_dir", "{bad}"], "--load_model_dir {bad} has no .safetensors weights"),
    (["--load_repo", "a/b"], "--load_repo needs --download_repo_latest_commit"),
    (["--download_repo_latest_commit", "a" * 40], "pass one commit with each --load_repo"),
    (["--num_samples", "3"], "unrecognized arguments: --num_samples 3"),
    (["--seed", "-1"], "--seed must be between 0 and 2**32 - 1"),
    (["--address", "127.0.0.1:1"], "--address 127.0.0.1:1: nothing answers there"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_model_is_read(argv, message, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, bad=bad_folder(tmp_path) if "{bad}" in a else "") for a in argv]
    # a uid listed first still waits: local folders and flags are checked before the chain or the Hub is read
    code = main(["--load_uid", "1", *argv], chain_factory=lambda: pytest.fail("the chain was read"),
                hub_endpoint="http://127.0.0.1:9")
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert message.format(tmp=tmp_path, bad=tmp_path / "pickled") in captured.err


def test_help_and_bad_flags_load_no_torch_and_a_score_starts_no_ray(model_dir):
    """--help and a bad flag stay light (as the sweep's driver); a whole run scores in this process: Ray is never
    imported, let alone started."""
    import os
    import subprocess
    import sys

    probe = ("import sys\n"
             "from orchestrator.score import main\n"
             "for argv in (['--help'], ['--max_length', 'x'], ['--num_samples', '2']):\n"
             "    try:\n"
             "        main(argv)\n"
             "    except SystemExit:\n"
             "        pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))\n"
             "assert main(['--seed', '0']) == 0\n"
             "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "LORA_SWEEP_CACHE": str(model_dir.parent), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "['torch']" and "[]" in lines, done.stdout[-2000:]
    assert "usage: python -m orchestrator.score" in done.stdout and "the embedded default model: score" in done.stdout


def test_a_sweeps_config_file_chooses_the_model_and_fixes_the_seed(model_dir, tmp_path, capsys):
    """--config: the sweep's own YAML (every sweep key allowed there); its model and seed apply, flags win."""
    config = tmp_path / "sweep.yaml"
    config.write_text(f"seed: 3\nload_model_dir: {model_dir}\ntokenizer: model\nnum_samples: 4\n")
    assert main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "seed 3\n" in out and "fresh" not in out and list(scores(out)) == [str(model_dir.resolve())]
    assert main(["--config", str(config), "--seed", "4"]) == 0
    assert "seed 4\n" in capsys.readouterr().out


def test_a_competition_of_tasks_compares_whole_scores(model_dir, worse_model, tmp_path, capsys):
    """The later validators compare whole task-weighted scores, not pairs; the tiny models pass this competition's
    limits (no parameter floor), so both are compared and the better score wins."""
    competitions = tmp_path / "competitions.yaml"
    competitions.write_text(
        "competitions:\n  r1:\n    architectures: [LlamaForCausalLM]\n    max_parameters: 4000000000\n"
        f"    tokenizer: {model_dir}\n    reward_share: 1.0\n    max_repo_bytes: 16106127360\n"
        "    sequence_length: 2048\n    max_weight_norm: 1000\n    high_norm: 200\n    max_high_norm_share: 0.15\n"
        "    epsilon: {start: 0.05, end: 0.01, decay_blocks: 21600}\n    tasks:\n"
        "      - {name: SYNTHETIC_1_SFT, method: reference_loss, dataset: PrimeIntellect/SYNTHETIC-1-SFT-Data, "
        "weight: 0.25}\n"
        "      - {name: CODEFORCES_COTS, method: reference_loss, dataset: open-r1/codeforces-cots, weight: 0.75}\n")
    argv = ["--competitions_file", str(competitions), "--competition_id", "r1", "--task_data", TASK_DATA,
            "--eval_samples_per_task", "3", "--seed", "2", "--load_model_dir", str(worse_model),
            "--load_model_dir", str(model_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(SYNTHETIC_1_SFT 3, CODEFORCES_COTS 3)" in out and "reject" not in out
    assert (f"{worse_model.resolve()} vs {model_dir.resolve()}: {model_dir.resolve()} wins on the score (the same "
            "block: no epsilon either way)") in out
    assert the_verdict(out).startswith(f"verdict: {model_dir.resolve()} wins under competition r1's rule (win rate "
                                       "100.0%")
