"""The Ray dashboard during a sweep, as a browser renders it (headless Chromium, driven over the DevTools protocol).

A one-node cluster of this test's own (`ray start --head`, token authentication on, its own ports and temp dir)
runs the sweep the README's cluster way, as a Ray job: `ray job submit -- python -m orchestrator.run --address auto`.
While the trials train, Chromium logs in through the dashboard's token dialog and the test reads the rendered
pages: the Jobs page and the job's driver log (the progress block), the Actors page (each trial's actor named
`trial <id> lr=... r=... alpha=...`), a trial actor's log (the per-evaluation lines) and the same file in the Logs
viewer. The node's Prometheus export is read too, for the trials' and the driver's gauges the Grafana dashboard
plots. Screenshots go to the test's tmp folder (printed; $LORA_SWEEP_SCREENSHOTS picks another). Runs wherever
Chromium is installed (CI installs it; see .ci/run).
"""

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.polling import wait_for
from tests.ray_nodes import RAY, free_port, head_start_env
from trainables.trial_telemetry import GAUGES, SWEEP_GAUGES, prometheus_names

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")

# Without these, headless Chromium tries to reach Google's services and stalls on a closed network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]
# (a full evaluation reports eval_loss, the whole held-out set's, beside rank_loss; the others rank_loss alone)
EVAL_LINE = re.compile(r"\[trial (\w+)\] lr=\d\.\d\de-\d\d r=\d+ alpha=\d+ step=\d+ (?:eval_loss=\d+\.\d+ )?"
                       r"rank_loss=\d+\.\d+ train_loss=\S+ tokens/s=\d+")
# a running trial's line in the driver's progress block (orchestrator/progress.py)
RUNNING_LINE = re.compile(r"^(\w+) RUNNING lr=\d\.\d\de-\d\d r=\d+ alpha=\d+ step \d+ (?:eval|rank)_loss \d+\.\d{4}",
                          re.M)
# a trial's actor on the Actors page: its repr, then its state
RUNNING_ACTOR = re.compile(r"trial \w+ lr=\d\.\d\de-\d\d r=\d+ alpha=\d+\s+ALIVE")
SUBMISSION_ID = "lora-sweep-dashboard-test"


