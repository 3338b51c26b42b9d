"""--storage_path s3://... against a real S3-compatible server, and spot preemption, on a two-node cluster.

The S3 server is moto's server mode (`moto_server`, from the dev extras), started here on 127.0.0.1 with its IAM
authentication on: every request must be signed with an access key moto issued, so a missing or wrong credential
really fails, as on AWS. Clients find it the standard way: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION in the environment of the driver and of both Ray nodes (started by
`ray start` here, tests/ray_nodes.py); nothing passes them to the product any other way.
"""

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytest.importorskip("moto", reason="moto[server] is not installed (pip install -e '.[dev]' installs it)")
pytest.importorskip("flask", reason="moto's server mode is not installed (pip install 'moto[server]')")

import orchestrator.ray_start  # noqa: E402
from orchestrator.run import main  # noqa: E402
from tests.conftest import own_stderr  # noqa: E402
from tests.hub_server import local_hub  # noqa: E402,F401  (the fixture)
from tests.ray_nodes import RAY, Cluster, free_port  # noqa: E402
from tests.polling import wait_for  # noqa: E402
from tests.tune_results import checkpoint_registered, reports, staged_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUCKET = "sweeps-bucket"
GRID = "sampler: grid\nspace:\n  learning_rate: [1.0e-3, 2.0e-4]\n  r: [8]\n  alpha: [16]\n"
EVAL_STEPS = 10  # --eval_steps: a checkpoint every 10 optimizer steps, every report a full evaluation
RUN = uuid.uuid4().hex[:6]  # experiment names of this run: Ray's session folders on this machine outlive a run


class S3:
    """The moto server, the IAM key it issued, and a view of the bucket through pyarrow (as the product reads it)."""

    def __init__(self, endpoint: str, key_id: str, secret: str):
        self.endpoint, self.key_id, self.secret = endpoint, key_id, secret
        # only these reach the product, and only through the environment; ~/.aws of this machine is kept out
        self.env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                    "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """Every object under `prefix` of the bucket, by key."""
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri(f"s3://{BUCKET}")
        listing = fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{prefix}".rstrip("/"), recursive=True,
                                                           allow_not_found=True))
        found = {}
        for info in listing:
            if info.type == pyarrow.fs.FileType.File:
                with fs.open_input_stream(info.path) as stream:
                    found[info.path[len(root) + 1:]] = stream.readall()
        return found


@pytest.fixture(scope="module")
def s3():
    """moto_server with IAM on: its first three requests (unsigned) make a user, its policy and its access key;
    from then on every request must carry a valid signature. The module's process gets the key in its environment,
    as a miner's shell would."""
    import boto3

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for("moto_server's first answer", lambda: urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5), 60,
                 interval=0.2, process=server)
        bootstrap = {"endpoint_url": endpoint, "region_name": "us-east-1",
                     "aws_access_key_id": "AKIABOOTSTRAPBOOTSTR", "aws_secret_access_key": "bootstrap"}
        iam = boto3.client("iam", **bootstrap)
        iam.create_user(UserName="miner")
        iam.put_user_policy(UserName="miner", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="miner")["AccessKey"]
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                     aws_secret_access_key=key["SecretAccessKey"]).create_bucket(Bucket=BUCKET)
        store = S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        with pytest.MonkeyPatch.context() as patch:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
                patch.delenv(name, raising=False)
            for name, value in store.env.items():
                patch.setenv(name, value)
            yield store
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    root = tmp_path_factory.mktemp("s3-cluster")
    env = {**os.environ, **s3.env, "RAY_AUTH_MODE": "token", "RAY_health_check_period_ms": "1000",
           "RAY_health_check_failure_threshold": "3", "LORA_SWEEP_CACHE": str(root / "cache"),
           "LORA_SWEEP_LOCAL_DIR": str(root / "local")}
    env.pop("RAY_ADDRESS", None)
    nodes = Cluster(env)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


