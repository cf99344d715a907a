"""The batch-scoring job: profiles -> actor pool (retrieve, rerank) -> staged Parquet -> publish.

Everything that can fail cheaply fails before anything is written: the date and run id must
be valid, the output bucket reachable, the bundles must pass their checksums, the dataset and
splits must exist. Then the run claims its id (``publish.start_run``), removes the runs of the
date that are neither published nor live, stages its files and publishes them, or says it
lost to a run that published first (see ``raylrec.scoring.publish``).
"""

from __future__ import annotations

import datetime as dt
import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raylrec import storage
from raylrec.cf.bundle import bundle_history_len, check_cf_bundle
from raylrec.config import ConfigError, RaylrecConfig
from raylrec.data.output import read_meta
from raylrec.data.vocab import Vocabulary
from raylrec.scoring import publish as recs
from raylrec.scoring.profiles import item_popularity, known_splits, user_profiles
from raylrec.scoring.recommender import Recommender, ScoringPlan

__all__ = ["run_scoring", "new_run_id", "publish_run"]

_POPULAR_EXTRA = 1000  # popular items beyond k, so the fallback survives excluding seen ones


def new_run_id(date: str) -> str:
    return f"{date}-{dt.datetime.now(dt.UTC):%H%M%S}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class _Bundles:
    """What ranks: a retriever (a CF bundle, or a full-catalog model bundle) and an optional
    pointwise reranker, each checked; descriptions as their ``config.json`` records them."""

    retriever: str
    retriever_description: dict[str, Any]
    retriever_is_cf: bool
    reranker: str | None
    reranker_description: dict[str, Any] | None


def _role(description: dict[str, Any]) -> str:
    from raylrec.methods.config import METHODS

    return METHODS.get(description["method"]["name"]).role


def _resolve(config: RaylrecConfig) -> tuple[str, _Bundles]:
    """(output, the bundles), all checked before anything is written."""
    from raylrec.methods.bundle import check_model_bundle

    score = config.score
    if not score.output:
        raise ConfigError("set score.output (where recommendations go: a local path or s3://)")
    output = storage.absolute(score.output)
    storage.check_reachable(output)
    model_bundle = storage.absolute(score.model_bundle) if score.model_bundle else None
    model_description = check_model_bundle(model_bundle) if model_bundle else None
    retriever = storage.absolute(score.retriever_bundle) if score.retriever_bundle else None
    retriever_description = check_model_bundle(retriever) if retriever else None
    if retriever_description is not None and _role(retriever_description) != "full_catalog":
        raise ConfigError(
            f"score.retriever_bundle {retriever} holds {retriever_description['method']['name']}, a "
            f"{_role(retriever_description)} method: only a full_catalog method (cllm4rec) retrieves"
        )
    if model_description is not None and _role(model_description) == "full_catalog":
        if retriever:
            raise ConfigError(
                f"score.model_bundle {model_bundle} is a full-catalog method: it ranks alone; "
                "unset score.retriever_bundle, or give a pointwise reranker as score.model_bundle"
            )
        # the whole ranker: it retrieves the top k itself and nothing reranks
        return output, _Bundles(model_bundle, model_description, False, None, None)
    if model_description is not None and _role(model_description) != "pointwise":
        raise ConfigError(
            f"score.model_bundle {model_bundle} holds {model_description['method']['name']}, a "
            f"{_role(model_description)} method: it reranks nothing (give a pointwise reranker or none)"
        )
    if retriever:
        return output, _Bundles(retriever, retriever_description, False, model_bundle, model_description)
    if score.cf_bundle:
        cf_bundle = storage.absolute(score.cf_bundle)
    elif model_bundle and model_description.get("cf_bundle_source"):
        cf_bundle = storage.join(model_bundle, "cf")
    else:
        raise ConfigError(
            "set score.cf_bundle (retrieval needs a CF bundle, or a full-catalog score.retriever_bundle; "
            "this model bundle has none)"
        )
    return output, _Bundles(cf_bundle, check_cf_bundle(cf_bundle), True, model_bundle, model_description)