class Head:
    """A head node of this test's own, so `ray stop` (which stops every Ray here) is never needed: killing its
    `ray start --block` process group ends it; its workers exit with their raylet."""

    def __init__(self, tmp_path: Path):
        self.token = uuid.uuid4().hex
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths are limited
        self.dashboard_port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        # the environment configs/cluster.yaml starts its head with (token authentication; a stopped job's time to
        # save its state), with the token itself
        self.env = {**os.environ, **head_start_env(), "RAY_AUTH_TOKEN": self.token,
                    "LORA_SWEEP_CACHE": str(tmp_path / "cache"),
                    "RAY_metrics_report_interval_ms": "1000"}  # gauges reach the export within a second or two
        self.env.pop("RAY_ADDRESS", None)
        # every port of its own: other Rays on this machine hold the defaults (the agent's 52365, the client's 10001)
        ports = ["--port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--ray-client-server-port",
                 "--runtime-env-agent-port"]
        argv = [RAY, "start", "--head", "--block", "--num-cpus", "2", "--disable-usage-stats",
                "--temp-dir", self.temp_dir, "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(self.dashboard_port), "--metrics-export-port", str(self.metrics_port)]
        for flag in ports:
            argv += [flag, str(free_port())]
        self.log = open(tmp_path / "ray-head.log", "w")
        # the job's driver runs where `ray start` ran: a folder of the test's, not the repo (and its .env)
        self.process = subprocess.Popen(argv, env=self.env, cwd=tmp_path, start_new_session=True, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def get(self, path: str, raw: bool = False):
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
        return body if raw else json.loads(body)

    def stop(self) -> None:
        try:  # the job's driver runs in a process group of its own; its supervisor's watcher also ends it
            request = urllib.request.Request(f"{self.url}/api/jobs/{SUBMISSION_ID}/stop", method="POST",
                                             headers={"Authorization": f"Bearer {self.token}"})
            urllib.request.urlopen(request, timeout=5).close()
        except Exception:  # noqa: BLE001 - no job, or the head is gone already
            pass
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def head(tmp_path):
    node = Head(tmp_path)
    try:
        wait_for("the dashboard", lambda: node.get("/api/authentication_mode")["authentication_mode"] == "token", 90)
        yield node
    finally:
        node.stop()


def submit_sweep(head: Head, storage: Path) -> None:
    """The README's cluster command, with a sweep small enough for a test."""
    entrypoint = [sys.executable, "-m", "orchestrator.run", "--address", "auto", "--experiment_name", "dashboard",
                  # two trials at once (this machine's two CPUs), long enough (10 epochs of the tiny data, ~25 s each)
                  # that the pages catch them running; a second wave would only lengthen the wait for the job's end
                  "--storage_path", str(storage), "--num_samples", "2", "--scheduler", "fifo", "--num_epochs", "10"]
    argv = [RAY, "job", "submit", "--address", head.url, "--submission-id", SUBMISSION_ID, "--no-wait", "--",
            *entrypoint]

    def submitted():
        # right after `ray start` the job agent may not be up yet ("No available agent to submit job")
        done = subprocess.run(argv, env=head.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0 and "already exists" not in done.stderr + done.stdout:
            raise RuntimeError((done.stdout + done.stderr)[-500:])
        return True

    wait_for("the job submission", submitted, 120, interval=2)


def driver_log(head: Head) -> str:
    return head.get(f"/api/jobs/{SUBMISSION_ID}/logs")["logs"]


def trial_actors(head: Head) -> list[dict]:
    """The trials' actors: Ray names each by its repr, `trial <id> lr=... r=... alpha=...`, once it has started."""
    actors = head.get("/api/v0/actors?detail=1&limit=1000")["data"]["result"]["result"]
    return [a for a in actors if (a.get("repr_name") or "").startswith("trial ")]


def actor_stderr(head: Head, actor_id: str) -> str:
    return head.get(f"/api/v0/logs/file?actor_id={actor_id}&suffix=err&lines=1000", raw=True)


def exported_metrics(metrics_port: int, label: str = "trial_id", prefix: str = "ray_lora_trial_") -> dict[str, set]:
    """name -> the values of `label` (trial ids; experiments for the sweep's gauges), from the node's Prometheus
    export."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, set] = {}
    for name, labels in re.findall(rf"^({prefix}\w+)\{{([^}}]*)\}}", text, re.M):
        found.setdefault(name, set()).update(re.findall(rf'{label}="([^"]+)"', labels))
    return found


class Page:
    """One Chromium tab over the DevTools protocol: navigate, read the rendered text, run JS, take screenshots."""

    def __init__(self, ws, shots: Path):
        self.ws, self.shots, self.calls = ws, shots, 0

    async def call(self, method: str, **params) -> dict:
        self.calls += 1
        await self.ws.send_json({"id": self.calls, "method": method, "params": params})
        async for message in self.ws:
            reply = json.loads(message.data)
            if reply.get("id") == self.calls:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
        raise RuntimeError("Chromium closed the DevTools connection")

    async def js(self, expression: str):
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return reply["result"].get("value")

    async def text(self) -> str:
        return await self.js("document.body ? document.body.innerText : ''") or ""

    async def open(self, url: str, *wanted: str, timeout: float = 30) -> str:
        """Navigate, and wait until the rendered page shows every wanted text (the SPA fetches after loading)."""
        await self.call("Page.navigate", url=url)
        deadline = time.time() + timeout
        while True:
            await asyncio.sleep(1)
            text = await self.text()
            if all(w in text for w in wanted):
                return text
            if time.time() > deadline:
                (self.shots / "timeout.txt").write_text(text)
                raise AssertionError(f"{url} never showed {wanted}; its text is in {self.shots / 'timeout.txt'}")

    async def until(self, what: str, expression: str, check=bool, timeout: float = 30, interval: float = 0.2):
        """The value of the JS `expression` once `check` passes it, asked every `interval` s (while the page is between
        two documents, as in a reload, the question fails and is asked again)."""
        deadline, value = time.monotonic() + timeout, None
        while True:
            with contextlib.suppress(RuntimeError):
                value = await self.js(expression)
                if check(value):
                    return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} "
                                     f"(last value: {value!r:.2000})")
            await asyncio.sleep(interval)

    async def screenshot(self, name: str) -> None:
        reply = await self.call("Page.captureScreenshot", format="png")
        (self.shots / name).write_bytes(base64.b64decode(reply["data"]))


async def with_chromium(shots: Path, scenario) -> None:
    profile = tempfile.mkdtemp(prefix="chromium-")  # a fresh profile: no saved state, no first-run prompts
    browser = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        import aiohttp  # the dashboard's own HTTP library, installed with ray[default]

        port_file = Path(profile) / "DevToolsActivePort"
        port = wait_for("Chromium's DevTools port", lambda: port_file.read_text().split()[0], 30, interval=0.2)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                tab = next(t for t in await response.json() if t["type"] == "page")
            async with http.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws, shots)
                await page.call("Page.enable")
                await page.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1,
                                mobile=False)
                await scenario(page)
    finally:
        os.killpg(browser.pid, signal.SIGKILL)
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


# the log viewer renders only the lines in view: scroll its box (and the page) to a line
SCROLL_LOG_TO = """(() => {{
  const box = document.querySelector('div.hljs-light');
  box.scrollIntoView({{block: 'end'}});
  box.scrollTop = box.scrollHeight * {fraction};
  return true; }})()"""
LOG_BOX_TEXT = "document.querySelector('div.hljs-light').innerText"


@pytest.mark.cluster
@pytest.mark.browser
@pytest.mark.timeout(400)
def test_the_dashboard_shows_trial_ids_hyperparameters_and_eval_losses(head, tmp_path):
    shots = Path(os.environ.get("LORA_SWEEP_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    started = time.time()
    submit_sweep(head, tmp_path / "results")

    # the driver prints the dashboard URL and where the token comes from
    log = wait_for("the dashboard line", lambda: (lambda t: "Ray dashboard:" in t and t)(driver_log(head)), 90)
    assert f"Ray dashboard: http://127.0.0.1:{head.dashboard_port}" in log
    assert "ray get-auth-token" in log
    # a trial actor writes one line per evaluation, to its stderr
    actor, line = wait_for("a trial's first evaluation line", lambda: next(
        ((a, m) for a in trial_actors(head) for m in [EVAL_LINE.search(actor_stderr(head, a["actor_id"]))] if m),
        None), 150)
    trial_id = line.group(1)
    print(f"first evaluation {time.time() - started:.0f} s after submission: {line.group(0)}")

    # while it trains, its gauges are in the node's Prometheus export under the names the Grafana dashboard uses
    # CPU trials report no GPU memory and no MFU (no GPU peak to divide by)
    expected = prometheus_names() - {"ray_" + GAUGES["peak_gpu_mem_gb"], "ray_" + GAUGES["mfu"]}
    # (the export refreshes every few seconds: the other trial's gauges may be there before this one's)
    exported = wait_for("the trial gauges in the Prometheus export", lambda: (
        lambda found: set(found) >= expected and any(trial_id in ids for ids in found.values()) and found)(
        exported_metrics(head.metrics_port)), 60)
    assert set(exported) <= prometheus_names()
    assert any(trial_id in ids for ids in exported.values())
    # the driver's own gauges (orchestrator/sweep_metrics.py) reach the same export, tagged by experiment
    sweep_names = prometheus_names(SWEEP_GAUGES.values())
    sweep = wait_for("the sweep gauges in the Prometheus export", lambda: (
        lambda found: set(found) >= sweep_names and found)(
            exported_metrics(head.metrics_port, "experiment", "ray_lora_sweep_")), 60)
    assert all(experiments == {"dashboard"} for experiments in sweep.values()), sweep

    # the driver log holds the progress block: a header, and a line per running trial once it has reported
    log = wait_for("a progress block with a running trial's eval loss", lambda: (
        lambda t: RUNNING_LINE.search(t) and t)(driver_log(head)), 120)
    assert "+----" not in log and "Current best trial" not in log and "Result logdir" not in log
    log_lines = log.splitlines()
    last_block = max(i for i, text in enumerate(log_lines) if RUNNING_LINE.match(text))
    # the trials running now, as Ray names their actors
    running = wait_for("a running trial's named actor", lambda: [
        a["repr_name"] for a in trial_actors(head) if a["state"] == "ALIVE" and re.fullmatch(
            r"trial \w+ lr=\d\.\d\de-\d\d r=\d+ alpha=\d+", a["repr_name"])], 60)

    async def scenario(page: Page) -> None:
        # the token dialog comes first; a user pastes what `ray get-auth-token` prints
        await page.open(head.url + "/#/overview", "Authentication Token Required", "ray get-auth-token")
        await page.screenshot("01-token-dialog.png")
        await page.js("document.querySelector('[role=dialog] input').focus()")
        await page.call("Input.insertText", text=head.token)
        await page.js("window.beforeTheToken = true")  # gone with this document, once the dialog reloads the page
        await page.js("[...document.querySelectorAll('[role=dialog] button')].find(b => /submit/i.test(b.innerText))"
                      ".click()")
        # the dialog posts the token (the dashboard answers with an HttpOnly cookie), then reloads the page
        await page.until("the page the token dialog reloads", "window.beforeTheToken === undefined "
                         "&& document.readyState === 'complete'")
        cookies = (await page.call("Network.getCookies", urls=[head.url]))["cookies"]
        assert any(cookie["value"] == head.token for cookie in cookies), cookies

        # first, while trials still run: the Actors page names each trial's actor by its id and hyperparameters
        text = await page.open(head.url + "/#/actors", running[0])
        deadline = time.time() + 60
        while not RUNNING_ACTOR.search(text) and time.time() < deadline:  # a running trial, not only ended ones
            await asyncio.sleep(2)
            await page.call("Page.reload")
            text = await page.open(head.url + "/#/actors", "Repr")
        await page.screenshot("04-actors.png")
        assert RUNNING_ACTOR.search(text), text
        assert "ImplicitFunc" not in text

        text = await page.open(head.url + "/#/jobs", SUBMISSION_ID, "orchestrator.run")
        assert "--address auto" in text
        await page.screenshot("02-jobs.png")

        await page.open(head.url + f"/#/jobs/{SUBMISSION_ID}", "trials: ")
        await page.js(SCROLL_LOG_TO.format(fraction=max(last_block - 1, 0) / len(log_lines)))
        # the viewer renders the lines scrolled into view
        await page.until("a progress block with a running trial in the driver log's view", LOG_BOX_TEXT,
                         lambda shown: shown and re.search(r"trials: \d+/2 done.* running, \d+ pending · ", shown)
                         and RUNNING_LINE.search(shown))
        await page.screenshot("03-job-driver-log-progress.png")

        text = await page.open(head.url + f"/#/actors/{actor['actor_id']}", "[trial ")
        assert EVAL_LINE.search(text) and f"[trial {trial_id}]" in text, text[-2000:]
        await page.js(SCROLL_LOG_TO.format(fraction=0))
        await page.until("the trial's evaluation lines in the actor log's view", LOG_BOX_TEXT, lambda shown: (
            shown and EVAL_LINE.search(shown) and f"[trial {trial_id}]" in shown))
        await page.screenshot("05-actor-log.png")

        logs = head.get(f"/api/v0/logs?node_id={actor['node_id']}")["data"]["result"]
        err_file = next(f for f in logs["worker_err"] if f.endswith(f"-{actor['pid']}.err"))
        text = await page.open(head.url + f"/#/logs/viewer?nodeId={actor['node_id']}&fileName={err_file}", "[trial ")
        assert EVAL_LINE.search(text), text[-2000:]
        await page.screenshot("06-logs-viewer.png")

    asyncio.run(with_chromium(shots, scenario))
    print(f"screenshots: {shots}")

    # `ray job stop` (SIGTERM to the driver) is Ctrl-C: Tune's state saved, nothing merged or published, the
    # command that continues the sweep in the job's log
    stopping = time.time()
    stopped = subprocess.run([RAY, "job", "stop", "--address", head.url, SUBMISSION_ID], env=head.env,
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    status = wait_for("the job to end", lambda: (lambda s: s in ("SUCCEEDED", "FAILED", "STOPPED") and s)(
        head.get(f"/api/jobs/{SUBMISSION_ID}")["status"]), 60, interval=0.5)
    log = driver_log(head)
    print(f"ray job stop: {status} after {time.time() - stopping:.1f} s")
    assert status == "STOPPED", log[-3000:]
    assert "=== Sweep interrupted ===" in log and "--resume --experiment_name dashboard" in log, log[-3000:]
    assert "=== Sweep summary ===" not in log
    marker = json.loads((tmp_path / "results" / "dashboard" / "lora_sweep.json").read_text())
    assert marker["status"] == "interrupted", marker
    print(f"test body: {time.time() - started:.0f} s")
