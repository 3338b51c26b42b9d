"""Score models for a competition the validators' way, with the sweep's own scoring code (issue 25).

    python -m orchestrator.score                                  # the embedded default model, offline
    python -m orchestrator.score --load_model_dir best_model --seed 0
    python -m orchestrator.score --competition_id 4 --load_best --load_model_dir best_model

Each model is scored on the same held-out samples, drawn as the sweep draws its eval set
(`orchestrator.inputs.prepare_eval_data`, the calls `prepare_data` makes), by the function the head-to-head runs
(`trainables.lora_trial.model_pair_losses`, here in this process: no Ray is started), and the score and each task's
loss come from `trainables.scoring.competition_score`: the number a trial reports, the number this prints and the
validators' number are one computation. Given several models, it says who wins under the competition's rule
(`publishing.subnet.iswin`): the earlier commitment keeps epsilon's advantage. A local folder or a Hub repo has no
commit block: it counts as committed now, later than every on-chain model (as the sweep's head-to-head counts our
model), and two of them as committed at the same block.

Every flag but the model sources and --json is the sweep's (`orchestrator.config`), parsed by its `load_config`, so
it means the same and bad input fails with the same one line (exit 2), before anything is downloaded or scored.
"""

import argparse
import dataclasses
import json
import math
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import (DEFAULT_CONFIG, FIELDS, FIELD_GROUP, GROUPS, REPO_ROOT, ConfigError, DataConfig,
                                 OneLineParser, SweepConfig, _config_flag, _settings_for_help, load_config,
                                 read_yaml_settings)
from trainables.documented import add_flag
from trainables.trial_contract import TASK_LOSSES

# The sweep's settings that decide how models are scored: which competition, which samples, how they are tokenized
# and batched, where the model runs, and the chain and Hub the models come from. Any other sweep flag is refused
# here (it would change nothing); a --config YAML may still hold every sweep key.
SHARED = {
    "competition and chain": ("competition_id", "competitions_file", "subtensor_network", "netuid", "env_file"),
    "samples": ("seed", "dataset_path", "dataset_repo_id", "question_column", "response_column", "use_cortex",
                "cortex_steps", "cortex_samples_per_epoch", "eval_fraction", "task_data", "eval_samples_per_task",
                "max_length", "tokenizer"),
    "how models run": ("device", "cpus_per_trial", "packing", "batch_size", "micro_batch_tokens", "eval_batch_size",
                       "attn_implementation", "address"),
}
SEED_HELP = ("seed of the held-out samples: the split (m1, g1) or the draw (a competition with tasks) the sweep makes "
             "with this --seed; the sweep's default is 0 (configs/default.yaml), so --seed 0 scores on a default "
             "sweep's held-out set, which its models never trained on (default: fresh, a random seed, printed so "
             "the run can be repeated)")
ADDRESS_HELP = ("a Ray cluster to score on (auto on a cluster's head): each model is scored as a trial would run, "
                "with a trial's resources (a GPU where the cluster's trials use GPUs); a folder only this machine "
                "holds is sent to the node that scores it (default: in this process, on this machine, no Ray)")
SOURCE_FLAGS = ("load_model_dir", "load_repo", "download_repo_latest_commit", "load_uid", "load_best")
NOT_COMMITTED = math.inf  # a folder or a Hub repo: committed now, after every on-chain model


