"""The PublishCoordinator as a named Ray actor on the driver's node, and how the sweep starts it.

The actor's process imports only this module and what it imports (not Ray Tune, which the callback in
publishing.tune_callback needs), so it starts light beside the first trials.

The driver keeps the actor alive: `CoordinatorLink` (one per sweep, in a registry of this process, like the time
budget's clocks) pings it at the sweep's results and, when the actor or its publishing thread has died, starts a new
one from the state file, offers it the candidates the dead one had, and tells the summary when and why. The link holds
the PublishSetup (credentials included) in the driver's memory only: the Tune callback, which Tune saves with the
experiment, finds it by the sweep's id."""

import dataclasses
import functools
import re
import threading
import time
from typing import Callable

from publishing.coordinator import CoordinatorReport, PublishCoordinator, remember
from publishing.merged_model import import_merge_libraries
from publishing.publisher import Candidate
from publishing.setup import PublishSetup
from trainables.errors import one_line

ACTOR_NAME = "PublishCoordinator"
NAMESPACE = "lora-sweep"
CHECK_EVERY_S = 5.0  # the driver pings the coordinator at most this often (at a result; the answer read at a later one)
MAX_RESTARTS = 3     # restarts of the coordinator in one sweep; after them the sweep goes on without publishing
ANSI_COLOR = re.compile(r"\x1b\[[0-9;]*m")


def actor_name(sweep_id: str) -> str:
    return f"{ACTOR_NAME}:{sweep_id}"  # one coordinator per experiment, so sweeps can share a cluster


def start_coordinator(setup: PublishSetup, base_model_dir: str, experiment_dir: str, sweep_id: str,
                      work_dir: str | None = None) -> "CoordinatorLink":
    """Start the coordinator actor and register its link under `sweep_id` (`coordinator_for` finds it; `stop`
    releases it). `experiment_dir` may be an object-storage URI; the merged model then goes to `work_dir`."""
    start = functools.partial(_start_actor, setup, base_model_dir, experiment_dir, sweep_id, work_dir)
    _LINKS[sweep_id] = link = CoordinatorLink(sweep_id, start, offline=setup.target.repo_id is None)
    return link


def coordinator_for(sweep_id: str) -> "CoordinatorLink | None":
    return _LINKS.get(sweep_id)


