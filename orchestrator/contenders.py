"""The models a mining round may start from (orchestrator.mine): the competition's leader and our committed model,
read from the chain and fetched with every check --load_uid applies, and our best merged model so far; each scored
on the round's held-out samples with orchestrator.score's functions. An outage is retried (orchestrator.retry);
what stays unreachable is left out with a note, and the round goes on without it.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import ConfigError, SweepConfig
from orchestrator.mining_folder import our_best, read_round_file
from orchestrator.rounds import Candidate, RoundRecord, Source
from trainables.errors import one_line


@dataclass(frozen=True)
class Contenders:
    """The models a round may start from, fetched (orchestrator.score.Contender), before they are scored."""
    leader: object | None = None      # Contender
    ours: object | None = None
    committed: object | None = None
    committed_is_ours: bool = False
    our_uid: int | None = None
    notes: tuple[str, ...] = ()       # what could not be read or fetched, one line each


def gather(config: SweepConfig, chain, folder: str, records: list[RoundRecord], hub_endpoint: str | None,
           say=print, sleep=time.sleep) -> Contenders:
    """Fetch the leader's model and our committed model (each with every check --load_uid applies), and find our
    best merged model. An outage is retried (orchestrator.retry); what stays unreachable is left out with a note:
    the round goes on without it."""
    from orchestrator.inputs import fetch_committed_model
    from orchestrator.retry import Unreachable, retried
    from orchestrator.score import Contender
    from publishing.subnet.chain import ChainError
    from publishing.subnet.competitions import CompetitionError
    from publishing.subnet.remote_model import RemoteModelError, best_uid

    notes = []
    best = our_best(folder, records)
    ours = Contender(f"round {best[1]}'s best model", Path(best[0])) if best else None
    if chain is None:
        return Contenders(ours=ours)
    competition_id = config.publishing.competition_id

    def fetch(uid: int, role: str):
        try:
            committed = retried(f"fetching {role}'s model (uid {uid})",
                                lambda: fetch_committed_model(config, chain, uid, hub_endpoint), say=say, sleep=sleep)
        except (RemoteModelError, ChainError, CompetitionError, ConfigError, Unreachable) as e:
            notes.append(f"{role} (uid {uid}) left out: {one_line(e, 300)}")
            return None
        model = committed.model_id
        return Contender(f"uid {uid} ({model.repo_id}@{model.commit[:8]})", committed.folder, block=committed.block,
                         uid=uid, model_id=model.to_compressed_str())

    try:
        neurons = retried("reading the subnet's neurons", chain.neurons, say=say, sleep=sleep)
        our_uid = next((n.uid for n in neurons if chain.hotkey_ss58 and n.hotkey == chain.hotkey_ss58), None)
        try:
            leader_uid = retried("finding the leader", lambda: best_uid(chain, competition_id), say=say, sleep=sleep)
        except RemoteModelError as e:
            leader_uid = None
            notes.append(f"no leader: {one_line(e, 300)}")
        ours_committed = (retried("reading our commitment", lambda: chain.read_commitment(chain.hotkey_ss58),
                                  say=say, sleep=sleep) if our_uid is not None else None)
    except (Unreachable, ChainError) as e:
        return Contenders(ours=ours, notes=(f"the chain is unreachable ({one_line(e, 300)}); this round starts from our own best",))
    leader = fetch(leader_uid, "the leader") if leader_uid is not None and leader_uid != our_uid else None
    committed, committed_is_ours = None, False
    if ours_committed is not None:
        published = read_round_file(folder, best[1])[0].get("best_model_id") if best else None
        if ours is not None and published == ours_committed.data:
            committed_is_ours = True
        else:
            committed = fetch(our_uid, "our committed model")
    if leader_uid is not None and leader_uid == our_uid and committed is None and not committed_is_ours:
        committed = fetch(our_uid, "our committed model")
    return Contenders(leader, ours, committed, committed_is_ours, our_uid, tuple(notes))


def score_contenders(config: SweepConfig, contenders: Contenders, base_model_dir: Path, base_embedded: bool,
                     hub_endpoint: str | None):
    """Each contender scored on the round's held-out samples (its --seed), as orchestrator.score scores: (leader,
    ours, committed) as rounds.Candidate, the base model's score where there is none of them (nan otherwise), and
    the held-out set's size."""
    from transformers.utils import logging as hf_logging

    from orchestrator.inputs import data_competition, prepare_eval_data
    from orchestrator.cluster_plan import scoring_place, scoring_task_options
    from orchestrator.score import Contender, check_vocabulary, score_model

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model is noise between the round's lines

    competition = data_competition(config)
    eval_split, tasks = prepare_eval_data(config, base_model_dir, hub_endpoint)
    present = [c for c in (contenders.leader, contenders.ours, contenders.committed) if c is not None]
    check_vocabulary(present, eval_split)
    options = scoring_task_options(config)  # on a cluster: where trials train, not in this (the head's) process
    if options:
        print(f"scoring {len(present) or 1} model(s) on the cluster, each as {scoring_place(options)}", flush=True)

    def candidate(contender, source: Source) -> Candidate | None:
        if contender is None:
            return None
        scored = score_model(config, contender, eval_split, tasks, competition, options)
        block = None if math.isinf(contender.block) else int(contender.block)
        return Candidate(source, str(contender.folder), scored.score, contender.uid, block, scored.rejected)

    scored = (candidate(contenders.leader, Source.LEADER), candidate(contenders.ours, Source.OURS),
              candidate(contenders.committed, Source.COMMITTED))
    base_score = math.nan
    if not present:  # the round starts from the base model: its score is the start's
        base = Contender(str(base_model_dir), base_model_dir, embedded=base_embedded)
        base_score = score_model(config, base, eval_split, tasks, competition, options).score
    return (*scored, base_score, len(eval_split))
