"""RLMRec's profile generation as a Ray Data batch job (arXiv 2310.15950, section 3.2).

Items first, then users (a user's prompt shows their items' profiles). For each kind the job
works out which (id, prompt_hash) it wants, keeps those the directory already holds (see
``raylrec.profiles.store``), and generates only the rest: a rerun after a kill redoes the
chunks that were not written, and a rerun with the same inputs does nothing and says so.

The work is cut into chunks of ids (``[c*N, (c+1)*N)``) and each chunk into batches of
prompts sorted by id, so a chunk redone after a kill is batched (padded) exactly as in an
uninterrupted run and greedy decoding gives the same text. One Ray Data row is one batch;
``map_batches`` sends it to an actor of a pool that loads the backbone once per actor (a GPU
each when the cluster has GPUs), which runs batched ``generate`` (left padding, KV cache,
greedy or seeded sampling, bounded ``max_new_tokens``). An answer that is not the JSON asked
for is retried once, sampled with a fixed seed per batch; still unparsed, it is kept as raw text
with ``parse_ok = false``. The driver writes each chunk as one file once all of its rows are
back, and prints a line per chunk.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from raylrec import storage
from raylrec.data.output import read_meta, read_table
from raylrec.profiles import store
from raylrec.profiles.config import BackboneConfig, GenerationConfig, ProfilesConfig
from raylrec.profiles.prompts import (
    PROMPT_VERSION,
    PromptRow,
    generation_salt,
    item_attributes,
    item_prompts,
    parse_profile,
    render_chat,
    summary_text,
    user_prompts,
)

__all__ = ["ProfileWriter", "generate_profiles", "plan_batches", "generate_texts", "dataset_user_ids"]


SUMMARY_END = ('",', '"}', '" ,', '" }')


def generate_texts(
    backbone: Any, prompts: Sequence[str], generation: GenerationConfig, seed: int, sample: bool
) -> tuple[list[str], list[int]]:
    """One batched ``generate`` over ``prompts`` (chat-rendered text): left-padded, with the KV
    cache, greedy or sampled after ``torch.manual_seed(seed)``. Each prompt is continued from
    ``generation.answer_prefix``, and with ``generation.reasoning`` off a row stops once the
    summary's string closes. Returns the answers (the prefix included) and the tokens each
    generated (up to and including its end token)."""
    import torch
    import transformers

    tokenizer, model = backbone.tokenizer, backbone.model
    prefix = generation.answer_prefix
    encoded = tokenizer(
        [p + prefix for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False
    )
    encoded = {k: v.to(model.device) for k, v in encoded.items()}
    eos = tokenizer.eos_token_id
    options: dict[str, Any] = {
        "max_new_tokens": generation.max_new_tokens,
        "do_sample": sample,
        "use_cache": True,
    }
    if sample:
        options.update(temperature=generation.temperature, top_p=generation.top_p, top_k=0)
    stop: dict[str, Any] = {}
    if not generation.reasoning:
        # The summary's string ends at its closing quote, followed by the comma before
        # "reasoning" or the object's brace; a quote inside it would be escaped.
        options["stop_strings"] = list(SUMMARY_END)
        stop["tokenizer"] = tokenizer
    config = transformers.GenerationConfig(pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, **options)
    torch.manual_seed(seed)
    with torch.inference_mode():
        output = model.generate(**encoded, generation_config=config, **stop)
    new = output[:, encoded["input_ids"].shape[1] :].cpu()
    stops = options.get("stop_strings", [])
    counts = [
        _generated_count(row, tokenizer, prompt + prefix, stops)
        for row, prompt in zip(new.tolist(), prompts, strict=True)
    ]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [prefix + t.strip() for t in texts], counts


def _generated_count(row: list[int], tokenizer: Any, given: str, stops: Sequence[str]) -> int:
    """The tokens ``generate`` wrote for one row after ``given`` (its prompt and the answer
    prefix), its end token included, padding not: a row ends at its first end token, at a stop
    string (then padded), or at ``max_new_tokens``."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos in row:
        end = row.index(eos)
        # With pad == eos (SmolLM2's tokenizer) the padding after a row that stopped at a stop
        # string reads as an end token. Such a row's last token completed a stop string (one
        # that may begin in the given text: HF matches the prompt's text too).
        overlap = max((len(s) for s in stops), default=1) - 1
        tail = given[-overlap:] if overlap else ""
        before, through = tail + tokenizer.decode(row[: end - 1]), tail + tokenizer.decode(row[:end])
        stopped = end > 0 and any(through.count(s) > before.count(s) for s in stops)
        return end if stopped else end + 1
    length = len(row)
    while length and row[length - 1] == pad:
        length -= 1
    return length


