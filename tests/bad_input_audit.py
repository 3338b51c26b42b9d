"""The bad-input audit: every flag given values it must refuse, plus the test table's cases, each run through the
driver's `main` in a forked process with Ray's start replaced by an exit; one row per outcome family.

    .venv/bin/python tests/bad_input_audit.py            # a table: one line / accepted / traceback / wrong exit / hang

Not a test (pytest does not collect it): the table's cases that must fail are in tests/bad_inputs.py, run by
tests/test_cli.py; this shows the whole surface, accepted values included, for an issue's closing note.
"""

import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TIMEOUT_S = 60
ACCEPTED_EXIT = 99  # the child's code when the input passed every check and Ray would have started


def flag_cases(scratch: Path) -> dict[str, list[str]]:
    """Values each flag must refuse, by the flag's type: numbers that are not, out of range or not finite; paths that
    are missing, binary or folders; choices that are not among them."""
    from orchestrator.config import build_parser

    binary = scratch / "binary"
    binary.write_bytes(bytes(range(256)) * 4)
    folder = scratch / "a-folder"
    folder.mkdir(exist_ok=True)
    paths = {"--config", "--search", "--load_model_dir", "--dataset_path", "--tokenizer", "--competitions_file",
             "--env_file", "--wallet.path"}
    cases = {}
    for action in build_parser()._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        flag = action.option_strings[0]
        if action.type is int:
            values = ["abc", "-5", "1.5", "99999999999999999999"]
        elif action.type is float:
            values = ["abc", "nan", "inf", "-1"]
        elif flag in paths:
            values = ["/nonexistent/x", str(binary), str(folder)]
        else:
            values = ["", "bogus value", "../escape"]
        for value in values:
            cases[f"{flag} {value!r}"] = [flag, value]
    return cases


def table_cases(scratch: Path) -> dict[str, list[str]]:
    """The bad-input table that tests/test_cli.py runs."""
    from tests.bad_inputs import bad_inputs
    from trainables.embedded_model import ensure_embedded_model

    model_dir = ensure_embedded_model(scratch / "model-cache")
    (scratch / "table").mkdir()
    return {f"table: {case}": argv for case, (argv, _fragment) in bad_inputs(scratch / "table", model_dir).items()}


def run_case(argv: list[str], scratch: Path) -> tuple[str, str]:
    """(family, stderr's last line) of `main(argv)` in a forked child."""
    out = scratch / f"out-{time.monotonic_ns()}"
    pid = os.fork()
    if pid == 0:  # the child: stdout and stderr into `out`, Ray never started
        with open(out, "w") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
        import orchestrator.ray_start
        from orchestrator.run import main

        orchestrator.ray_start.start_ray = lambda _config: os._exit(ACCEPTED_EXIT)
        try:
            code = main(argv)
        except BaseException:  # noqa: BLE001 - a traceback is what the audit counts
            import traceback

            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang", ""
        time.sleep(0.05)
    code = os.waitstatus_to_exitcode(status)
    text = out.read_text(errors="replace")
    errors = [line for line in text.splitlines() if line.strip()]
    last = errors[-1] if errors else ""
    if "Traceback (most recent call last)" in text:
        return "traceback", last
    if code == ACCEPTED_EXIT or code == 0:
        return "accepted", last
    if code == 2 and sum(line.startswith("error: ") for line in errors) == 1:
        return "one line, exit 2", last
    return f"exit {code}", last


def main() -> int:
    scratch = Path(tempfile.mkdtemp(prefix="bad-input-audit-"))
    os.chdir(scratch)  # a case that would write (an experiment folder) writes here
    cases = {**table_cases(scratch), **flag_cases(scratch)}
    rows = []
    for name, argv in cases.items():
        started = time.monotonic()
        family, last = run_case(argv, scratch)
        rows.append((name, family, time.monotonic() - started, last))
        print(f"{family:18} {time.monotonic() - started:5.1f}s  {name}: {last[:150]}", flush=True)
    counts = Counter(family for _, family, _, _ in rows)
    seconds = [s for _, family, s, _ in rows if family == "one line, exit 2"]
    print(f"\n{len(rows)} cases: " + ", ".join(f"{n} {family}" for family, n in counts.most_common()))
    if seconds:
        print(f"one-line refusals took {min(seconds):.1f}-{max(seconds):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
