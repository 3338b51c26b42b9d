"""orchestrator.summary as a new user reads it: each fact once, and a publish command that publishes under the rules
the sweep followed."""

import shlex
import shutil

from orchestrator.config import load_config
from orchestrator.summary import manual_upload_command, render_summary
from orchestrator.outcome import SweepOutcome
from orchestrator.trial_records import TrialRecord, TrialStatus
from publishing.coordinator import CoordinatorReport, MergedBest
from publishing.publish_state import PublishedModel
from publishing.upload import build_parser
from trainables.hyperparameters import Hyperparameters

MODEL_DIR = "/runs/e/best_model"


def outcome(report: CoordinatorReport) -> SweepOutcome:
    trial = TrialRecord("a1", Hyperparameters(1e-4, 8, 16), TrialStatus.FINISHED, "", 40, 4.0, 4.0, 10.0, "/runs/e/a1")
    return SweepOutcome("/runs/e", "e", [trial], interrupted=False, best_trial=trial, base_eval_loss=6.0, wall_s=10.0,
                        plots=[], comparison=None, publish=report, trials_csv="/runs/e/trials.csv")


def best() -> MergedBest:
    return MergedBest("a1", 4.0, 40, {"learning_rate": 1e-4, "r": 8, "alpha": 16}, MODEL_DIR, "/runs/e/publish.json")


def test_an_offline_sweep_says_offline_once():
    # the coordinator's own note of the offline package, as it writes it, beside a note the summary must keep
    report = CoordinatorReport(lines=["warning: /runs/e/publish_state.json is damaged (x); it was set aside",
                                      f"offline: prepared {MODEL_DIR} (hash abc=); nothing uploaded or committed"],
                               offline=True, best=best())
    summary = render_summary(outcome(report), load_config([]))
    assert summary.count("offline") == 1, summary
    assert ("publish.json:    /runs/e/publish.json (offline: no --hf_repo_id; nothing uploaded or committed)"
            in summary.splitlines())
    assert f"merged model:    {MODEL_DIR}" in summary.splitlines()
    # what the publisher did that no other line says keeps its own line, under a name
    assert ("publishing:      warning: /runs/e/publish_state.json is damaged (x); it was set aside"
            in summary.splitlines())


def test_a_published_model_is_told_once_and_earlier_events_are_kept():
    published = PublishedModel("me/m:abc:m1", 4.0, block=120)
    report = CoordinatorReport(lines=["uploaded me/m@abcdef12 (eval loss 4.0000)",
                                      "published me/m:abc:m1 at block 120 (eval loss 4.0000)"],
                               offline=False, published=published, best=best())
    lines = render_summary(outcome(report), load_config(["--hf_repo_id", "me/m"])).splitlines()
    assert sum("me/m:abc:m1" in line for line in lines) == 1
    assert "published:       me/m:abc:m1 (eval loss 4.0000, block 120)" in lines
    assert "publishing:      uploaded me/m@abcdef12 (eval loss 4.0000)" in lines


def test_the_publish_command_carries_the_sweeps_competition_and_its_other_publishing_flags(tmp_path):
    competitions = shutil.copy("configs/competitions.yaml", tmp_path / "my competitions.yaml")
    config = load_config(["--competitions_file", str(competitions), "--competition_id", "g1",
                          "--subtensor.network", "test", "--netuid", "99", "--avg_loss_upload_threshold", "3.5"])
    command = manual_upload_command(config, "/runs/my run/best_model")
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "publishing.upload"]
    # the upload's own parser reads it back into exactly the sweep's publishing settings
    parsed = build_parser().parse_args(words[3:])
    assert parsed.load_model_dir == "/runs/my run/best_model"
    assert (parsed.competition_id, parsed.competitions_file) == ("g1", str(competitions))
    assert (parsed.subtensor_network, parsed.netuid, parsed.avg_loss_upload_threshold) == ("test", 99, 3.5)
    assert (parsed.hf_repo_id, parsed.wallet_name, parsed.wallet_hotkey) == ("<namespace/name>", "<coldkey>",
                                                                             "<hotkey>")
    # what the upload derives from that competition itself is left to it
    assert "--publish_min_improvement" not in words and "--use_hotkey_in_hash" not in words
    assert "--no-use_hotkey_in_hash" not in words


def test_the_default_publish_command_is_short_and_names_the_competition():
    assert manual_upload_command(load_config([]), MODEL_DIR) == (
        f"python -m publishing.upload --load_model_dir {MODEL_DIR} --hf_repo_id <namespace/name> "
        "--wallet.name <coldkey> --wallet.hotkey <hotkey> --competition_id m1")
    # competition 4 salts its hash: the upload knows that from the competition, so the flag is not repeated
    assert manual_upload_command(load_config(["--competition_id", "4"]), MODEL_DIR).endswith("--competition_id 4")
    # a sweep that deliberately left the competition's rule is published the same way
    assert manual_upload_command(load_config(["--publish_min_improvement", "0.05"]), MODEL_DIR).endswith(
        "--competition_id m1 --publish_min_improvement 0.05")


def test_the_summary_prints_the_command_with_the_competitions_file(tmp_path):
    competitions = shutil.copy("configs/competitions.yaml", tmp_path / "competitions.yaml")
    config = load_config(["--competitions_file", str(competitions)])
    summary = render_summary(outcome(CoordinatorReport(lines=[], offline=True, best=best())), config)
    [publish] = [line for line in summary.splitlines() if line.startswith("  publish it:")]
    assert publish.endswith(f"--competition_id m1 --competitions_file {competitions}")
