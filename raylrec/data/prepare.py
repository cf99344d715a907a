"""``raylrec data prepare``: the preparation pipeline on Ray Data.

    read -> validate (bad rows quarantined with a reason) -> labels -> optional k-core
    -> vocabularies, dense ids -> shuffle by user (staged files) -> de-duplicate -> split
    -> point-in-time histories -> Parquet per split + vocabularies + metadata
    -> meta.json (written last: the commit)

The steps are ``raylrec.data.pipeline``'s; an append (``data.append``) is
``raylrec.data.append``'s. Events stream through Ray; the driver holds only per-id tables
(vocabularies, counts) and per-block summaries. ``rows in = rows out + rows quarantined`` is
checked before committing.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pyarrow.compute as pc
import ray
from ray.exceptions import RayError

from raylrec import storage
from raylrec.config import DataConfig
from raylrec.data.append import append
from raylrec.data.days import BULK, assemble, day_name
from raylrec.data.files import SourceError
from raylrec.data.indexing import id_counts
from raylrec.data.output import commit, input_paths, new_write_id, prepare_output_dir
from raylrec.data.pipeline import (
    OUTPUT_COLUMNS,
    PipelineError,
    Progress,
    dataset_counts,
    events_by_user,
    history_items_bound,
    keep_valid,
    split_bounds,
    validated,
    with_metadata,
    write_parts,
    write_quarantine,
    write_tails,
)
from raylrec.data.vocab import Vocabulary
from raylrec.registry import import_object

__all__ = ["PipelineError", "prepare", "OUTPUT_COLUMNS"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _input_errors_unwrapped() -> Iterator[None]:
    """Bad input found inside a Ray task reaches the driver wrapped in Ray's exceptions; raise
    the original error, whose message names the file, row or field."""
    try:
        yield
    except Exception as error:
        original = _input_error_in(error)
        if original is None or original is error:
            raise
        raise original from None


def _input_error_in(error: BaseException) -> BaseException | None:
    """The SourceError/StorageError a (possibly Ray-wrapped) exception was caused by."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (SourceError, storage.StorageError)) and not isinstance(current, RayError):
            return current
        pending += [getattr(current, "cause", None), current.__cause__, current.__context__]
    # Ray Data pickles a task's exception without its __cause__: only its text is left.
    found = re.search(r"raylrec\.[\w.]*\.(SourceError|StorageError): (.+)", str(error))
    if found:
        return (
            SourceError(found.group(2))
            if found.group(1) == "SourceError"
            else storage.StorageError(found.group(2))
        )
    return None


def prepare(config: DataConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole pipeline for ``config`` and return the ``meta.json`` it committed."""
    with _input_errors_unwrapped():
        return _prepare(config, progress)


def _prepare(config: DataConfig, progress: Progress | None) -> dict[str, Any]:
    say = progress or log.info
    started = time.perf_counter()
    if config.append:
        return append(config, say)
    if config.source.carries_splits:  # its files hold train/valid/test already (the CoLLM split)
        return import_object(config.source.prepare)(config, say)

    out = config.output
    prepare_output_dir(out, config.overwrite, input_paths(config.source))
    source = config.source.load(config.validation)
    checked, rows_in = validated(config, source, say)

    good = checked.map_batches(keep_valid, batch_format="pyarrow")
    counts = id_counts(good, ["user_id", "item_id"])
    users, items = Vocabulary.from_counts(counts["user_id"]), Vocabulary.from_counts(counts["item_id"])
    good_rows = int(pc.sum(counts["user_id"]["count"]).as_py() or 0)
    say(f"{good_rows:,} valid rows; {len(users):,} users, {len(items):,} items")
    if good_rows == 0:
        raise SourceError(f"{config.source.type}: no valid rows (see the quarantine reasons)")

    rolling = config.split.appendable
    last = int(good.max("timestamp")) if rolling else None  # one pass: cutoffs and watermark
    cutoffs, end = split_bounds(config, good, good_rows, say, last)
    vocab_refs = (ray.put(users.ids), ray.put(items.ids))
    per_user = counts["user_id"]["count"].to_numpy()
    bound = history_items_bound(per_user, config.history.max_len)
    events = events_by_user(config, checked, vocab_refs, good_rows, cutoffs, end, say, history_items=bound)
    write_id = new_write_id()
    parts = write_parts(events, out, write_id, cutoffs[0] if rolling else None, say)
    versioning: dict[str, Any] = {}
    if rolling:  # appendable: day files, and the users' tails the next day's histories continue
        bulk = parts.get(("train", BULK))
        days = {day_name(day): record for (_, day), record in parts.items() if day != BULK}
        splits = assemble(bulk, days, cutoffs)
        versioning = {
            "version": 1,
            "watermark": last,
            "bulk": bulk,
            "days": days,
            "tails": write_tails(events, out, write_id, config.history.max_len),
        }
    else:
        splits = {split: record for (split, _), record in parts.items()}
    rows_quarantined, reasons, quarantine_files = write_quarantine(
        checked, events, vocab_refs, source.files, out, write_id, say
    )
    rows_out = sum(s["rows"] for s in splits.values())
    if rows_in != rows_out + rows_quarantined:
        raise PipelineError(f"rows in {rows_in} != rows out {rows_out} + quarantined {rows_quarantined}")

    users_table = with_metadata(users, "user_id", "uid", source.users)
    items_table = with_metadata(items, "item_id", "iid", source.items)
    protocol = {
        "split": config.split.model_dump(mode="json"),
        "label": config.label.model_dump(mode="json"),
        "history": config.history.model_dump(mode="json"),
        "kcore": config.kcore,
        "validation": config.validation.model_dump(mode="json"),
        # where train ends and test starts, for every time split (a warm start's "new rows")
        "temporal_cutoffs": config.split.recorded_cutoffs(cutoffs),
    }
    counts_meta = dataset_counts(rows_in, rows_out, rows_quarantined, reasons, splits, users, items)
    meta = commit(
        out,
        protocol=protocol,
        counts=counts_meta,
        split_hashes={s: v["hash"] for s, v in splits.items()},
        users=users_table,
        items=items_table,
        source=source.description,
        columns=OUTPUT_COLUMNS,
        files={s: v["files"] for s, v in splits.items()}
        | ({"quarantine": quarantine_files} if quarantine_files else {}),
        started=started,
        extra=versioning,
    )
    say(f"committed {out} (content hash {meta['content_hash'][:16]}…) in {meta['elapsed_s']} s")
    return meta