def sweep_argv(cluster, tmp_path, name: str, *extra: str) -> list[str]:
    (tmp_path / "grid.yaml").write_text(GRID)
    return [sys.executable, "-m", "orchestrator.run", "--address", cluster.address, "--search",
            str(tmp_path / "grid.yaml"), "--scheduler", "fifo", "--num_epochs", "3", "--eval_steps", str(EVAL_STEPS),
            "--storage_path", f"s3://{BUCKET}/sweeps", "--experiment_name", name, *extra]


def start_driver(cluster, tmp_path, name: str, log_path: Path, max_failures: int) -> subprocess.Popen:
    """The sweep's driver in the background, in a session of its own (so it can be killed alone), logging to log_path."""
    with open(log_path, "w") as log:
        return subprocess.Popen(sweep_argv(cluster, tmp_path, name, "--max_failures", str(max_failures)),
                                env=cluster.env, cwd=REPO, start_new_session=True, stdout=log,
                                stderr=subprocess.STDOUT, text=True)


def results_in_s3(s3, name: str) -> dict[str, list[dict]]:
    """Each trial's reports, read from its result.json in the bucket."""
    objects = s3.objects(f"sweeps/{name}")
    return {key.split("/")[-2]: [json.loads(line) for line in data.decode().splitlines() if line.strip()]
            for key, data in objects.items() if key.endswith("/result.json")}


def terminated_in_s3_snapshot(s3, name: str) -> set[str]:
    """The trials Tune's latest snapshot in the bucket records as finished: what a `--resume` restores as done. (A
    result.json may hold a trial's last report while the snapshot saved with it still has the trial running; the
    resume then runs the trial's end again from its checkpoint.)"""
    snapshots = sorted((key, data) for key, data in s3.objects(f"sweeps/{name}").items()
                       if key.rsplit("/", 1)[-1].startswith("experiment_state-") and key.endswith(".json"))
    if not snapshots:
        return set()
    trials = json.loads(snapshots[-1][1])["trial_data"]  # named by time: the last is the latest
    return {state["relative_logdir"] for state in map(json.loads, (trial for trial, _ in trials))
            if state["status"] == "TERMINATED"}


# -- bad storage fails in one line, before Ray ------------------------------------------------------------------

def test_storage_that_cannot_be_written_fails_in_one_line_before_ray(s3, tmp_path, capsys, monkeypatch):
    def ray_must_not_start(_config):
        raise AssertionError("Ray started for bad storage")

    monkeypatch.setattr(orchestrator.ray_start, "start_ray", ray_must_not_start)

    def fails(argv, *fragments):
        started = time.time()
        assert main(argv) == 2
        err = own_stderr(capsys)
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert all(f in err for f in fragments), err
        assert s3.secret not in err
        print(err, end="")
        return time.time() - started

    fails(["--storage_path", "s3://no-such-bucket/sweeps"], "cannot be written", "NO_SUCH_BUCKET")
    fails(["--storage_path", f"s3://{s3.key_id}:{s3.secret}@{BUCKET}/sweeps"], "holds credentials")
    fails(["--storage_path", f"s3://{BUCKET}/sweeps?secret_key=x"], "holds the query parameter secret_key")
    fails(["--storage_path", f"s3://{BUCKET}/sweeps", "--resume", "--experiment_name", "nope"],
          "no experiment 'nope' to continue")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    fails(["--storage_path", f"s3://{BUCKET}/sweeps"], "cannot be written", "credentials")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert fails(["--storage_path", f"s3://{BUCKET}/sweeps"], "cannot be written", "credentials") < 60
    monkeypatch.undo()  # the module's credentials again
    assert not s3.objects("sweeps")  # the probes were cleaned up (or never written)


# -- publish_state.json with the experiment in S3 -----------------------------------------------------------------