def _history_length(bundles: _Bundles) -> int:
    lengths = [50]
    if bundles.retriever_is_cf:
        lengths.append(bundle_history_len(bundles.retriever_description))
    if bundles.reranker_description is not None:
        lengths.append(int(bundles.reranker_description["prompt"]["history_items"]))
    return max(lengths)


def _actor_resources(config: RaylrecConfig) -> tuple[int, float, float]:
    import ray

    score = config.score
    resources = ray.cluster_resources()
    gpus = score.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    if score.actors:
        return score.actors, gpus, score.cpus_per_actor
    if score.resources_per_actor:
        # As many actors as the nodes declaring these resources hold.
        fits = min(int(resources.get(k, 0) // v) for k, v in score.resources_per_actor.items())
        return max(1, fits), gpus, score.cpus_per_actor
    if gpus:
        return max(1, int(resources["GPU"] // gpus)), gpus, score.cpus_per_actor
    # Leave a CPU for reading profiles and writing files.
    return max(1, min(8, int(resources.get("CPU", 1) // score.cpus_per_actor) - 1)), 0.0, score.cpus_per_actor


def publish_run(
    output: str,
    date: str,
    run_id: str,
    write: Callable[[str], tuple[int, dict[str, Any]]],
    say: Callable[[str], None] = print,
    lease_s: float = recs.RUN_LEASE_S,
) -> dict[str, Any]:
    """Claim ``run_id`` for ``date``, remove the date's runs that are neither published nor
    live, let ``write(prefix)`` stage the files (it returns the users scored and the manifest's
    details) and publish them. Raises PublishConflict when another run published first."""
    with recs.start_run(output, date, run_id, lease_s) as run:
        stale = recs.remove_unpublished(output, date, lease_s)
        if stale:
            say(f"removed {len(stale)} dead or replaced run(s) of {date}: {', '.join(stale)}")
        users, details = write(run.prefix)
        say(f"wrote run {run_id}; verifying and publishing {recs.partition(output, date)}")
        manifest = run.publish(users, details)
    say(
        f"published {manifest['rows']:,} rows for {manifest['users']:,} users"
        f" in {len(manifest['files'])} file(s)"
    )
    return manifest


@dataclass(frozen=True)
class CheckedScoring:
    """A scoring run's inputs, checked (``check_scoring``): nothing started, nothing written."""

    date: str
    run_id: str
    output: str
    inputs: _Inputs


def check_scoring(config: RaylrecConfig, date: str, run_id: str | None = None) -> CheckedScoring:
    """Everything a scoring run checks before it starts Ray or writes a byte: the date and run
    id, ``score.output`` (set and reachable), each bundle (complete, checksums, roles) and the
    dataset (committed, with the splits asked for)."""
    recs.check_date(date)
    run_id = recs.check_run_id(run_id or new_run_id(date))
    output, bundles = _resolve(config)
    score = config.score
    recorded = bundles.retriever_description
    default_dataset = recorded["dataset"]["path"] if bundles.retriever_is_cf else recorded["dataset"]
    dataset = storage.absolute(score.dataset or config.dataset or default_dataset)
    read_meta(dataset)  # a clear error for a missing or unfinished dataset
    named = bundles.reranker or bundles.retriever
    inputs = _Inputs(
        dataset=dataset,
        splits=known_splits(dataset, score.splits),
        model_name=score.model_name or posixpath.basename(named.rstrip("/")),
        bundles=bundles,
    )
    return CheckedScoring(date, run_id, output, inputs)


def run_scoring(
    config: RaylrecConfig,
    date: str,
    run_id: str | None = None,
    say: Callable[[str], None] = print,
    checked: CheckedScoring | None = None,
) -> dict[str, Any]:
    """Score every requested user and publish ``date``; returns the manifest. ``checked``:
    ``check_scoring``'s result for the same arguments (the CLI checks before starting Ray)."""
    checked = checked or check_scoring(config, date, run_id)
    inputs, run_id = checked.inputs, checked.run_id
    lease_s = config.score.run_lease_s
    return publish_run(
        checked.output,
        checked.date,
        run_id,
        lambda prefix: _score_into(config, inputs, run_id, prefix, say),
        say,
        lease_s,
    )


@dataclass(frozen=True)
class _Inputs:
    """What a scoring run reads, resolved and checked before anything is written."""

    dataset: str
    splits: list[str]
    model_name: str
    bundles: _Bundles


def _score_into(
    config: RaylrecConfig, inputs: _Inputs, run_id: str, prefix: str, say: Callable[[str], None]
) -> tuple[int, dict[str, Any]]:
    """Score every requested user with Ray Data into ``prefix``; returns (users, the
    manifest's details)."""
    import ray
    from ray.data import ActorPoolStrategy

    score = config.score
    dataset, splits = inputs.dataset, inputs.splits
    say(f"profiles of the users to score from {dataset} (splits {', '.join(splits)})")
    bundles = inputs.bundles
    history = _history_length(bundles)
    profiles = user_profiles(dataset, splits, score.users, history)
    profiles = profiles.materialize()
    users = profiles.count()
    popular_ids, popular_scores = item_popularity(dataset, splits, score.k + _POPULAR_EXTRA)
    from raylrec.data.output import read_table

    items = Vocabulary.from_table(read_table(dataset, "items.parquet"), "item_id", "iid")
    plan = ScoringPlan(
        dataset=dataset,
        cf_bundle=bundles.retriever if bundles.retriever_is_cf else None,
        retriever_bundle=None if bundles.retriever_is_cf else bundles.retriever,
        model_bundle=bundles.reranker,
        model_name=inputs.model_name,
        run_id=run_id,
        k=score.k,
        candidates=score.candidates,
        exclude_seen=score.exclude_seen,
        index=score.index,
        item_chunk=score.item_chunk,
        rerank_rows=score.rerank_rows,
        rerank_pack_tokens=score.rerank_pack_tokens,
        popular_items=tuple(items.to_raw(popular_ids).tolist()),
        popular_scores=tuple(float(s) for s in popular_scores),
    )
    actors, gpus, cpus = _actor_resources(config)
    retrieval = (
        "CF retrieval" if bundles.retriever_is_cf else f"{bundles.retriever_description['method']['name']}"
    )
    if bundles.reranker:
        stage = f"{retrieval} of {score.candidates} candidates + LLM rerank"
    else:
        stage = retrieval if bundles.retriever_is_cf else f"{retrieval} over the whole catalogue"
    say(f"scoring {users:,} users ({stage}, top {score.k}) on {actors} actor(s)")
    recommendations = profiles.map_batches(
        Recommender,
        fn_constructor_kwargs={"plan": plan},
        batch_size=score.users_per_batch,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=actors),
        num_gpus=gpus,
        num_cpus=cpus,
        resources=score.resources_per_actor or None,
    )
    fs, root = storage.arrow_filesystem(prefix)
    with storage.errors(prefix, "write recommendations to"):  # Ray wraps botocore's errors
        recommendations.write_parquet(root, filesystem=fs)
    return users, {
        "model": inputs.model_name,
        "model_bundle": bundles.reranker,
        "cf_bundle": bundles.retriever if bundles.retriever_is_cf else None,
        "retriever_bundle": None if bundles.retriever_is_cf else bundles.retriever,
        "dataset": dataset,
        "splits": splits,
        "k": score.k,
        "candidates": score.candidates,
        "ray": {"actors": actors, "gpus_per_actor": gpus, "nodes": len(ray.nodes())},
    }
