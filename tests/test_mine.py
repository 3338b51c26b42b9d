"""`python -m orchestrator.mine`: rounds of sweeps against a simulated rival, on the session's Ray, the in-memory
chain (held by an actor, so the driver and the coordinator share it) and the local Hub."""

import csv
import functools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import mine
from orchestrator.retry import Unreachable, retried
from publishing.subnet.chain import ChainError, Neuron
from publishing.subnet.model_id import ModelId
from tests.hub_server import local_hub  # noqa: F401  (the fixture)
from tests.in_memory_chain import SharedChain, start_shared_chain

REPO = Path(__file__).resolve().parents[1]
OURS, RIVAL = "5MinerHotkeyxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "5RivalHotkeyxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
TOKEN = "hf_test_token"
TINY_ROUNDS = ["--num_samples", "2", "--num_epochs", "1", "--scheduler", "fifo", "--reuse_workers", "--no-dashboard"]


def rows(folder: Path) -> list[dict]:
    return list(csv.DictReader((folder / "rounds.csv").open()))


def trained_briefly(model_dir: Path, out: Path, steps: int = 60) -> Path:
    """The embedded model, fully fine-tuned on the embedded data for a few steps: a rival stronger than a short LoRA
    round from the untrained model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token or tokenizer.unk_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, trust_remote_code=False)
    texts = [f"{p['question']} {p['response']}" for p in map(json.loads, (REPO / "configs/embedded/data.jsonl")
                                                               .read_text().splitlines())]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = tokenizer(texts[(step * 16) % len(texts):][:16], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, out / name)
    return out


def upload(hub_url: str, folder: Path, repo: str, work: Path) -> str:
    from publishing.package import package_model
    from publishing.subnet.hub import HubClient
    from publishing.subnet.secrets import Secret

    commit = HubClient(Secret(TOKEN), endpoint=hub_url).upload(repo, package_model(folder, work), "card", repo)
    namespace, name = repo.split("/")
    return ModelId(namespace, name, commit, "h" * 44, "m1").to_compressed_str()


@pytest.fixture
def rival(local_ray, local_hub, model_dir, tmp_path, monkeypatch):
    """A two-miner subnet: uid 1, the rival (the larger incentive, so the leader), has committed the untrained
    embedded model; the moment we first commit, it answers with a stronger model."""
    import ray

    monkeypatch.setenv("LORA_SWEEP_CACHE", str(model_dir.parent))
    monkeypatch.setenv("HF_ACCESS_TOKEN", TOKEN)
    weak = upload(local_hub.url, model_dir, "rival/weak", tmp_path / "up-weak")
    strong = upload(local_hub.url, trained_briefly(model_dir, tmp_path / "strong"), "rival/strong",
                    tmp_path / "up-strong")
    name = f"shared-chain-{os.getpid()}-{time.monotonic_ns()}"
    holder = start_shared_chain(name, [Neuron(0, OURS, 0.2), Neuron(1, RIVAL, 0.8)], watched=OURS, rival=RIVAL,
                                answer=strong)
    chain = SharedChain(name, RIVAL)
    chain.commit_as(RIVAL, weak)
    yield functools.partial(SharedChain, name, OURS), chain, strong
    ray.kill(holder)


@pytest.mark.slow
def test_three_rounds_follow_the_rival_and_publish_by_the_rules(rival, local_hub, tmp_path, capsys):
    chain_factory, chain, strong = rival
    local_hub.fail_next("model_info", times=1, status=503)  # the Hub is down when round 1 fetches the leader
    local_hub.fail_next("commit", times=1, status=503)      # and again when round 1 first uploads our model
    argv = [*TINY_ROUNDS, "--num_samples", "1", "--rounds", "3", "--require_win", "--hf_repo_id", "miner/mined", "--wallet.name", "cold",
            "--wallet.hotkey", "hot", "--storage_path", str(tmp_path / "runs"), "--experiment_name", "mining"]
    code = mine.main(argv, chain_factory=chain_factory, hub_endpoint=local_hub.url)
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    folder = tmp_path / "runs" / "mining"
    table = rows(folder)
    assert [r["round"] for r in table] == ["1", "2", "3"]
    first, second, third = table

    # round 1: the leader is the only model to start from; our best beats it by epsilon, and is committed
    assert first["start_source"] == "leader" and first["leader_uid"] == "1"
    assert first["published"] == "yes", first["publish_reason"]
    ours = [(hotkey, data) for hotkey, _, data in chain.history() if hotkey == OURS]
    assert len(ours) == 1  # never twice inside 20 minutes, though rounds 2 and 3 made better models
    assert first["publish_reason"] == f"committed {ours[0][1]} at block {chain.read_commitment(OURS).block}"
    # the rival answered our commitment with its stronger model: round 2 switches to it, which scores better
    assert chain.read_commitment(RIVAL).data == strong
    assert second["start_source"] == "leader" and float(second["leader_score"]) < float(second["ours_score"])
    for row in (second, third):
        assert row["published"] == "no" and "20-minute window" in row["publish_reason"], row["publish_reason"]
    # every round starts from the lowest of the scores it measured, on its own samples (its own data seed)
    for row in table:
        scored = [float(row[k]) for k in ("leader_score", "ours_score", "committed_score") if row[k]]
        assert float(row["start_score"]) == min(scored), row
    assert len({r["data_seed"] for r in table}) == 3
    assert third["committed_score"]  # our commitment is no longer our best model: scored apart

    # the outages were retried and said so, in one line each
    assert "retry: fetching the leader's model (uid 1) failed (" in out
    assert "attempt 2 of 5" in out
    failed = [(method, path) for method, path, status in local_hub.request_log if status == 503]
    assert failed[0][1].startswith("/api/models/rival/weak/") and failed[1] == ("POST", "/api/models/miner/mined/"
                                                                                       "commit/main")
    assert len(failed) == 2  # the upload was retried by the publisher, and its commit went through (above)
    # each finished round keeps its best model and summary, not its checkpoints; the rounds are plotted
    for n in (1, 2, 3):
        assert (folder / f"mining.round-00{n}" / "best_model" / "model.safetensors").is_file()
        assert not list((folder / f"mining.round-00{n}").glob("*/checkpoint_*"))
    assert (folder / "rounds.png").stat().st_size > 0
    assert "round 2: starts from the leader (uid 1, " in out
    # each round's progress blocks say which round is in progress (what the job log in the dashboard shows)
    assert re.search(r"^round 2 · trials: \d+/1 done", out, re.MULTILINE), out[-3000:]
    assert TOKEN not in out and TOKEN.encode() not in (folder / "rounds.csv").read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--round_budget", "soon"], "--round_budget"),
    (["--comparison_uid", "3"], "each round compares with the competition's leader"),
    (["--require_win"], "--require_win decides what is published"),
    (["--start", "rival"], "argument --start: invalid choice"),
    (["--num_epochs", "0"], "--num_epochs"),
])
def test_bad_input_is_one_line_and_exit_2_before_anything_runs(argv, message, tmp_path, capsys):
    code = mine.main([*argv, "--storage_path", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_resuming_a_run_that_is_not_there_names_it(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    code = mine.main(["--resume", "--experiment_name", "nope", "--storage_path", str(tmp_path / "runs")])
    assert code == 2 and "--resume: no mining run 'nope'" in capsys.readouterr().err


def test_an_outage_is_retried_with_backoff_and_a_refusal_is_not():
    waits, said, calls = [], [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ChainError("connection refused by ws://node:9944")
        return 42

    assert retried("reading the chain", flaky, sleep=waits.append, say=said.append) == 42
    assert waits == [2.0, 4.0] and len(said) == 2 and "attempt 2 of 5 in 2 s" in said[0]

    def down():
        raise ConnectionError("Hub unreachable")

    with pytest.raises(Unreachable, match="failed 3 times"):
        retried("fetching", down, attempts=3, sleep=waits.append, say=said.append)
    assert said[-1].startswith("retry: fetching failed 3 times")

    def silent():
        raise ConnectionError()  # no message at all

    with pytest.raises(Unreachable):
        retried("reading", silent, attempts=2, sleep=waits.append, say=said.append)
    assert said[-2] == "retry: reading failed (ConnectionError); attempt 2 of 2 in 2 s"
    waits.clear()

    def refused():
        raise ChainError("commitment rate limit: the last one was 3 blocks ago")

    with pytest.raises(ChainError):
        retried("committing", refused, sleep=waits.append, say=said.append)
    assert waits == []  # a refusal is not retried


def readme_mining_block() -> list[str]:
    """The README's offline mining command, as argv after `python -m orchestrator.mine`."""
    import re
    import shlex

    blocks = re.findall(r"```shell\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    line = next(b.strip() for b in blocks if b.startswith(".venv/bin/python -m orchestrator.mine"))
    return shlex.split(line)[3:]


def test_ctrl_c_and_a_killed_driver_are_resumed_and_no_round_is_lost_or_repeated(model_dir, tmp_path, capsys):
    """The README's offline run (no chain, two rounds), in a folder of its own: stopped (`ray job stop`'s SIGTERM,
    which is Ctrl-C) once round 1 is recorded; --resume, stopped again while round 2's sweep trains; --resume,
    killed outright while that sweep trains on; --resume again finishes round 2 from its saved state."""
    env = {**os.environ, "LORA_SWEEP_CACHE": str(model_dir.parent), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    argv = [*readme_mining_block(), "--scheduler", "fifo", "--no-dashboard", "--storage_path", str(tmp_path / "runs"),
            "--experiment_name", "m"]
    assert "--rounds" in argv
    folder = tmp_path / "runs" / "m"

    def start(*more: str, output=subprocess.DEVNULL) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "orchestrator.mine", *argv, *more], cwd=REPO, env=env,
                                stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def wait_until(condition, driver: subprocess.Popen, what: str) -> None:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None and not condition():
            time.sleep(0.1)
        assert condition(), f"{what} did not happen in time"

    def stopped_once(condition, what: str, *more: str) -> str:
        """Start the driver; once `condition` holds, send what `ray job stop` sends a job, which stops it as Ctrl-C
        does (SIGINT: the same handler, see tests/test_stop_signal.py); its output, once it exited 130."""
        driver = start(*more, output=subprocess.PIPE)
        try:
            wait_until(condition, driver, what)
            driver.send_signal(signal.SIGTERM)
            out, _ = driver.communicate(timeout=180)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
        assert driver.returncode == 130, out[-3000:]
        return out

    # round 1 is recorded, round 2 is being prepared
    out = stopped_once(lambda: (folder / "rounds.csv").is_file(), "round 1")
    assert "--experiment_name m --resume" in out and "=== Sweep summary ===" in out  # round 1's, not round 2's
    assert "interrupted between rounds" in out or "interrupted: nothing more is published" in out
    assert json.loads((folder / "mining.json").read_text())["status"] == "interrupted"

    def round_two_reports() -> int:  # whole lines of its trials' result.json (one a report)
        return sum(p.read_text().count("\n") for p in (folder / "m.round-002").glob("*/result.json"))

    # stopped again while round 2's sweep trains: the round's summary and the run's resume command
    out = stopped_once(lambda: round_two_reports() > 0, "round 2's first report", "--resume")
    assert "=== Sweep interrupted ===" in out and "interrupted in round 2" in out, out[-3000:]
    # the summary's "to continue" is the run's command, not the round's own sweep's (orchestrator.run takes no
    # --rounds)
    assert out[out.index("to continue from the last checkpoints:"):].splitlines()[1].strip().startswith(
        "python -m orchestrator.mine ") and "orchestrator.run" not in out[out.index("=== Sweep interrupted ==="):]

    # killed outright while round 2's resumed sweep trains
    reported = round_two_reports()
    driver = start("--resume")
    try:
        wait_until(lambda: round_two_reports() > reported, driver, "round 2's report after its resume")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert [r["round"] for r in rows(folder)] == ["1"]  # round 2 was running: it has no row
    round_two = json.loads((folder / "m.round-002" / "round.json").read_text())

    # (in a process of its own, as a user runs it: a sweep resumed in the test's process once read a finished trial as
    # interrupted, see tests/test_interrupt.py)
    resumed = start("--resume", output=subprocess.PIPE)
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out[-4000:] + "\n".join(Path(p).read_text() for p in folder.glob("*/trials.csv"))
    assert "resume: round 2's sweep was running when it stopped; it resumes" in out
    assert f"round 2: resumes from {round_two['start_source']}" in out
    table = rows(folder)
    assert [r["round"] for r in table] == ["1", "2"]
    assert "round 3" not in out  # --rounds 2: the run ends there
    assert table[1]["data_seed"] == str(round_two["data_seed"]) and table[1]["start_model"] == round_two["start_model"]
    assert all(math.isfinite(float(r["best_score"])) for r in table)
    assert json.loads((folder / "mining.json").read_text())["status"] == "finished"

    # orchestrator.score of round 1's merged model, on round 1's samples (its data seed is the run's, 0), prints the
    # eval loss that round's sweep reported for it
    from orchestrator import score

    assert score.main(["--load_model_dir", str(folder / "m.round-001" / "best_model"), "--seed", "0",
                       "--tokenizer", "model"]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith(str(folder / "m.round-001" / "best_model")))
    assert float(line.split("score ")[1].split()[0]) == pytest.approx(float(table[0]["best_score"]), abs=1e-4)


def test_a_bad_flag_loads_neither_torch_nor_ray():
    script = ("import sys\nfrom orchestrator import mine\nassert mine.main(['--rounds', '0']) == 2\n"
              "print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
