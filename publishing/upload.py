"""Manual upload: publish a model folder without a sweep, with the sweep's checks, order and 20-minute rule.

    python -m publishing.upload --load_model_dir DIR --hf_repo_id ns/name \
        --wallet.name coldkey --wallet.hotkey hotkey [--competition_id m1] [--eval_loss X]

DIR is a merged model (a sweep's `best_model/`, or any save_pretrained folder with a tokenizer).
Its eval loss comes from --eval_loss or from the publish.json a sweep wrote beside it; it is
checked against the model this experiment last committed (publish_state.json beside DIR,
or --state_dir), so a worse model is never published over a better one.
"""

import argparse
import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path

from publishing import storage
from publishing.coordinator import PUBLISH_FILE, PublishCoordinator
from publishing.package import LOCAL_MODEL, is_hub_id
from publishing.publisher import Candidate
from publishing.rules import Action
from publishing.setup import PublishOptions, SetupError, prepare_publishing
from trainables.documented import add_flag
from trainables.errors import one_line
from trainables.trial_contract import EVAL_LOSS


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise SetupError(f"{message}; run with --help to see every flag")


# Publishing options the manual upload has no use for: it always publishes, and it does not wait for a window
SWEEP_ONLY = ("offline", "wait_for_publish")
REQUIRED = ("hf_repo_id", "wallet_name", "wallet_hotkey")


def build_parser() -> argparse.ArgumentParser:
    """The publishing group's flags (the sweep's, from PublishOptions), plus what only this script takes."""
    p = _OneLineParser(prog="python -m publishing.upload", description=__doc__.split("\n\n")[0],
                       allow_abbrev=False)
    p.add_argument("--load_model_dir", required=True, help="merged model folder to publish")
    for f in dataclasses.fields(PublishOptions):
        if f.name not in SWEEP_ONLY:
            add_flag(p, PublishOptions, f, default=f.default,
                     **({"required": True} if f.name in REQUIRED else {}))
    p.add_argument("--eval_loss", type=float, default=None,
                   help="the model's validator-style eval loss (default: from publish.json beside the model)")
    p.add_argument("--state_dir", default=None,
                   help="folder of publish_state.json, or the experiment's s3:// folder (default: the model "
                        "folder's parent, the experiment)")
    return p


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_publish_record(model_dir: Path) -> dict | None:
    """The publish.json a sweep wrote beside the model, or None when there is none; SetupError when it is damaged."""
    path = model_dir.parent / PUBLISH_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise SetupError(f"{path} is not readable JSON ({one_line(e, 100)}); pass --eval_loss "
                         "with the model's eval loss, or fix or remove the file") from None
    if not isinstance(record, dict):
        raise SetupError(f"{path} is not a JSON object; pass --eval_loss with the model's eval loss, "
                         "or fix or remove the file")
    return record


def model_eval_loss(model_dir: Path, given: float | None) -> float:
    if given is not None:
        if not math.isfinite(given):
            raise SetupError(f"--eval_loss {given} is not a finite number; pass the model's validator-style eval loss")
        return given
    record = read_publish_record(model_dir)
    if record is None:
        raise SetupError(f"the eval loss of {model_dir} is unknown (no --eval_loss, no {PUBLISH_FILE} beside it); "
                         "pass --eval_loss so a worse model is never published over a better one")
    if not is_finite_number(record.get(EVAL_LOSS)):
        raise SetupError(f"{model_dir.parent / PUBLISH_FILE} has no finite eval_loss (it has "
                         f"{str(record.get(EVAL_LOSS))[:40]!r}); pass --eval_loss with the model's eval loss")
    return float(record[EVAL_LOSS])


def recorded_base_model(model_dir: Path) -> str:
    """The base model's Hub id when the sweep's publish.json names one, else "a local model": the folder
    uploaded here is not the base model, and its path must not appear on the model card."""
    try:
        base_model = (read_publish_record(model_dir) or {}).get("base_model")
    except SetupError:
        base_model = None  # the eval loss came from --eval_loss; a damaged record only costs the card its base name
    return base_model if isinstance(base_model, str) and is_hub_id(base_model) else LOCAL_MODEL


def check_model_folder(model_dir: Path) -> None:
    if not (model_dir / "config.json").is_file() or not any(model_dir.glob("*.safetensors")):
        raise SetupError(f"--load_model_dir {model_dir} is not a model folder with config.json and safetensors")
    if any(model_dir.glob("adapter_*")):
        raise SetupError(f"--load_model_dir {model_dir} holds a LoRA adapter; publish a merged model")


def main(argv: list[str] | None = None, chain_factory=None, hub_endpoint: str | None = None, clock=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        model_dir = Path(args.load_model_dir).expanduser().resolve()
        check_model_folder(model_dir)
        eval_loss = model_eval_loss(model_dir, args.eval_loss)
        options = PublishOptions(**{k: v for k, v in vars(args).items() if k in PublishOptions.__dataclass_fields__})
        try:
            options.check()
        except ValueError as e:
            raise SetupError(str(e)) from None
        setup = prepare_publishing(options, model_dir, chain_factory=chain_factory, hub_endpoint=hub_endpoint)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # an s3:// (or gs://) experiment folder is kept as a URI: its publish_state.json is read there
    state_dir = (args.state_dir if storage.is_remote(args.state_dir) else Path(args.state_dir)) if args.state_dir \
        else model_dir.parent
    with tempfile.TemporaryDirectory() as work_dir:
        publisher = setup.publisher(str(model_dir), work_dir, sweep_id="manual upload",
                                    base_model=recorded_base_model(model_dir))
        extra = {"clock": clock} if clock else {}
        coordinator = PublishCoordinator(publisher, state_dir, background=False, **extra)
        coordinator.offer(Candidate(trial_id="manual", step=0, eval_loss=eval_loss, hyperparameters={},
                                    model_dir=str(model_dir)))
        decision = coordinator.step()
    if decision.action is Action.PUBLISH:
        print(f"published {coordinator.published.model_id}")
        return 0
    print(f"not published: {decision.reason}", file=sys.stderr)
    return 1 if decision.action in (Action.WAIT, Action.RETRY) else 3


if __name__ == "__main__":
    sys.exit(main())