class ProfileWriter:
    """Loaded once per Ray Data actor: the backbone, then one batch of prompts per input row."""

    def __init__(self, backbone: BackboneConfig, generation: GenerationConfig, threads: int = 1):
        import torch

        from raylrec.llm.backbone import load_backbone

        if not torch.cuda.is_available():
            torch.set_num_threads(max(1, threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.backbone = load_backbone(backbone, device)
        self.generation = generation
        self.model_name = backbone.name

    def write(
        self, ids: list[int], system: str, users: list[str], hashes: list[str], kind: str
    ) -> list[dict[str, Any]]:
        """Profiles of one batch: first attempt, then one seeded sampled retry of the answers
        that are not the JSON asked for."""
        generation = self.generation
        prompts = [render_chat(self.backbone.tokenizer, system, u) for u in users]
        first = ids[0] * 1_000_003
        texts, tokens = generate_texts(
            self.backbone, prompts, generation, generation.seed + first, generation.do_sample
        )
        attempts = [1] * len(ids)
        parsed = [parse_profile(t) for t in texts]
        failed = [i for i, p in enumerate(parsed) if p is None]
        if failed and generation.retry:
            retried, retried_tokens = generate_texts(
                self.backbone, [prompts[i] for i in failed], generation, generation.retry_seed + first, True
            )
            for i, text, count in zip(failed, retried, retried_tokens, strict=True):
                texts[i], tokens[i], attempts[i], parsed[i] = text, count, 2, parse_profile(text)
        rows = []
        for i, uid in enumerate(ids):
            summary, reasoning = parsed[i] if parsed[i] is not None else (None, None)
            rows.append(
                {
                    "kind": kind,
                    "id": uid,
                    "summarization": summary,
                    "reasoning": reasoning,
                    "raw": texts[i],
                    "parse_ok": parsed[i] is not None,
                    "attempts": attempts[i],
                    "gen_tokens": tokens[i],
                    "model": self.model_name,
                    "prompt_hash": hashes[i],
                }
            )
        return rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict[str, Any]] = []
        chunks: list[int] = []
        for record in batch.to_pylist():
            out = self.write(
                record["ids"], record["system"], record["users"], record["hashes"], record["kind"]
            )
            rows += out
            chunks += [record["chunk"]] * len(out)
        schema = pa.schema([f for f in store.PROFILE_SCHEMA if f.name != "raw_id"])
        table = pa.Table.from_pylist(rows, schema=schema)
        return table.append_column("chunk", pa.array(chunks, pa.int64()))


def plan_batches(
    prompts: Sequence[PromptRow], chunk_size: int, batch_size: int
) -> dict[int, list[list[PromptRow]]]:
    """{chunk: batches}: ids ``[c*chunk_size, (c+1)*chunk_size)`` form chunk ``c``, cut into
    batches of prompts in id order: the same prompts are always batched the same way."""
    chunks: dict[int, list[PromptRow]] = defaultdict(list)
    for p in sorted(prompts, key=lambda p: p.id):
        chunks[p.id // chunk_size].append(p)
    return {
        c: [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        for c, rows in sorted(chunks.items())
    }


def _actors(config: ProfilesConfig) -> tuple[int, float]:
    import ray

    resources = ray.cluster_resources()
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    if config.actors:
        return config.actors, gpus
    if gpus:
        return max(1, int(resources["GPU"] // gpus)), gpus
    return 1, 0.0


def _generate(
    config: ProfilesConfig,
    kind: str,
    missing: Sequence[PromptRow],
    raw: dict[int, str],
    out: str,
    say: Callable[[str], None],
    use_ray: bool = True,
) -> list[store.ProfileFile]:
    """Generate ``missing`` on the actor pool (or, ``use_ray=False``, in this process); write each
    chunk as soon as it is whole (with each row's raw id from ``raw``)."""
    plan = plan_batches(missing, config.chunk_size, config.generation.batch_size)
    records = [
        {
            "kind": kind,
            "chunk": chunk,
            "ids": [p.id for p in batch],
            "system": batch[0].system,
            "users": [p.user for p in batch],
            "hashes": [p.hash for p in batch],
        }
        for chunk, batches in plan.items()
        for batch in batches
    ]
    expected = {chunk: sum(len(b) for b in batches) for chunk, batches in plan.items()}
    blocks, where = _blocks_on_ray(config, records) if use_ray else _blocks_in_process(config, records)
    say(
        f"{kind}s: generating {len(missing):,} profiles in {len(expected)} chunk(s) of up to "
        f"{config.chunk_size} ids on {where}, "
        f"batch {config.generation.batch_size}, max_new_tokens {config.generation.max_new_tokens}"
    )
    pending: dict[int, list[pa.Table]] = defaultdict(list)
    received: dict[int, int] = defaultdict(int)
    written: list[store.ProfileFile] = []
    started, done, tokens = time.perf_counter(), 0, 0
    for block in blocks:
        for chunk in sorted(set(block["chunk"].to_pylist())):
            part = block.filter(pa.compute.equal(block["chunk"], chunk))
            pending[chunk].append(part)
            received[chunk] += part.num_rows
            if received[chunk] < expected[chunk]:
                continue
            table = pa.concat_tables(pending.pop(chunk)).drop_columns(["chunk"])
            table = table.append_column(
                "raw_id", pa.array([raw[i] for i in table["id"].to_pylist()], pa.string())
            )
            written.append(store.write_chunk(out, kind, chunk, table))
            done += table.num_rows
            tokens += sum(table["gen_tokens"].to_pylist())
            ok, attempts = table["parse_ok"].to_pylist(), table["attempts"].to_pylist()
            first = sum(1 for o, a in zip(ok, attempts, strict=True) if o and a == 1)
            retry = sum(1 for o, a in zip(ok, attempts, strict=True) if o and a == 2)
            elapsed = max(time.perf_counter() - started, 1e-9)
            say(
                f"{kind}s chunk {chunk}: {table.num_rows} profiles ({first} parsed, {retry} on retry, "
                f"{table.num_rows - first - retry} unparsed); {done:,}/{len(missing):,} done, "
                f"{done / elapsed:.2f} profiles/s, {tokens / elapsed:.1f} tokens/s"
            )
    if pending:
        raise RuntimeError(f"{kind}s: chunks {sorted(pending)} came back incomplete from {where}")
    return written


def _blocks_on_ray(config: ProfilesConfig, records: list[dict[str, Any]]) -> tuple[Iterator[pa.Table], str]:
    """The generated rows of ``records`` from a Ray Data actor pool (the model loaded once per
    actor, a GPU per actor when the cluster has GPUs), as they arrive; and where they run."""
    import ray
    from ray.data import ActorPoolStrategy

    from raylrec.runtime import init_ray

    init_ray(config.ray)
    actors, gpus = _actors(config)
    ds = ray.data.from_items(records, override_num_blocks=len(records))
    results = ds.map_batches(
        ProfileWriter,
        fn_constructor_kwargs={
            "backbone": config.backbone,
            "generation": config.generation,
            "threads": int(config.cpus_per_actor),
        },
        batch_size=1,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=actors),
        num_gpus=gpus,
        num_cpus=config.cpus_per_actor,
    )
    where = f"{actors} actor(s) ({f'{gpus:g} GPU' if gpus else 'CPU'} each)"
    return results.iter_batches(batch_size=None, batch_format="pyarrow"), where


def _blocks_in_process(
    config: ProfilesConfig, records: list[dict[str, Any]]
) -> tuple[Iterator[pa.Table], str]:
    """The same rows from one ``ProfileWriter`` in this process (a GPU machine without Ray: the
    same batches, seeds and output as the actor pool's)."""
    writer = ProfileWriter(config.backbone, config.generation, threads=os.cpu_count() or 1)
    device = "GPU" if writer.backbone.model.device.type == "cuda" else "CPU"
    return (writer(pa.Table.from_pylist([r])) for r in records), f"this process ({device})"


def _settle(
    config: ProfilesConfig,
    kind: str,
    prompts: Sequence[PromptRow],
    raw: dict[int, str],
    found: Sequence[store.ProfileFile],
    out: str,
    say: Callable[[str], None],
    use_ray: bool = True,
) -> tuple[list[store.ProfileFile], int, int]:
    """The files that hold exactly the wanted rows of ``kind``: found files kept whole where
    every row is still wanted as it is, rewritten with only the wanted rows where some are not,
    and new chunks for what is missing. Returns (files, profiles generated, files rewritten).

    A found row is wanted when its (id, prompt_hash) is a prompt's (``refresh: changed``), or,
    with ``refresh: new_only``, when its raw id is a wanted item's or user's whatever its prompt
    is now; it then takes that item's or user's id in this dataset."""
    if config.refresh == "new_only":
        by_raw = {raw[p.id]: p.id for p in prompts}

        def wanted(key: tuple[int, str, str]) -> int | None:
            return by_raw.get(key[2])
    else:
        prompt_keys = {(p.id, p.hash) for p in prompts}

        def wanted(key: tuple[int, str, str]) -> int | None:
            return key[0] if key[:2] in prompt_keys else None

    claimed: set[int] = set()
    files: list[store.ProfileFile] = []
    rewritten = 0
    for f in found:
        if f.kind != kind:
            continue
        ids = f.table["id"].to_pylist()
        found_keys = zip(ids, f.table["prompt_hash"].to_pylist(), f.table["raw_id"].to_pylist(), strict=True)
        targets = [wanted(k) for k in found_keys]
        keep = []
        for target in targets:
            keep.append(target is not None and target not in claimed)
            if keep[-1]:
                claimed.add(target)
        if all(keep) and targets == ids:
            files.append(f)
        elif any(keep):
            table = f.table.filter(pa.array(keep))
            new_ids = pa.array([t for t, k in zip(targets, keep, strict=True) if k], pa.int64())
            table = table.set_column(table.schema.get_field_index("id"), "id", new_ids)
            chunk = min(new_ids.to_pylist()) // config.chunk_size
            files.append(store.write_chunk(out, kind, chunk, table))
            rewritten += 1
    missing = [p for p in prompts if p.id not in claimed]
    if missing:
        files += _generate(config, kind, missing, raw, out, say, use_ray)
    else:
        say(f"{kind}s: all {len(prompts):,} profiles are already written")
    return files, len(missing), rewritten


def raw_ids(dataset: str, kind: str) -> dict[int, str]:
    """{dense id: raw id} of the dataset's items or users."""
    name, dense, source = {
        "item": ("items.parquet", "iid", "item_id"),
        "user": ("users.parquet", "uid", "user_id"),
    }[kind]
    table = read_table(dataset, name, columns=[dense, source])
    return {int(d): str(r) for d, r in zip(table[dense].to_pylist(), table[source].to_pylist(), strict=True)}


def dataset_user_ids(dataset: str, max_users: int | None) -> list[int]:
    """The users to profile: every uid of ``users.parquet`` (the lowest ``max_users``)."""
    uids = sorted(int(u) for u in read_table(dataset, "users.parquet", columns=["uid"])["uid"].to_pylist())
    return uids[:max_users] if max_users is not None else uids


def _descriptions(files: Sequence[store.ProfileFile]) -> dict[int, str]:
    """{iid: summary} of the item profiles, a cut-off one read to where it stops
    (``summary_text``); an answer with no summary at all describes nothing."""
    out = {}
    for f in files:
        columns = (f.table[c].to_pylist() for c in ("id", "parse_ok", "summarization", "raw"))
        for iid, ok, summary, raw in zip(*columns, strict=True):
            text = summary_text(summary, raw or "", ok)
            if text:
                out[int(iid)] = text
    return out


def generate_profiles(
    config: ProfilesConfig, say: Callable[[str], None] = print, use_ray: bool = True
) -> dict[str, Any]:
    """Write (or finish, or confirm) the profiles of ``config.dataset`` into ``config.output``;
    returns the committed manifest (with ``"changed": False`` when nothing had to be done).
    ``use_ray=False`` generates in this process (``raylrec profiles generate --local``)."""
    dataset, out = storage.absolute(config.dataset), storage.absolute(config.output)
    meta = read_meta(dataset)  # a clear error for a missing or unfinished dataset
    store.claim_output(out)
    previous = store.read_manifest(out)
    found = store.existing_files(out)
    attributes = item_attributes(read_table(dataset, "items.parquet"))
    items = item_prompts(config, attributes)
    say(
        f"{len(items):,} items and their metadata from {dataset}; {len(found)} chunk file(s) already in {out}"
    )
    item_files, new_items, rewritten_items = _settle(
        config, "item", items, raw_ids(dataset, "item"), found, out, say, use_ray
    )

    users: list[PromptRow] = []
    uids = dataset_user_ids(dataset, config.max_users)
    if uids:
        train = read_table(dataset, "train", columns=["uid", "iid", "label"])
        users = user_prompts(config, train, uids, attributes, _descriptions(item_files))
    user_files, new_users, rewritten_users = _settle(
        config, "user", users, raw_ids(dataset, "user"), found, out, say, use_ray
    )

    files = item_files + user_files
    unchanged = (
        previous is not None
        and not (new_items or new_users or rewritten_items or rewritten_users)
        and sorted(e["path"] for e in previous["files"]) == sorted(f.path for f in files)
    )
    if unchanged:
        say(f"profiles in {out} are up to date ({len(items):,} items, {len(users):,} users): nothing to do")
        return {**previous, "changed": False}
    details = {
        "dataset": dataset,
        "dataset_hash": meta.get("content_hash"),
        "model": config.backbone.name,
        "prompt_version": PROMPT_VERSION,
        "generation_salt": generation_salt(config),
        "domain": config.domain,
        "refresh": config.refresh,
        "user_sample": config.users.model_dump(mode="json"),
        "last_run": {"generated": {"item": new_items, "user": new_users}},
    }
    manifest = store.write_manifest(out, files, details)
    removed = store.remove_unlisted(out, files, found)
    parse = manifest["parse"]
    say(
        f"committed {manifest['rows']['item']:,} item and {manifest['rows']['user']:,} user profiles "
        f"in {out} "
        f"(generated {new_items:,} + {new_users:,} now; parse item {parse['item']}, user {parse['user']}"
        + (f"; removed {len(removed)} superseded file(s))" if removed else ")")
    )
    return {**manifest, "changed": True}
