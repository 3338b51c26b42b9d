"""A full disk, or a storage that fails, is an outcome: one line naming the storage and its free space, exit code 1,
the marker `failed` with the reason, Tune's state left whole; freeing space and `--resume` continues the trials from
their checkpoints. The real CLI on a real tmpfs filled while the sweep runs (root only: it mounts one)."""

import errno
import json
import logging
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.config import ConfigError
from orchestrator.experiment import (FAILED, INTERRUPTED, RESERVE, SET_ASIDE_DIR, Experiment, read_marker,
                                     resumable, set_aside_cut_short_state, whole_state, write_marker)
from orchestrator.fault_lines import CondenseStorageSyncFailures
from publishing import storage
from publishing.storage import FULL, READ_ONLY, UNWRITABLE, DiskSpace, storage_errno, storage_failure

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20
ENOSPC_TEXT = "OSError: [Errno 28] No space left on device"


# --- the decision, without any infrastructure -------------------------------------------------------------------------

def test_a_storage_errno_is_found_in_the_error_its_causes_or_its_text():
    assert storage_errno(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
    assert storage_errno(OSError(errno.EDQUOT, "Disk quota exceeded")) == errno.EDQUOT
    # pyarrow's, as Tune's uploads raise it
    assert storage_errno("OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on "
                         "device") == errno.ENOSPC
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError as e:
            raise RuntimeError("saving failed") from e
    except RuntimeError as wrapped:
        assert storage_errno(wrapped) == errno.EROFS
    # a Ray task error: its first line is a header, the trial's OSError further down its text
    assert storage_errno(RuntimeError("ray::lora_trainable.train() (pid=1)\n  File x\nOSError: [Errno 5] "
                                      "Input/output error")) == errno.EIO
    assert storage_errno(EOFError("Ran out of input")) is None
    assert storage_errno(OSError(errno.ECONNREFUSED, "refused")) is None
    assert storage_errno(None) is None


def test_the_storage_is_what_failed_only_on_a_storage_error_or_a_failed_probe():
    space = DiskSpace(free=0, total=50 * MiB)
    # Tune's EOFError (a cut-short error.pkl) says nothing; the probe that hit ENOSPC does
    full = storage_failure("/mnt/x", [EOFError("Ran out of input")], ENOSPC_TEXT, space)
    assert full.kind == FULL
    assert full.describe() == "storage /mnt/x is full (0.0 MiB free of 50.0 MiB)"
    assert full.line("continue with: X") == ("storage /mnt/x is full (0.0 MiB free of 50.0 MiB): free space, then "
                                             "continue with: X")
    # space freed since (the probe writes): the trials' ENOSPC still says what ended the sweep
    trial = RuntimeError("ray::lora_trainable.train() (pid=1)\nOSError: [Errno 28] Error writing bytes to file.")
    assert storage_failure("/mnt/x", [trial], None, DiskSpace(3 * MiB, 50 * MiB)).kind == FULL
    read_only = storage_failure("/mnt/x", [OSError(errno.EROFS, "Read-only file system")], None, None)
    assert read_only.kind == READ_ONLY and "make it writable, then" in read_only.line("continue")
    unreachable = storage_failure("s3://bucket/sweeps", [EOFError()], "OSError: When uploading: connection refused",
                                  None)
    assert unreachable.kind == UNWRITABLE
    assert unreachable.describe() == "storage s3://bucket/sweeps cannot be written (OSError: When uploading: " \
                                     "connection refused)"
    # the sweep's own failure, on a storage that takes writes: not a storage outcome
    assert storage_failure("/mnt/x", [RuntimeError("all 4 trials failed")], None, space) is None
    assert storage_failure("/mnt/x", [], None, None) is None


def test_whole_state_reads_tune_files_without_unpickling():
    state = json.dumps({"trial_data": [], "runner_data": {}}).encode()
    searcher = pickle.dumps({"a": list(range(100))})
    assert whole_state("experiment_state-2024-01-01_00-00-00.json", state)
    assert not whole_state("experiment_state-2024-01-01_00-00-00.json", state[:-3])
    assert not whole_state("experiment_state-2024-01-01_00-00-00.json", b"")
    assert whole_state("searcher-state-2024-01-01_00-00-00.pkl", searcher)
    assert not whole_state("searcher-state-2024-01-01_00-00-00.pkl", searcher[:len(searcher) // 2])
    assert whole_state("search_gen_state-2024-01-01_00-00-00.json", searcher)  # Tune pickles it despite the name
    assert not whole_state("tuner.pkl", b"")


def _tune_session(folder: Path, session: str, cut: bool = False) -> None:
    state = json.dumps({"trial_data": [], "runner_data": {}})
    (folder / f"experiment_state-{session}.json").write_text(state[:10] if cut else state)
    (folder / f"searcher-state-{session}.pkl").write_bytes(pickle.dumps({"session": session}))


def test_a_resume_sets_aside_a_cut_short_session_and_continues_from_the_whole_one_before(tmp_path, capsys):
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    _tune_session(tmp_path, "2024-01-01_00-00-00")
    _tune_session(tmp_path, "2024-01-02_00-00-00", cut=True)
    set_aside_cut_short_state(str(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("experiment_state-*.json")) == ["experiment_state-2024-01-01_00-00-00.json"]
    assert sorted(p.name for p in tmp_path.glob("searcher-state-*.pkl")) == ["searcher-state-2024-01-01_00-00-00.pkl"]
    assert (tmp_path / SET_ASIDE_DIR / "experiment_state-2024-01-02_00-00-00.json").is_file()  # kept, not deleted
    assert "continuing from its earlier state of 2024-01-01_00-00-00" in capsys.readouterr().out
    set_aside_cut_short_state(str(tmp_path))  # whole now: nothing moves


def test_a_resume_with_no_whole_state_fails_in_one_line(tmp_path):
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    _tune_session(tmp_path, "2024-01-01_00-00-00", cut=True)
    with pytest.raises(ConfigError) as failed:
        set_aside_cut_short_state(str(tmp_path))
    assert "experiment_state-2024-01-01_00-00-00.json" in str(failed.value) and "\n" not in str(failed.value)
    assert (tmp_path / "experiment_state-2024-01-01_00-00-00.json").is_file()  # nothing moved when nothing is whole


def test_a_failed_sweep_is_marked_with_its_reason_and_is_resumable(tmp_path):
    experiment = Experiment(str(tmp_path), "full", False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "tuner.pkl").write_bytes(b"x")
    (tmp_path / "full" / "experiment_state-2024-01-01_00-00-00.json").write_text("{}")
    write_marker(experiment, "running", ["python", "-m", "orchestrator.run"])
    assert (tmp_path / "full" / RESERVE).stat().st_size == 4 * MiB  # room to record the end when the disk fills
    write_marker(experiment, FAILED, reason="storage /x is full (0.0 MiB free of 50.0 MiB)")
    marker = read_marker(tmp_path / "full")
    assert marker["status"] == FAILED and marker["reason"].startswith("storage /x is full")
    assert marker["command"] == ["python", "-m", "orchestrator.run"]
    assert not (tmp_path / "full" / RESERVE).exists()  # released when the sweep ends
    assert resumable(tmp_path) == ["full"]
    write_marker(experiment, "running")
    assert "reason" not in read_marker(tmp_path / "full")
    write_marker(experiment, INTERRUPTED)


def test_tunes_failed_upload_is_one_line_not_a_traceback():
    try:
        raise OSError(errno.ENOSPC, "Error writing bytes to file")
    except OSError:
        record = logging.LogRecord("ray.tune.execution.experiment_state", logging.ERROR, "x", 1,
                                   "Saving experiment state to storage at '/x' failed with exception: ", (),
                                   sys.exc_info())
    assert CondenseStorageSyncFailures().filter(record)
    assert record.exc_info is None and record.levelname == "WARNING"
    assert record.getMessage() == ("Tune could not upload the experiment's state to storage: OSError: [Errno 28] "
                                   "Error writing bytes to file")
    synced = logging.LogRecord("ray.train._internal.syncer", logging.WARNING, "x", 1,
                               "Last sync command failed with the following error:\nTraceback (most recent call "
                               "last):\n  File \"x\", line 1\nOSError: [Errno 28] No space left on device\n", (), None)
    assert CondenseStorageSyncFailures().filter(synced)
    assert synced.getMessage().endswith("OSError: [Errno 28] No space left on device")


# --- a real full disk -----------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of its own (so filling it fills nothing else); skipped where one cannot be mounted."""
    def mount(size_mib: int) -> Path:
        folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a small tmpfs needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    mounted: list[Path] = []
    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a filler file until the file system is full."""
    filler = folder / "filler"
    chunk = os.urandom(MiB)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    for size in (64 * 1024, 4096, 1):  # the last pages, too
        try:
            with open(filler, "ab", buffering=0) as f:
                while True:
                    f.write(chunk[:size])
        except OSError:
            pass
    return filler


def test_a_whole_write_on_a_full_disk_leaves_the_old_file_and_no_part_of_the_new(small_disk):
    disk = small_disk(1)
    storage.write_text(disk / "state.json", '{"old": true}')
    with pytest.raises(OSError) as failed:
        storage.write_bytes(disk / "state.json", b"x" * (2 * MiB))
    assert failed.value.errno == errno.ENOSPC
    assert json.loads((disk / "state.json").read_text()) == {"old": True}
    assert sorted(p.name for p in disk.iterdir()) == ["state.json"]  # no temporary file left behind


def checkpoint_written(experiment: Path) -> bool:
    return any(p.stat().st_size > 0 for p in experiment.glob("trial_*/checkpoint_*/adapter_model.safetensors"))


def rows(result_json: Path) -> list[dict]:
    return [json.loads(line) for line in result_json.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_a_full_disk_ends_the_sweep_in_one_line_and_resume_continues_from_the_checkpoints(small_disk):
    disk = small_disk(256)
    # --max_failures as by default: the first attempt the full disk fails stops the sweep, with no restart into it
    argv = ["--num_samples", "2", "--num_epochs", "2", "--scheduler", "fifo",
            "--storage_path", str(disk), "--no-dashboard", "--experiment_name", "full"]
    experiment = disk / "full"
    started = time.monotonic()
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.run", *argv], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not checkpoint_written(experiment) and driver.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert checkpoint_written(experiment), "no checkpoint was written in time"
        filler = fill(disk)  # the disk is full from here: the trials' next checkpoints cannot be written
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
    failed_s = time.monotonic() - started
    assert driver.returncode == 1, out[-3000:] + err[-3000:]
    last = err.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(rf"error: storage {re.escape(str(disk))} is full \(\d+\.\d MiB free of 256\.0 MiB\): free "
                        r"space, then continue with: python -m orchestrator\.run .* --resume --experiment_name full",
                        last), last
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert re.search(r"storage: trial \w+ could not write \(.*No space left on device.*\); stopping the sweep", out), out
    marker = read_marker(experiment)
    assert marker["status"] == FAILED and marker["reason"].startswith(f"storage {disk} is full"), marker
    # Tune's state, its seal and our files: each whole (a resume reads them), no temporary file left
    top = [p for p in experiment.iterdir() if p.is_file() and not p.name.startswith(".validate_storage")]
    for path in top:
        data = path.read_bytes()
        assert data, f"{path.name} is empty"
        if path.name.startswith(("experiment_state", "searcher-state", "search_gen_state", "tuner")):
            assert whole_state(path.name, data), f"{path.name} was cut short"
        elif path.suffix == ".json":
            json.loads(data)
    assert not list(experiment.rglob("*.tmp")) and not (experiment / RESERVE).exists()
    before = {p.parent.name: len(rows(p)) for p in experiment.glob("trial_*/result.json")}

    filler.unlink()  # space freed: continue with the command the line gave
    resumed = subprocess.run([sys.executable, *shlex.split(last.split("continue with: ", 1)[1])[1:]], cwd=REPO,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "=== Sweep summary ===" in resumed.stdout and "Failed to restore" not in resumed.stderr
    assert read_marker(experiment)["status"] == "finished"
    # continued, not started over: a trial restored from its checkpoint, and its reports after the resume go on
    # from the checkpoint's iteration (a trial started over would report training_iteration 1 again)
    # (a trial whose first checkpoint the full disk cut short has none to continue from: it starts over)
    restored = set(re.findall(r"from checkpoint: .*/(trial_[^/]+)/checkpoint_\d+", resumed.stderr))
    assert restored, resumed.stderr[-3000:]
    firsts = {name: rows(experiment / name / "result.json")[before.get(name, 0)]["training_iteration"]
              for name in restored}
    assert all(first > 1 for first in firsts.values()), firsts
    print(f"full disk: failed in {failed_s:.0f} s ({len(err.splitlines())} stderr lines); resumed: {firsts}")


def test_a_trial_the_storage_failed_stops_the_whole_sweep_and_its_own_errors_do_not(tmp_path):
    """StorageWatch reads a failed attempt's error.txt, as Tune leaves it on the driver, and stops the sweep the way
    Tune stops on Ctrl-C (SIGUSR1), rather than restarting each trial into the same full disk."""
    import signal
    from types import SimpleNamespace

    from orchestrator.storage_failure import STORAGE_ERRORS, StorageWatch, storage_error_line

    full = tmp_path / "full.txt"
    full.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                    f"ray.exceptions.RayTaskError(OSError): ray::trial.train()\n{ENOSPC_TEXT}: '/mnt/x/ckpt'\n")
    own = tmp_path / "own.txt"
    own.write_text("Traceback (most recent call last):\nRuntimeError: loss is nan\n")
    earlier = tmp_path / "earlier.txt"  # an earlier attempt's ENOSPC, then this attempt's own error
    earlier.write_text(f"Failure # 1 (occurred at 2026-12-06_10-00-00)\n{full.read_text()}\n"
                       f"Failure # 2 (occurred at 2026-12-06_10-05-00)\n{own.read_text()}\n")
    io = tmp_path / "io.txt"
    io.write_text("OSError: [Errno 5] Input/output error\n")  # may be the trial's own device: not enough to stop
    assert storage_error_line(full.read_text()) == f"{ENOSPC_TEXT}: '/mnt/x/ckpt'"
    assert storage_error_line(own.read_text()) is None and storage_error_line(io.read_text()) is None

    stops = []
    before = signal.signal(signal.SIGUSR1, lambda *_: stops.append("SIGUSR1"))  # Tune's handler, in a sweep
    watch = StorageWatch("sweep-a")
    try:
        for path in (own, io, earlier, None):
            watch.on_trial_recover(0, [], SimpleNamespace(trial_id="t1", error_file=str(path) if path else None))
        assert stops == [] and "sweep-a" not in STORAGE_ERRORS
        watch.on_trial_error(0, [], SimpleNamespace(trial_id="t2", error_file=str(full)))
        watch.on_trial_error(0, [], SimpleNamespace(trial_id="t3", error_file=str(full)))  # stopping already
        assert stops == ["SIGUSR1"] and STORAGE_ERRORS["sweep-a"].startswith(ENOSPC_TEXT)
    finally:
        signal.signal(signal.SIGUSR1, before)
        STORAGE_ERRORS.pop("sweep-a", None)