def _start_actor(setup: PublishSetup, base_model_dir: str, experiment_dir: str, sweep_id: str,
                 work_dir: str | None = None):
    """The actor runs on the driver's node (num_cpus=0: it mostly waits), so the folders it writes are here."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(CoordinatorActor).options(name=actor_name(sweep_id), namespace=NAMESPACE, num_cpus=0,
                                                 scheduling_strategy=here, max_concurrency=2)
    return actor.remote(setup, base_model_dir, experiment_dir, sweep_id, work_dir)


def clock_time(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def death(e: Exception) -> str:
    """Ray's error as one line, without the terminal colors Ray puts in an actor's name."""
    message = ANSI_COLOR.sub("", str(e)).strip()
    why = one_line(f"{type(e).__name__}: {message}") if message else one_line(e)
    return f"the coordinator's actor died by {clock_time(time.time())} ({why})"


class CoordinatorLink:
    """The driver's side of the coordinator actor: offers candidates, checks at each result that the actor and its
    publishing thread live, restarts the actor from its state file when not, and finishes it.

    The check never waits: it reads the answer of the ping it sent earlier, if that has come, and sends the next at
    most every `check_every_s`. A restarted coordinator reads what was published, when, and an upload waiting for its
    commit from the state file (so it publishes nothing twice, nothing worse, nothing inside the 20-minute window);
    what only the dead one's memory held, the candidates, the link offers it again."""

    def __init__(self, sweep_id: str, start: Callable, offline: bool, check_every_s: float = CHECK_EVERY_S,
                 max_restarts: int = MAX_RESTARTS):
        self.sweep_id, self._start, self.offline = sweep_id, start, offline
        self.check_every_s, self.max_restarts = check_every_s, max_restarts
        self.actor = start()
        self.kept: list[Candidate] = []  # each trial's best few, as the coordinator keeps them (see `remember`)
        self.lines: list[str] = []       # the coordinator's lines read so far and the restarts' own, in order
        self.restarts = 0
        self.given_up = False
        self._seen = 0                   # how many of the current actor's lines are in `lines`
        self._ping = None
        self._pinged_at = float("-inf")

    def offer(self, candidate: Candidate) -> None:
        """Fire-and-forget: Tune's loop never waits on publishing."""
        self.kept = remember(self.kept, candidate)
        if not self.given_up:
            self.actor.offer.remote(candidate)

    def check(self, wait_s: float = 0.0) -> str | None:
        """At a result: read the last ping's answer if it has come (waiting up to `wait_s`), restart the actor if it
        or its thread died, and send the next ping when one is due. Returns the restart's line, if any."""
        import ray

        if self.given_up:
            return None
        if self._ping is not None:
            ready, _ = ray.wait([self._ping], timeout=wait_s)
            if not ready:
                return None  # busy (merging, uploading): asked again once it answers
            ping, self._ping = self._ping, None
            try:
                health = ray.get(ping)
            except ray.exceptions.ActorUnavailableError:
                return None  # a passing network fault, not a death; pinged again
            except ray.exceptions.RayActorError as e:
                return self._restart(death(e))
            self.lines += health["lines"]
            self._seen = health["count"]
            if not health["thread_alive"]:
                return self._restart(f"the coordinator's publishing thread ended at {clock_time(health['ended_at'])} "
                                     f"({health['why']})")
        if time.monotonic() - self._pinged_at >= self.check_every_s:
            self._ping, self._pinged_at = self.actor.health.remote(self._seen), time.monotonic()
        return None

    def check_now(self, timeout_s: float = 30.0) -> str | None:
        """A check that waits for its answer (the end of the sweep, tests)."""
        if self._ping is None:
            self._pinged_at = float("-inf")
            self.check()
        return self.check(wait_s=timeout_s)

    def _restart(self, what: str) -> str:
        import ray

        if self.restarts >= self.max_restarts:
            self.given_up = True
            return self._note(f"{what}; not restarted again after {self.restarts} restarts: the sweep goes on, and "
                              "nothing more is published or merged by it")
        ray.kill(self.actor)  # a live actor whose publishing thread died; a dead one: nothing to do
        self.restarts += 1
        try:
            self.actor = self._start_again()
        except Exception as e:  # noqa: BLE001 - Tune's loop must go on; the summary says why publishing stopped
            self.given_up = True
            return self._note(f"{what}; its restart failed ({one_line(e)}): the sweep goes on, and nothing more is "
                              "published or merged by it")
        self._seen, self._ping, self._pinged_at = 0, None, float("-inf")
        for candidate in reversed(self.kept):  # worst first: the best arrives last, as a new best
            self.actor.offer.remote(dataclasses.replace(candidate, reported_at=None))  # no lag: not a new result
        return self._note(f"{what}; restarted from its state file at {clock_time(time.time())}")

    def _start_again(self, attempts: int = 20):
        for attempt in range(attempts):
            try:
                return self._start()
            except ValueError:  # the name of the actor just killed is not free yet
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1)

    def _note(self, line: str) -> str:
        print(f"[publish] {line}", flush=True)
        self.lines.append(line)
        return line

    def finish(self, wait_for_window: bool) -> CoordinatorReport:
        """The coordinator's report at the end of the sweep, after a last check; its lines begin with those of the
        coordinators before a restart and the restarts' own."""
        import ray

        self.check_now()
        while not self.given_up:
            try:
                report = ray.get(self.actor.finish.remote(wait_for_window))
            except ray.exceptions.RayActorError as e:  # died while finishing: a restarted one finishes
                self._restart(death(e))
                continue
            report.lines = self.lines + report.lines[self._seen:]
            return report
        return CoordinatorReport(lines=list(self.lines), offline=self.offline)

    def stop(self) -> None:
        """Kill the actor (its state is on disk; the name is free for the next sweep) and release the link."""
        import ray

        _LINKS.pop(self.sweep_id, None)
        ray.kill(self.actor)


# The coordinators of the sweeps this driver runs, by sweep id.
_LINKS: dict[str, CoordinatorLink] = {}


class CoordinatorActor:
    """Builds the Publisher inside the actor, so its Hub client and chain connection live here only."""

    def __init__(self, setup: PublishSetup, base_model_dir: str, experiment_dir: str, sweep_id: str,
                 work_dir: str | None = None):
        publisher = setup.publisher(base_model_dir, work_dir or experiment_dir, sweep_id)
        self.coordinator = PublishCoordinator(publisher, experiment_dir, gate=setup.gate)
        # Import the merge libraries now, beside the trials' start, so the first good model is published without
        # waiting for them. (Not at a lower priority: the publishing thread would wait on the import lock of a
        # starved thread, and publish late.)
        threading.Thread(target=import_merge_libraries, daemon=True, name="warm-imports").start()

    def offer(self, candidate: Candidate) -> bool:
        return self.coordinator.offer(candidate)

    def health(self, since: int = 0) -> dict:
        return self.coordinator.health(since)

    def finish(self, wait_for_window: bool) -> CoordinatorReport:
        return self.coordinator.finish(wait_for_window)