def test_publish_state_in_s3_is_shared_by_drivers_on_other_machines(s3, local_hub, model_dir, adapter_checkpoint,
                                                                    tmp_path):
    """Drivers on five machines (five local work folders) continue one experiment in S3, each merging the best model
    from its checkpoint in S3: an upload whose commit failed is committed by the next without uploading again, the
    20-minute window holds, the committed model is not published twice, and a damaged state is set aside in S3."""
    import pyarrow.fs
    from ray.tune import Checkpoint

    from publishing.coordinator import PublishCoordinator
    from publishing.publish_state import STATE_FILE
    from publishing.publisher import Candidate, Publisher, PublishTarget
    from publishing.rules import Action
    from publishing.subnet.hub import HubClient
    from publishing.subnet.secrets import Secret
    from tests.in_memory_chain import InMemoryChain
    from tests.miner_identity import HOTKEY, REPO, TOKEN
    from tests.synthetic_clock import Clock

    fs, folder = pyarrow.fs.FileSystem.from_uri(f"s3://{BUCKET}/shared/trial_1/checkpoint_000000")
    pyarrow.fs.copy_files(str(adapter_checkpoint), folder, destination_filesystem=fs)
    checkpoint = Checkpoint(path=folder, filesystem=fs)
    experiment = f"s3://{BUCKET}/shared"
    clock = Clock()
    chain = InMemoryChain(HOTKEY, clock=clock)

    def machine(name: str) -> PublishCoordinator:
        target = PublishTarget(repo_id=REPO, competition_id="m1", threshold=10.0, backoff_s=0.0, upload_attempts=2,
                               commit_attempts=2)
        publisher = Publisher(target, str(model_dir), tmp_path / name, "sweep-in-s3", chain=chain,
                              hub=HubClient(Secret(TOKEN), endpoint=local_hub.url), sleep=lambda s: None)
        return PublishCoordinator(publisher, experiment, clock=clock, background=False)

    def candidate(loss: float, trial: str = "t1") -> Candidate:
        return Candidate(trial_id=trial, step=5, eval_loss=loss, checkpoint=checkpoint,
                         hyperparameters={"learning_rate": 1e-3, "r": 8, "alpha": 16})

    chain.registered.clear()  # the chain refuses the commit for now
    first = machine("a")
    first.offer(candidate(4.0))
    assert first.step().action is Action.RETRY
    assert json.loads(s3.objects("shared")[f"shared/{STATE_FILE}"])["uploaded"] is not None
    assert (tmp_path / "a" / "best_model" / "config.json").is_file() and not (tmp_path / "a" / STATE_FILE).exists()

    chain.registered.add(HOTKEY)
    second = machine("b")
    second.offer(candidate(4.0))
    assert second.step().action is Action.PUBLISH
    assert len(local_hub.commits(REPO)) == 2 and len(chain.history) == 1  # the Hub's first commit, and ours once

    clock.now += 5 * 60
    third = machine("c")
    third.offer(candidate(3.0, "t2"))
    assert third.step().action is Action.WAIT
    clock.now += 20 * 60
    fourth = machine("d")  # the window is open, but the committed model is known, from the state in S3 alone
    fourth.offer(candidate(4.0))
    assert fourth.step().action is Action.SKIP and len(chain.history) == 1

    fs.delete_file(f"{BUCKET}/shared/{STATE_FILE}")
    with fs.open_output_stream(f"{BUCKET}/shared/{STATE_FILE}") as damaged:
        damaged.write(b"{not json")
    fifth = machine("e")
    assert any("set aside as publish_state.json.damaged" in line for line in fifth.lines)
    objects = s3.objects("shared")
    assert objects[f"shared/{STATE_FILE}.damaged"] == b"{not json" and f"shared/{STATE_FILE}" not in objects


# -- a sweep in S3 on the two-node cluster ----------------------------------------------------------------------

def on_node(name: str, pids) -> callable:
    """A condition: the id of a trial whose latest report came from one of `pids()` (a node's processes) and whose
    checkpoint the driver holds."""
    def found():
        for result in staged_results(name):
            rows = reports(result)
            if checkpoint_registered(rows) and rows[-1]["pid"] in pids():
                return result.parent.name
        return None
    return found


