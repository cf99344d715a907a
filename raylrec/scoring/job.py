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


def _resolve(config: RaylrecConfig) -> tuple[str, str | None, str, dict[str, Any], dict[str, Any] | None]:
    """(output, model bundle, retrieval CF bundle, its description, the model's), all checked."""
    from raylrec.methods.bundle import check_model_bundle

    score = config.score
    if not score.output:
        raise ConfigError("set score.output (where recommendations go: a local path or s3://)")
    output = storage.absolute(score.output)
    storage.check_reachable(output)
    model_bundle = storage.absolute(score.model_bundle) if score.model_bundle else None
    model_description = check_model_bundle(model_bundle) if model_bundle else None
    if score.cf_bundle:
        cf_bundle = storage.absolute(score.cf_bundle)
    elif model_bundle and model_description.get("cf_bundle_source"):
        cf_bundle = storage.join(model_bundle, "cf")
    else:
        raise ConfigError("set score.cf_bundle (retrieval needs a CF bundle; this model bundle has none)")
    return output, model_bundle, cf_bundle, check_cf_bundle(cf_bundle), model_description


def _history_length(cf: dict[str, Any], model: dict[str, Any] | None) -> int:
    lengths = [50, bundle_history_len(cf)]
    if model is not None:
        lengths.append(int(model["prompt"]["history_items"]))
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


def run_scoring(
    config: RaylrecConfig, date: str, run_id: str | None = None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Score every requested user and publish ``date``; returns the manifest."""
    recs.check_date(date)
    run_id = recs.check_run_id(run_id or new_run_id(date))
    output, model_bundle, cf_bundle, cf_description, model_description = _resolve(config)
    score = config.score
    dataset = storage.absolute(score.dataset or config.dataset or cf_description["dataset"]["path"])
    read_meta(dataset)  # a clear error for a missing or unfinished dataset
    inputs = _Inputs(
        dataset=dataset,
        splits=known_splits(dataset, score.splits),
        model_name=score.model_name or posixpath.basename((model_bundle or cf_bundle).rstrip("/")),
        model_bundle=model_bundle,
        cf_bundle=cf_bundle,
        cf_description=cf_description,
        model_description=model_description,
    )
    lease_s = score.run_lease_s
    return publish_run(
        output, date, run_id, lambda prefix: _score_into(config, inputs, run_id, prefix, say), say, lease_s
    )


@dataclass(frozen=True)
class _Inputs:
    """What a scoring run reads, resolved and checked before anything is written."""

    dataset: str
    splits: list[str]
    model_name: str
    model_bundle: str | None
    cf_bundle: str
    cf_description: dict[str, Any]
    model_description: dict[str, Any] | None


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
    history = _history_length(inputs.cf_description, inputs.model_description)
    profiles = user_profiles(dataset, splits, score.users, history)
    profiles = profiles.materialize()
    users = profiles.count()
    popular_ids, popular_scores = item_popularity(dataset, splits, score.k + _POPULAR_EXTRA)
    from raylrec.data.output import read_table

    items = Vocabulary.from_table(read_table(dataset, "items.parquet"), "item_id", "iid")
    plan = ScoringPlan(
        dataset=dataset,
        cf_bundle=inputs.cf_bundle,
        model_bundle=inputs.model_bundle,
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
    stage = "CF retrieval + LLM rerank" if inputs.model_bundle else "CF retrieval"
    say(
        f"scoring {users:,} users ({stage}, {score.candidates} candidates, top {score.k})"
        f" on {actors} actor(s)"
    )
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
        "model_bundle": inputs.model_bundle,
        "cf_bundle": inputs.cf_bundle,
        "dataset": dataset,
        "splits": splits,
        "k": score.k,
        "candidates": score.candidates,
        "ray": {"actors": actors, "gpus_per_actor": gpus, "nodes": len(ray.nodes())},
    }