class _Source(argparse.Action):
    """Appends (flag, value) to `sources` in command-line order: the models are listed and scored in that order."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, "sources", None) is None:
            namespace.sources = []
        namespace.sources.append((self.dest, True if self.nargs == 0 else values))


def build_parser(defaults: dict | None = None) -> argparse.ArgumentParser:
    """`defaults`: a config file's settings, the defaults --help shows where it sets one (as the sweep's)."""
    defaults = defaults or {}
    parser = OneLineParser(prog="python -m orchestrator.score", allow_abbrev=False,
                           usage="python -m orchestrator.score [--load_model_dir DIR | --load_repo NS/NAME "
                                 "--download_repo_latest_commit SHA | --load_uid N | --load_best ...] "
                                 "[--FLAG VALUE ...]",
                           description="Score models for a competition the validators' way, on the same held-out "
                                       "samples, with the sweep's own scoring code; with several models, say who "
                                       "wins under the competition's rule. Flags other than the models' and --json "
                                       "are the sweep's (python -m orchestrator.run --help) and mean the same.")
    models = parser.add_argument_group(
        "models", "each may be given several times, in any mix; scored and listed in the order given (none: the "
                  "embedded default model, or the model a --config file chooses)")
    models.add_argument("--load_model_dir", action=_Source, metavar="DIR", dest="load_model_dir",
                        help="a local Hugging Face model folder (safetensors, with its tokenizer)")
    models.add_argument("--load_repo", action=_Source, metavar="NAMESPACE/NAME", dest="load_repo",
                        help="a Hugging Face repo, at the commit of the --download_repo_latest_commit given with it")
    models.add_argument("--download_repo_latest_commit", action="append", metavar="SHA", default=[],
                        help="the 40-character commit of a --load_repo (the first commit goes with the first repo, "
                            "and so on)")
    models.add_argument("--load_uid", action=_Source, type=int, metavar="N", dest="load_uid",
                        help="the model uid N has committed on the chain for the competition, fetched with every "
                            "check the sweep's --load_uid and --comparison_uid apply")
    models.add_argument("--load_best", action=_Source, nargs=0, dest="load_best",
                        help="the competition's leader: the model of the uid with the highest incentive, as the "
                            "sweep's --load_best reads it")
    parser.add_argument("--config", metavar="FILE",
                        help="a sweep's YAML of settings: its competition, data, seed and model apply (default: "
                            f"{DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    parser.add_argument("--json", metavar="PATH", help="also write the scores, per-pair losses and verdict as JSON")
    for title, names in SHARED.items():
        group = parser.add_argument_group(title)
        for name in names:
            cls = GROUPS[FIELD_GROUP[name]]
            if name == "seed":
                group.add_argument("--seed", type=int, metavar="INT", help=SEED_HELP)
            elif name == "address":
                group.add_argument("--address", metavar="STR", help=ADDRESS_HELP)
            else:
                add_flag(group, cls, FIELDS[name], shown=defaults.get(name, dataclasses.MISSING))
    parser.set_defaults(sources=None)
    return parser


@dataclass(frozen=True)
class Request:
    config: SweepConfig
    sources: list[tuple[str, object]]  # (flag, value): load_model_dir, load_repo (repo, commit), load_uid, load_best
    fresh_seed: bool                   # no --seed given: a random one was drawn
    json_path: str | None


def without_flags(argv: list[str], flags: set[str], valueless: set[str]) -> list[str]:
    """argv less the given flags (and the value after each, unless `valueless`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg and name not in valueless
            continue
        kept.append(arg)
    return kept


def parse(argv: list[str]) -> Request:
    """The flags: the model sources here, every other setting through the sweep's load_config."""
    shown = _settings_for_help(Path(_config_flag(argv) or DEFAULT_CONFIG)) if "--help" in argv or "-h" in argv else {}
    args = build_parser(shown).parse_args(argv)  # --help prints and exits here; an unknown flag is a ConfigError
    source_flags = {f"--{name}" for name in SOURCE_FLAGS}
    config = load_config(without_flags(argv, source_flags | {"--json"}, {"--load_best"}))
    sources = flag_sources(args.sources or [], args.download_repo_latest_commit) if args.sources or \
        args.download_repo_latest_commit else config_sources(config.data)
    data = dataclasses.replace(config.data, load_model_dir=None, load_repo=None, download_repo_latest_commit=None,
                               load_uid=None, load_best=False)
    seed_given = args.seed is not None or (args.config is not None and "seed" in read_yaml_settings(Path(args.config)))
    # below 2**31: every seed printed here is one --seed accepts (the config's largest int)
    search = config.search if seed_given else dataclasses.replace(config.search, seed=secrets.randbelow(2**31))
    if args.json and not Path(args.json).expanduser().parent.is_dir():
        raise ConfigError(f"--json {args.json}: the folder {Path(args.json).expanduser().parent} does not exist")
    return Request(dataclasses.replace(config, data=data, search=search), sources, not seed_given, args.json)


def flag_sources(given: list[tuple[str, object]], commits: list[str]) -> list[tuple[str, object]]:
    """The sources in order, each --load_repo with its commit, checked as the sweep checks one (DataConfig)."""
    repos = [value for flag, value in given if flag == "load_repo"]
    if len(commits) > len(repos):
        raise ConfigError(f"--download_repo_latest_commit given {len(commits)} time(s) but --load_repo "
                          f"{len(repos)}; pass one commit with each --load_repo")
    paired = iter(commits)
    sources = []
    for flag, value in given:
        if flag == "load_repo":
            value = (value, next(paired, None))
            try:
                DataConfig(load_repo=value[0], download_repo_latest_commit=value[1]).check()
            except ValueError as e:
                raise ConfigError(str(e)) from None
        sources.append((flag, value))
    return sources


def config_sources(data: DataConfig) -> list[tuple[str, object]]:
    """No model flag: the one model the config chooses (a --config YAML's), else none (the embedded model)."""
    if data.load_model_dir:
        return [("load_model_dir", data.load_model_dir)]
    if data.load_repo:
        return [("load_repo", (data.load_repo, data.download_repo_latest_commit))]
    if data.load_uid is not None:
        return [("load_uid", data.load_uid)]
    return [("load_best", True)] if data.load_best else []


@dataclass(frozen=True)
class Contender:
    label: str
    folder: Path
    block: float = NOT_COMMITTED   # its commitment's block; NOT_COMMITTED: a folder or a Hub repo
    uid: int | None = None
    model_id: str | None = None    # the committed ModelId, or repo@commit
    embedded: bool = False


def resolve_models(config: SweepConfig, sources: list[tuple[str, object]], chain_factory=None,
                   hub_endpoint: str | None = None) -> tuple[list[Contender], object]:
    """Each model's folder, fetched as the sweep fetches a starting model; (the models, the chain or None). Local
    folders are checked first, so a bad one fails before anything is downloaded."""
    from orchestrator.inputs import fetch_committed_model, read_only_chain, resolve_model_dir
    from publishing.subnet.chain import ChainError
    from publishing.subnet.competitions import CompetitionError
    from publishing.subnet.remote_model import RemoteModelError, best_uid
    from trainables.embedded_model import ensure_embedded_model

    if not sources:
        return [Contender("the embedded default model", ensure_embedded_model(), embedded=True)], None
    folders = {i: resolve_model_dir(_with_data(config, load_model_dir=value))
               for i, (flag, value) in enumerate(sources) if flag == "load_model_dir"}
    chain = None
    contenders = []
    for i, (flag, value) in enumerate(sources):
        if flag == "load_model_dir":
            contenders.append(Contender(str(folders[i]), folders[i]))
        elif flag == "load_repo":
            repo, commit = value
            folder = resolve_model_dir(_with_data(config, load_repo=repo, download_repo_latest_commit=commit),
                                       hub_endpoint=hub_endpoint)
            contenders.append(Contender(f"{repo}@{commit[:8]}", folder, model_id=f"{repo}@{commit}"))
        else:
            try:
                chain = chain or (chain_factory or (lambda: read_only_chain(config)))()
                uid = best_uid(chain, config.publishing.competition_id) if flag == "load_best" else value
                committed = fetch_committed_model(config, chain, uid, hub_endpoint)
            except (RemoteModelError, ChainError, CompetitionError) as e:
                raise ConfigError(f"--{flag}: {e}") from None
            leader = ", the leader" if flag == "load_best" else ""
            model = committed.model_id
            contenders.append(Contender(f"uid {uid}{leader} ({model.repo_id}@{model.commit[:8]}, block "
                                        f"{committed.block:,})", committed.folder, block=committed.block, uid=uid,
                                        model_id=model.to_compressed_str()))
    return contenders, chain


def _with_data(config: SweepConfig, **sources) -> SweepConfig:
    return dataclasses.replace(config, data=dataclasses.replace(config.data, **sources))


@dataclass(frozen=True)
class Scored:
    contender: Contender
    pair_losses: list[float]
    score: float
    task_losses: dict[str, float]
    rejected: str | None  # why validators would reject the model (the competition's limits), or None


def score_model(config: SweepConfig, contender: Contender, eval_split, tasks, competition,
                task_options: dict | None = None) -> Scored:
    """The trial's and the head-to-head's computation: model_pair_losses on the held-out split with the sweep's
    settings (device, threads, batching, attention), then competition_score. In this process, or, given
    `task_options` (a trial's resources), as a Ray task where a trial would run (publishing.head_to_head)."""
    from orchestrator.inputs import trial_settings
    from publishing.head_to_head import remote_pair_losses
    from publishing.subnet.model_checks import ModelCheckError, check_model
    from trainables.lora_trial import model_pair_losses
    from trainables.scoring import competition_score

    settings = dataclasses.replace(trial_settings(config, contender.folder), embedded_model=contender.embedded,
                                   device=config.run.device)  # the device as asked, where the losses are computed
    losses = (remote_pair_losses(str(contender.folder), settings, eval_split, task_options) if task_options else
              model_pair_losses(str(contender.folder), settings, eval_split))
    score, per_task = competition_score(losses, tasks)
    try:
        check_model(contender.folder, competition)
        rejected = None
    except ModelCheckError as e:
        rejected = str(e)
    return Scored(contender, losses, score, per_task, rejected)


def check_vocabulary(contenders: list[Contender], eval_split) -> None:
    """The samples are tokenized once, for every model: each must embed every token id they hold."""
    highest = int(eval_split.tokens.max()) if len(eval_split.tokens) else -1
    for contender in contenders:
        vocab = json.loads((contender.folder / "config.json").read_text()).get("vocab_size")
        if isinstance(vocab, int) and highest >= vocab:
            raise ConfigError(f"{contender.label} embeds {vocab} tokens, but the samples (tokenized with the first "
                              f"model's tokenizer choice) hold token id {highest}; score models of one competition "
                              f"and tokenizer together (--tokenizer competition tokenizes with the competition's)")


# The verdict -------------------------------------------------------------------------------------------------------


def epsilon_between(competition, current_block: int | None, block_i: float, block_j: float) -> float:
    """The advantage the earlier of two commitments keeps: the competition's epsilon at the current block, decayed
    from the earlier one's commit block (two uncommitted models: at a fresh commit; no one gets it then)."""
    earlier = min(block_i, block_j)
    if math.isinf(earlier) or current_block is None:
        return competition.epsilon.start
    return competition.epsilon.at(current_block, int(earlier))


def wins(a: Scored, b: Scored, by_score: bool, epsilon: float) -> tuple[int, int]:
    """(comparisons a wins, comparisons made), with the validators' iswin: per pair (the original competitions) or
    on whole scores (a competition of weighted tasks). A model validators reject loses every comparison."""
    from publishing.subnet.iswin import iswin

    def losses(s: Scored) -> list[float]:
        if s.rejected:
            return [math.inf] * (1 if by_score else len(s.pair_losses))
        return [s.score] if by_score else s.pair_losses

    ours, theirs = losses(a), losses(b)
    won = sum(iswin(x, y, a.contender.block, b.contender.block, epsilon) for x, y in zip(ours, theirs))
    return won, len(ours)


@dataclass(frozen=True)
class Verdict:
    leaders: list[int]       # the models with the highest win rate (indexes): one is the winner, several a tie;
    win_rates: list[float]   # none: every model is rejected. win_rates: each one's wins / comparisons
    lines: list[str]         # one per pair of models


def verdict(scored: list[Scored], competition, current_block: int | None, by_score: bool) -> Verdict:
    lines = []
    totals = [[0, 0] for _ in scored]
    for i, a in enumerate(scored):
        for j, b in enumerate(scored):
            if i == j:
                continue
            epsilon = epsilon_between(competition, current_block, a.contender.block, b.contender.block)
            won, made = wins(a, b, by_score, epsilon)
            totals[i][0] += won
            totals[i][1] += made
            if i < j:
                lost = wins(b, a, by_score, epsilon)[0]
                lines.append(pair_line(a, b, won, lost, made, epsilon, by_score))
    rates = [won / made if made else 0.0 for won, made in totals]
    eligible = [i for i, s in enumerate(scored) if not s.rejected]
    best = max((rates[i] for i in eligible), default=None)
    return Verdict([i for i in eligible if rates[i] == best], rates, lines)


def pair_line(a: Scored, b: Scored, a_won: int, b_won: int, made: int, epsilon: float, by_score: bool) -> str:
    blocks = (a.contender.block, b.contender.block)
    if blocks[0] == blocks[1]:
        advantage = "the same block: no epsilon either way"
    else:
        earlier = a if blocks[0] < blocks[1] else b
        advantage = f"epsilon {epsilon:.4f} to the earlier commitment, {earlier.contender.label}"
    if by_score:
        winner = a.contender.label if a_won else b.contender.label if b_won else "neither"
        return f"  {a.contender.label} vs {b.contender.label}: {winner} wins on the score ({advantage})"
    return (f"  {a.contender.label} vs {b.contender.label}: {a_won} of {made} pairs to the first, {b_won} to the "
            f"second ({advantage})")


# Output ------------------------------------------------------------------------------------------------------------


def epsilon_line(competition, current_block: int | None, scored: list[Scored]) -> str:
    rule = competition.epsilon
    if rule.end is None or rule.decay_blocks <= 0:
        return (f"epsilon: {rule.start:g}, constant (competition {competition.id}): a later commitment wins only "
                f"below (1 - epsilon) x the earlier one's loss")
    decay = (f"competition {competition.id}: {rule.start:g} at a commit, decaying to {rule.end:g} over "
             f"{rule.decay_blocks:,} blocks from the earlier model's commit block")
    committed = [s.contender for s in scored if not math.isinf(s.contender.block)]
    if current_block is None or not committed:
        return f"epsilon: {rule.start:g} for a model committed now ({decay}; no chain read: every model here is local)"
    against = ", ".join(f"{rule.at(current_block, int(c.block)):.4f} against uid {c.uid} (committed at block "
                        f"{int(c.block):,})" for c in committed)
    return f"epsilon at block {current_block:,}: {against}; {rule.start:g} for a model committed now ({decay})"


def render(scored: list[Scored], request: Request, competition, eval_split, tasks, current_block: int | None,
           result: Verdict | None) -> str:
    seed = request.config.search.seed
    counts = f" ({', '.join(f'{t.name} {t.stop - t.start}' for t in tasks)})" if tasks else ""
    fresh = f" (fresh: drawn at random; repeat with --seed {seed})" if request.fresh_seed else ""
    lines = [f"samples: {len(eval_split)} held-out samples of competition {competition.id}{counts}, seed {seed}{fresh}"]
    for s in scored:
        per_task = f" ({', '.join(f'{name} {loss:.4f}' for name, loss in s.task_losses.items())})" \
            if s.task_losses else ""
        rejected = f"; validators would reject it: {s.rejected}" if s.rejected else ""
        lines.append(f"{s.contender.label}: score {s.score:.4f}{per_task}{rejected}")
    lines.append(epsilon_line(competition, current_block, scored))
    if result is not None:
        local = [s for s in scored if math.isinf(s.contender.block)]
        if local:
            lines.append("blocks: " + ", ".join(s.contender.label for s in local) + " count as committed now"
                         + (f" (block {current_block:,}), after every on-chain model" if current_block is not None
                            else "") + (", all at the same block" if len(local) > 1 else ""))
        lines += result.lines
        rule = f"competition {competition.id}'s rule"
        if not result.leaders:
            lines.append(f"verdict: no model passes competition {competition.id}'s checks; validators score none")
        elif len(result.leaders) > 1:
            lines.append(f"verdict: a tie under {rule}: " + " and ".join(scored[i].contender.label
                                                                            for i in result.leaders)
                         + f" (win rate {result.win_rates[result.leaders[0]]:.1%} each)")
        else:
            winner, others = result.leaders[0], len(scored) - 1
            lines.append(f"verdict: {scored[winner].contender.label} wins under {rule} (win rate "
                         f"{result.win_rates[winner]:.1%} against the {others} other model{'s' if others > 1 else ''})")
    return "\n".join(lines)


def record(scored: list[Scored], request: Request, competition, eval_split, tasks, current_block: int | None,
           result: Verdict | None) -> dict:
    return {
        "competition_id": competition.id, "seed": request.config.search.seed, "fresh_seed": request.fresh_seed,
        "samples": len(eval_split), "tasks": {t.name: t.stop - t.start for t in tasks}, "current_block": current_block,
        "epsilon": epsilon_line(competition, current_block, scored),
        "models": [{"label": s.contender.label, "folder": str(s.contender.folder), "uid": s.contender.uid,
                    "model_id": s.contender.model_id,
                    "block": None if math.isinf(s.contender.block) else int(s.contender.block), "score": s.score,
                    TASK_LOSSES: s.task_losses, "rejected": s.rejected, "pair_losses": s.pair_losses}
                   for s in scored],
        "verdict": None if result is None else {
            "winner": scored[result.leaders[0]].contender.label if len(result.leaders) == 1 else None,
            "tied": [scored[i].contender.label for i in result.leaders] if len(result.leaders) > 1 else [],
            "win_rates": dict(zip((s.contender.label for s in scored), result.win_rates)),
            "pairs": [line.strip() for line in result.lines]},
    }


def score_all(config: SweepConfig, contenders: list[Contender], eval_split, tasks, competition) -> list[Scored] | None:
    """Each model scored: in this process, or, with --address, on the cluster as a trial would run
    (cluster_plan.scoring_task_options: a GPU node where trials use GPUs, once one has joined; None, with the
    line printed, when none joined in time)."""
    if config.run.address is None:
        return [score_model(config, c, eval_split, tasks, competition) for c in contenders]
    from orchestrator.cluster_plan import scoring_place, scoring_task_options
    from orchestrator.ray_start import start_ray

    started_ray = start_ray(config)
    try:
        options = scoring_task_options(config)
        print(f"scoring on the cluster ({config.run.address}): each model as {scoring_place(options)}, as a trial runs",
              flush=True)
        return [score_model(config, c, eval_split, tasks, competition, options) for c in contenders]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def main(argv: list[str] | None = None, chain_factory=None, hub_endpoint: str | None = None) -> int:
    """`chain_factory` and `hub_endpoint`: the chain and Hub the models come from (tests pass their own)."""
    argv = sys.argv[1:] if argv is None else argv
    from trainables.compat import MissingInternal

    try:
        request = parse(argv)
        config = request.config
        # torch and transformers only now: --help and a bad flag never load them
        from orchestrator.inputs import check_address, check_device, check_env_file, data_competition, \
            prepare_eval_data
        from publishing.subnet.chain import ChainError

        check_env_file(config)
        check_device(config)
        check_address(config)
        competition = data_competition(config)
        contenders, chain = resolve_models(config, request.sources, chain_factory, hub_endpoint)
        first = contenders[0]
        # the samples are tokenized once, for every model, with the tokenizer the sweep would choose for the first
        data_config = config if first.embedded else _with_data(config, load_model_dir=str(first.folder))
        eval_split, tasks = prepare_eval_data(data_config, first.folder, hub_endpoint)
        check_vocabulary(contenders, eval_split)
        try:
            current_block = chain.current_block() if chain is not None else None
        except ChainError as e:
            raise ConfigError(f"cannot read the current block: {e}") from None
    except (ConfigError, MissingInternal) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model is noise between the result lines
    scored = score_all(config, contenders, eval_split, tasks, competition)
    if scored is None:
        return 2
    result = verdict(scored, competition, current_block, by_score=bool(tasks)) if len(scored) > 1 else None
    print(render(scored, request, competition, eval_split, tasks, current_block, result))
    if request.json_path:
        Path(request.json_path).expanduser().write_text(
            json.dumps(record(scored, request, competition, eval_split, tasks, current_block, result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
