"""Reading back what Ray Tune wrote about a sweep's trials: each trial's params and reports in the experiment folder
and, while the sweep still runs, the driver's own staged copies of the reports."""

import glob
import json
from pathlib import Path


def reports(result_json: Path) -> list[dict]:
    """A trial's reports, one a line of its result.json."""
    return [json.loads(line) for line in result_json.read_text().splitlines() if line.strip()]


def trial_results(experiment: Path) -> list[dict]:
    """Every trial's params and reports, read back from the experiment folder Tune wrote."""
    return [{"params": json.loads((folder / "params.json").read_text()), "reports": reports(folder / "result.json")}
            for folder in sorted(p for p in experiment.iterdir() if (p / "params.json").is_file())]


def staged_results(name: str) -> list[Path]:
    """The driver's own copies of each trial's result.json (Ray Tune's staging folder on the driver's machine, which it
    syncs to the experiment folder every 10 s or so): a test watches trials here, with no delay."""
    found = glob.glob(f"/tmp/ray/session_*/artifacts/*/{name}/driver_artifacts/*/result.json")
    return sorted({Path(p).resolve() for p in found})  # session_latest links to one of the sessions


def checkpoint_registered(rows: list[dict]) -> bool:
    """Whether the driver surely holds a checkpoint of this trial. Tune logs a report (result.json) first and only
    then asks the trial's actor for the checkpoint that came with it: a node killed in between leaves no checkpoint
    to resume from. Tune takes no further report until that reply arrives, so a second report proves the first
    checkpoint registered."""
    return len(rows) >= 2
