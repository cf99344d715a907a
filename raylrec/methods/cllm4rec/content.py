"""CLLM4Rec's content corpus (arXiv 2311.01343, section 3.2: "item_j is the movie <title>",
"user_i is described as <fields>") tokenised by a Ray Data job, as the pointwise methods'
prompts are (``raylrec.llm.samples``): ``items.parquet`` and ``users.parquet`` are read in
parallel and each batch becomes texts and word ids in a worker process that loads the
tokenizer once. The collaborative and recommendation rows need no tokenizer (ID tokens and a
handful of fixed text pieces), so they are assembled in the Ray Train workers.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from raylrec import storage
from raylrec.config import BackboneConfig
from raylrec.methods.cllm4rec.corpora import ContentDoc, content_texts, docs_from_columns, tokenize_texts

if TYPE_CHECKING:
    import ray.data

__all__ = ["content_dataset", "docs_from_arrays"]

_SOURCES = (("items.parquet", "item"), ("users.parquet", "user"))


@functools.lru_cache(maxsize=2)
def _tokenizer(backbone_json: str):
    """One tokenizer per Ray Data worker process (processes are reused across tasks)."""
    from raylrec.llm.backbone import load_tokenizer

    return load_tokenizer(BackboneConfig.model_validate_json(backbone_json))


def _tokenize_task(batch: pa.Table, kind: str, backbone_json: str, max_tokens: int) -> pa.Table:
    texts = content_texts(batch, None) if kind == "item" else content_texts(None, batch)
    return tokenize_texts(texts, _tokenizer(backbone_json), max_tokens)


def content_dataset(dataset: str, backbone: BackboneConfig, max_tokens: int) -> ray.data.Dataset:
    """The tokenised content corpus of a prepared dataset (local or s3://) as a Ray Dataset with
    columns ``kind``, ``id``, ``text``, ``tokens``; rows in no particular order
    (``docs_from_arrays`` puts them in the canonical one)."""
    import ray

    fs, root = storage.arrow_filesystem(dataset)
    parts = []
    for name, kind in _SOURCES:
        path = storage.join(root, name)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            continue  # a dataset without users.parquet: item documents only
        parts.append(
            ray.data.read_parquet(path, filesystem=fs).map_batches(
                _tokenize_task,
                batch_format="pyarrow",
                fn_kwargs={
                    "kind": kind,
                    "backbone_json": backbone.model_dump_json(),
                    "max_tokens": max_tokens,
                },
            )
        )
    if not parts:
        raise FileNotFoundError(
            f"{dataset} has no items.parquet: CLLM4Rec's content corpus needs item titles"
        )
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def docs_from_arrays(arrays: dict[str, np.ndarray]) -> list[ContentDoc]:
    """The documents of ``content_dataset`` as a worker reads them (numpy columns of its
    unsplit copy), in the canonical order."""
    if not arrays:
        return []
    return docs_from_columns(arrays["kind"].tolist(), arrays["id"].tolist(), list(arrays["tokens"]))