def staged_rows(name: str, trial: str) -> list[dict]:
    return next((reports(r) for r in staged_results(name) if r.parent.name == trial), [])


def secret_free(s3, *texts: str) -> None:
    """The secret key is in no object of the bucket (checkpoints, results, trial configs, state, plots) and in no
    text given (the driver's output, local files)."""
    for key, data in s3.objects().items():
        assert s3.secret.encode() not in data, key
    for text in texts:
        assert s3.secret not in text


def session_logs(name: str) -> str:
    """The Ray session's logs of the cluster that ran experiment `name` (every node's, on this machine)."""
    [staged] = {p.parents[5] for p in staged_results(name)}  # session_x/artifacts/<ts>/<name>/driver_artifacts/<trial>
    text = []
    for path in (staged / "logs").rglob("*"):
        if path.is_file() and path.stat().st_size < 20_000_000:
            text.append(path.read_text(errors="replace"))
    return "".join(text)


@pytest.mark.cluster
def test_a_sweep_in_s3_survives_a_lost_worker_node_and_a_lost_driver(s3, cluster, tmp_path):
    """Checkpoints and results go to S3; a worker node killed without notice has its trial resumed on the survivor
    from its checkpoint in S3; the driver killed, a bare --resume finds the unfinished sweep in S3 and finishes it;
    the best checkpoint (in S3) is merged into a local folder and packaged offline; nothing holds the secret key."""
    cluster.ensure_worker()
    name = f"lost-nodes-{RUN}"
    first_log = tmp_path / "driver.log"
    driver = start_driver(cluster, tmp_path, name, first_log, max_failures=1)
    try:
        victim = wait_for("a report from the worker node", on_node(name, cluster.worker_pids), 300, interval=0.3,
                          process=driver)
        checkpoints = [k for k in s3.objects(f"sweeps/{name}/{victim}") if "/checkpoint_" in k]
        assert any(k.endswith("/adapter_model.safetensors") for k in checkpoints), checkpoints  # uploaded by the worker
        first, dead = staged_rows(name, victim), cluster.worker_pids()
        cluster.kill_worker()  # without notice
        # (Tune rewrites a restored trial's result.json, so its new attempt is told apart by the process)
        again = wait_for("the lost trial's restart on the head node",
                         lambda: [r for r in staged_rows(name, victim) if r["pid"] not in dead], 400, interval=0.3,
                         process=driver)
        # it continued from a checkpoint of the first attempt (read from S3), not from scratch
        assert EVAL_STEPS < again[0]["step"] <= first[-1]["step"] + EVAL_STEPS
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # now the driver dies too (the head node lives on)
        driver.wait()
    # a handled fault reads as handled: one line, not Tune's traceback of the dead actor
    killed = first_log.read_text()
    assert re.search(rf"trial {victim.split('_')[1]} failed at step \d+ \(.*\); Tune resumes it from its checkpoint at "
                     r"step \d+", killed), killed[-3000:]
    assert "Traceback" not in killed, killed[-3000:]
    before, done = results_in_s3(s3, name), terminated_in_s3_snapshot(s3, name)

    argv = [a for a in sweep_argv(cluster, tmp_path, name) if a not in ("--experiment_name", name)]
    resumed = subprocess.run([*argv, "--resume"], env=cluster.env, cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    experiment = f"s3://{BUCKET}/sweeps/{name}"
    assert f"resuming {experiment}" in resumed.stdout and "=== Sweep summary ===" in resumed.stdout

    after = results_in_s3(s3, name)
    final_step = max(rows[-1]["step"] for rows in after.values())
    assert len(after) == 2 and all(rows[-1]["step"] == final_step for rows in after.values())
    for trial, rows in before.items():  # a trial that had finished was not run again
        if trial in done:
            assert after[trial] == rows

    objects = s3.objects(f"sweeps/{name}")
    marker = json.loads(objects[f"sweeps/{name}/lora_sweep.json"])
    assert marker["status"] == "finished"
    assert f"sweeps/{name}/tuner.pkl" in objects
    trials = list(csv.DictReader(io.StringIO(objects[f"sweeps/{name}/trials.csv"].decode())))
    assert [t["status"] for t in trials] == ["finished", "finished"]
    assert f"sweeps/{name}/plots/eval_loss_curves.png" in objects
    publish = json.loads(objects[f"sweeps/{name}/publish.json"])
    local = Path(cluster.env["LORA_SWEEP_LOCAL_DIR"]) / name
    assert publish["model_dir"] == str(local / "best_model")
    assert f"merged model:    {local / 'best_model'}" in resumed.stdout
    assert f"publish.json:    {experiment}/publish.json" in resumed.stdout
    assert f"trials.csv:      {experiment}/trials.csv" in resumed.stdout
    assert f"plot:            {experiment}/plots/eval_loss_curves.png" in resumed.stdout
    assert (local / "publish.json").is_file()  # beside the local model folder, for publishing.upload

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(local / "best_model", use_safetensors=True)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    local_text = "".join(p.read_text(errors="replace") for p in local.rglob("*.json"))
    secret_free(s3, first_log.read_text(), output, local_text, session_logs(name))


# -- spot preemption: a node drained with notice -----------------------------------------------------------------

@pytest.mark.cluster
def test_a_trial_on_a_node_drained_for_preemption_moves_at_its_checkpoint_without_a_failure(s3, cluster, tmp_path):
    """`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` with a deadline (what a cloud's reclaim notice becomes)
    on the worker while it trains: its trial checkpoints at its next report and continues from that step on the head
    node; with --max_failures 0, a failure counted against it would have ended it. At the deadline the node goes."""
    cluster.ensure_worker()
    name = f"drained-{RUN}"
    log_path = tmp_path / "driver.log"
    driver = start_driver(cluster, tmp_path, name, log_path, max_failures=0)
    try:
        victim = wait_for("a report from the worker node", on_node(name, cluster.worker_pids), 300, interval=0.3,
                          process=driver)
        before_notice = [r["step"] for r in staged_rows(name, victim)]
        deadline_s = 20
        drained = subprocess.run([RAY, "drain-node", "--address", cluster.address, "--node-id",
                                  cluster.worker_node_id(), "--reason", "DRAIN_NODE_REASON_PREEMPTION",
                                  "--reason-message", "spot instance reclaimed",
                                  "--deadline-remaining-seconds", str(deadline_s)],
                                 env=cluster.env, capture_output=True, text=True, timeout=120)
        assert drained.returncode == 0, drained.stdout + drained.stderr
        drained_at = time.time()
        # the trial leaves the worker at its next checkpoint, long before the deadline (Tune records why it ended)
        [staged] = [r.parent for r in staged_results(name) if r.parent.name == victim]
        wait_for("the trial leaving the drained node", lambda: (staged / "error.txt").exists(), deadline_s,
                 interval=0.3, process=driver)
        first = staged_rows(name, victim)  # its attempt on the worker (Tune rewrites the file once it restarts)
        time.sleep(max(0.0, drained_at + deadline_s - time.time()))
        cluster.kill_worker()  # the reclaim, at the deadline
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    output = log_path.read_text()
    assert driver.returncode == 0, output[-4000:]
    assert "(2 ran to the end, 0 stopped early by the scheduler, 0 failed)" in output

    on_the_worker = {r["pid"] for r in first}
    moved = [r for r in results_in_s3(s3, name)[victim] if r["pid"] not in on_the_worker]
    assert moved, "the drained node's trial did not move"
    # nothing was lost: it went on from the checkpoint it saved after the notice, one report after the last one seen
    assert moved[0]["step"] == first[-1]["step"] + EVAL_STEPS and first[-1]["step"] > max(before_notice)
    error = s3.objects(f"sweeps/{name}/{victim}")
    assert any(b"NodePreempted" in data and b"drained for preemption" in data
               for key, data in error.items() if key.endswith("error.txt"))
