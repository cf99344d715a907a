"""CLLM4Rec's three corpora as token rows that mix hard text and soft ID tokens (arXiv 2311.01343,
section 3): numpy only, assembled from token ids (each text piece and each user's or item's text
is tokenised once).

A row is three parallel integer arrays over its positions: ``input_ids`` (the word; the pad id
at an ID position), ``id_users`` and ``id_items`` (the dense uid / iid of a ``user_i`` /
``item_j`` token, 0 elsewhere). Rows are left-padded (``attention_mask`` 0 on pads), so the
last column is every row's last real position. Each corpus adds its labels:

- collaborative LM: "user_i has interacted with item_a item_b ...", the user's training items
  in a fresh random order each epoch; ``item_labels[t]`` is the item the hidden state at ``t``
  must predict (the next position's item; 0: none);
- content LM: "item_j is the movie <title>, <genres>" / "user_i is described as <fields>";
  ``token_labels[t]`` is the next word of the text (-100: none);
- recommendation: "user_i has interacted with <the rest, shuffled>, user_i will interact with",
  ``mask_ratio`` of the user's items (at least one) held out as ``target_items`` (0-padded).

Serving and evaluation prompts hold all the training items (a random subset of ``max_items``
when more): the recommendation prompt without held-out items.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from raylrec.eval.ranking import ItemSets

if TYPE_CHECKING:
    import ray

__all__ = [
    "Corpora",
    "Pieces",
    "RowBuilder",
    "content_docs",
    "content_texts",
    "docs_from_columns",
    "load_corpora",
    "prompt_row",
    "serving_row",
    "shard_range",
    "streamed_item_sets",
    "tokenize_texts",
]

IGNORE = -100
# Item metadata the content text leaves out (ids and vocabulary columns).
_NOT_TEXT = {"iid", "uid", "item_id", "user_id", "title"}


@dataclass(frozen=True)
class Pieces:
    """The hard-text pieces of the prompts, tokenised once (word ids, no special tokens)."""

    interacted: list[int]  # " has interacted with"
    comma: list[int]  # ","
    will_interact: list[int]  # " will interact with"
    item_is: list[int]  # " is the movie"
    user_is: list[int]  # " is described as"
    pad_id: int

    @classmethod
    def build(cls, tokenizer, item_noun: str = "movie") -> Pieces:
        def ids(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(
            ids(" has interacted with"),
            ids(","),
            ids(" will interact with"),
            ids(f" is the {item_noun}"),
            ids(" is described as"),
            int(pad),
        )


def prompt_row(pieces: Pieces, uid: int, items: Sequence[int]) -> RowBuilder:
    """ "user_i has interacted with <items>, user_i will interact with"."""
    row = RowBuilder(pieces.pad_id).user(uid).text(pieces.interacted).item_tokens(items)
    return row.text(pieces.comma).user(uid).text(pieces.will_interact)


def serving_row(pieces: Pieces, uid: int, known: np.ndarray, max_items: int, seed: int) -> RowBuilder:
    """The serving prompt: every known item (a seeded random subset of ``max_items`` when more,
    the same subset for the same (seed, user) in evaluation and batch scoring)."""
    items = np.random.default_rng([seed, uid]).permutation(np.asarray(known, np.int64))[:max_items]
    return prompt_row(pieces, uid, items)


class RowBuilder:
    """One row, position by position: words, a user token, item tokens, and labels."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.words: list[int] = []
        self.users: list[int] = []
        self.items: list[int] = []
        self.item_labels: list[int] = []
        self.token_labels: list[int] = []

    def __len__(self) -> int:
        return len(self.words)

    def _add(self, words: Sequence[int], users: Sequence[int], items: Sequence[int]) -> None:
        self.words += words
        self.users += users
        self.items += items
        self.item_labels += [0] * len(words)
        self.token_labels += [IGNORE] * len(words)

    def text(self, ids: Sequence[int]) -> RowBuilder:
        self._add(list(ids), [0] * len(ids), [0] * len(ids))
        return self

    def user(self, uid: int) -> RowBuilder:
        self._add([self.pad_id], [int(uid)], [0])
        return self

    def item_tokens(self, iids: Sequence[int]) -> RowBuilder:
        n = len(iids)
        self._add([self.pad_id] * n, [0] * n, [int(i) for i in iids])
        return self

    def predict_items(self, start: int) -> RowBuilder:
        """Positions ``start - 1 ..``: each predicts the item token after it (next-item LM)."""
        for t in range(max(start, 1), len(self.items)):
            self.item_labels[t - 1] = self.items[t]
        return self

    def predict_text(self, start: int) -> RowBuilder:
        """Positions ``start - 1 ..``: each predicts the word after it (the content LM)."""
        for t in range(max(start, 1), len(self.words)):
            self.token_labels[t - 1] = self.words[t]
        return self


def pad_rows(
    rows: Sequence[RowBuilder], targets: Sequence[Sequence[int]] | None = None
) -> dict[str, np.ndarray]:
    """Left-pad ``rows`` into one batch (the arrays of the module docstring)."""
    width = max(len(r) for r in rows)
    n = len(rows)
    pad = rows[0].pad_id
    out = {
        "input_ids": np.full((n, width), pad, np.int64),
        "attention_mask": np.zeros((n, width), np.int64),
        "id_users": np.zeros((n, width), np.int64),
        "id_items": np.zeros((n, width), np.int64),
        "item_labels": np.zeros((n, width), np.int64),
        "token_labels": np.full((n, width), IGNORE, np.int64),
    }
    for r, row in enumerate(rows):
        lo = width - len(row)
        out["input_ids"][r, lo:] = row.words
        out["attention_mask"][r, lo:] = 1
        out["id_users"][r, lo:] = row.users
        out["id_items"][r, lo:] = row.items
        out["item_labels"][r, lo:] = row.item_labels
        out["token_labels"][r, lo:] = row.token_labels
    if targets is not None:
        most = max(1, max(len(t) for t in targets))
        out["target_items"] = np.zeros((n, most), np.int64)
        for r, t in enumerate(targets):
            out["target_items"][r, : len(t)] = t
    return out


@dataclass
class ContentDoc:
    """One user's or item's text: ``kind`` "user" or "item", its dense id, its text tokens."""

    kind: str
    id: int
    tokens: list[int]


def content_texts(items: pa.Table | None, users: pa.Table | None) -> pa.Table:
    """The content corpus's texts (``kind``, ``id``, ``text``) from the dataset's metadata: items
    by title (and genres, when the data has them), users by their demographic fields where
    ``users.parquet`` has any. On MovieLens this is what the data has (the paper's reviews are
    not in it). Row by row, so it runs on any batch of either table."""
    kinds: list[str] = []
    ids: list[int] = []
    texts: list[str] = []
    if items is not None and "title" in items.schema.names:
        extra = [c for c in items.schema.names if c not in _NOT_TEXT and c in ("genres", "genre")]
        columns = {c: items[c].to_pylist() for c in ["title", *extra]}
        for row, iid in enumerate(items["iid"].to_pylist()):
            if not iid:
                continue
            parts = [str(columns["title"][row] or "")]
            parts += [str(columns[c][row]).replace("|", ", ") for c in extra if columns[c][row]]
            kinds.append("item")
            ids.append(int(iid))
            texts.append(" " + ", ".join(p for p in parts if p))
    if users is not None:
        fields = [c for c in users.schema.names if c not in _NOT_TEXT]
        columns = {c: users[c].to_pylist() for c in fields}
        for row, uid in enumerate(users["uid"].to_pylist() if fields else []):
            parts = [
                f"{c.replace('_', ' ')} {columns[c][row]}" for c in fields if columns[c][row] is not None
            ]
            if uid and parts:
                kinds.append("user")
                ids.append(int(uid))
                texts.append(" " + ", ".join(parts))
    return pa.table(
        {
            "kind": pa.array(kinds, pa.string()),
            "id": pa.array(ids, pa.int64()),
            "text": pa.array(texts, pa.string()),
        }
    )


def tokenize_texts(table: pa.Table, tokenizer, max_tokens: int) -> pa.Table:
    """``table`` (``content_texts``) with ``tokens``: each text's word ids, no special tokens, at
    most ``max_tokens``."""
    texts = table["text"].to_pylist()
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return table.append_column("tokens", pa.array([list(t)[:max_tokens] for t in ids], pa.list_(pa.int64())))


def docs_from_columns(
    kinds: Sequence[str], ids: Sequence[int], tokens: Sequence[Sequence[int]]
) -> list[ContentDoc]:
    """Content documents in one canonical order (items by id, then users by id), whatever order
    the rows arrived in: each epoch's seeded permutation indexes this list, so a Ray Data job
    and a plain process train on the same batches."""
    docs = [
        ContentDoc(str(k), int(i), [int(t) for t in tok])
        for k, i, tok in zip(kinds, ids, tokens, strict=True)
    ]
    docs.sort(key=lambda d: (d.kind != "item", d.id))
    return docs


def content_docs(
    tokenizer, items: pa.Table | None, users: pa.Table | None, max_tokens: int
) -> list[ContentDoc]:
    """The content corpus tokenised in this process (``content_texts``, then the tokenizer);
    ``raylrec.methods.cllm4rec.content`` is the same as a Ray Data job."""
    table = tokenize_texts(content_texts(items, users), tokenizer, max_tokens)
    return docs_from_columns(table["kind"].to_pylist(), table["id"].to_pylist(), table["tokens"].to_pylist())


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """This rank's slice of ``n`` rows in a global order: every rank gets ``n // world`` rows
    (so every rank runs the same number of batches: ZeRO's collectives stay in lockstep)."""
    per_rank = n // world
    return rank * per_rank, (rank + 1) * per_rank


@dataclass
class Corpora:
    """What CLLM4Rec trains and evaluates on: each user's training items (``train``) and
    held-out items (``valid``, may be None), the content documents and the prompt pieces."""

    num_users: int
    num_items: int
    train: ItemSets
    valid: ItemSets | None
    docs: list[ContentDoc]
    pieces: Pieces
    max_items: int = 100
    mask_ratio: float = 0.2

    def users_with_train(self) -> np.ndarray:
        return np.flatnonzero(self.train.sizes(0, self.train.num_users) > 0)

    def users_with_valid(self) -> np.ndarray:
        if self.valid is None:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.valid.sizes(0, self.valid.num_users) > 0)

    def items_of(self, uid: int) -> np.ndarray:
        return self.train.indices[self.train.indptr[uid] : self.train.indptr[uid + 1]]

    # --- rows -------------------------------------------------------------------------------

    def collaborative_row(self, uid: int, rng: np.random.Generator) -> RowBuilder:
        items = rng.permutation(self.items_of(uid))[: self.max_items]
        row = RowBuilder(self.pieces.pad_id).user(uid).text(self.pieces.interacted)
        start = len(row)
        return row.item_tokens(items).predict_items(start)

    def prompt_row(self, uid: int, items: np.ndarray) -> RowBuilder:
        return prompt_row(self.pieces, uid, items)

    def recommendation_row(self, uid: int, rng: np.random.Generator) -> tuple[RowBuilder, np.ndarray]:
        """The masked prompt and its held-out items (the paper's ``max(1, int(0.2 n))``)."""
        items = rng.permutation(self.items_of(uid))
        held = max(1, int(self.mask_ratio * len(items)))
        return self.prompt_row(uid, items[held:][: self.max_items]), np.sort(items[:held])

    def content_row(self, doc: ContentDoc) -> RowBuilder:
        p = self.pieces
        row = RowBuilder(p.pad_id)
        if doc.kind == "item":
            row.item_tokens([doc.id]).text(p.item_is)
        else:
            row.user(doc.id).text(p.user_is)
        start = len(row)
        return row.text(doc.tokens).predict_text(start)

    # --- epochs -----------------------------------------------------------------------------

    def content_batches(
        self, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
    ) -> Iterator[dict[str, np.ndarray]]:
        order = np.random.default_rng([seed, epoch, 1]).permutation(len(self.docs))
        lo, hi = shard_range(len(order), rank, world)
        mine = order[lo:hi]
        for start in range(0, len(mine), batch_size):
            yield pad_rows([self.content_row(self.docs[i]) for i in mine[start : start + batch_size]])

    def collaborative_batches(
        self, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
    ) -> Iterator[dict[str, np.ndarray]]:
        users = self.users_with_train()
        rng = np.random.default_rng([seed, epoch, 2])
        order = users[rng.permutation(len(users))]
        lo, hi = shard_range(len(order), rank, world)
        for start in range(lo, hi, batch_size):
            chunk = order[start : min(start + batch_size, hi)]
            rows = [
                self.collaborative_row(int(u), np.random.default_rng([seed, epoch, 2, int(u)])) for u in chunk
            ]
            batch = pad_rows(rows)
            batch["uid"] = chunk.astype(np.int64)
            yield batch

    def recommendation_batches(
        self, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
    ) -> Iterator[dict[str, np.ndarray]]:
        users = self.users_with_train()
        order = users[np.random.default_rng([seed, epoch, 3]).permutation(len(users))]
        lo, hi = shard_range(len(order), rank, world)
        for start in range(lo, hi, batch_size):
            chunk = order[start : min(start + batch_size, hi)]
            pairs = [
                self.recommendation_row(int(u), np.random.default_rng([seed, epoch, 3, int(u)]))
                for u in chunk
            ]
            batch = pad_rows([p[0] for p in pairs], [p[1] for p in pairs])
            batch["uid"] = chunk.astype(np.int64)
            yield batch

    def steps(self, kind: str, batch_size: int, world: int = 1) -> int:
        """Batches per epoch of one corpus on each rank."""
        n = len(self.docs) if kind == "content" else len(self.users_with_train())
        lo, hi = shard_range(n, 0, world)
        return -(-(hi - lo) // batch_size)


def streamed_item_sets(
    dataset: str, implicit: bool, valid_split: str | None = "valid", known_splits: Sequence[str] = ("train",)
) -> list[ray.ObjectRef]:
    """The (known, valid) item sets of ``load_corpora`` built by Ray tasks that stream the
    splits a batch at a time (``raylrec.data.item_sets.build_item_sets``: distinct pairs, each
    user's items ascending, as ``_item_sets`` makes them); returns their object-store references
    (the valid one absent when the dataset has no such split). A worker reads them zero-copy:
    one copy per node, none in the driver."""
    from raylrec.cf.streaming import item_sets_refs
    from raylrec.data.output import read_meta

    counts = read_meta(dataset)["counts"]
    wanted = [(list(known_splits), not implicit, True)]
    if valid_split and valid_split in counts["splits"]:
        wanted.append(([valid_split], not implicit, True))
    return item_sets_refs(dataset, wanted, int(counts["num_users"]))


def _item_sets(table: pa.Table, num_users: int, implicit: bool) -> ItemSets:
    keep = np.ones(table.num_rows, bool) if implicit else table["label"].to_numpy() > 0.5
    uid = table["uid"].to_numpy().astype(np.int64)[keep]
    iid = table["iid"].to_numpy().astype(np.int64)[keep]
    pairs = np.unique(np.stack([uid, iid], 1), axis=0) if len(uid) else np.zeros((0, 2), np.int64)
    return ItemSets.from_pairs(pairs[:, 0], pairs[:, 1], num_users)


def load_corpora(
    dataset: str,
    tokenizer,
    *,
    max_items: int = 100,
    mask_ratio: float = 0.2,
    content_max_tokens: int = 48,
    item_noun: str = "movie",
    implicit: bool = True,
    valid_split: str | None = "valid",
    known_splits: Sequence[str] = ("train",),
    docs: list[ContentDoc] | None = None,
    item_sets: tuple[ItemSets, ItemSets | None] | None = None,
) -> Corpora:
    """The corpora of a prepared dataset (``raylrec data prepare``): the items of
    ``known_splits`` (training: the train split; batch scoring: every split it counts as known),
    the valid split's (the held-out items of evaluation), and ``items.parquet`` /
    ``users.parquet`` (tokenised here unless ``docs`` gives the content corpus already
    tokenised, as a Ray Train worker receives it from ``content.content_dataset``).
    ``item_sets``: the (known, valid) item sets already built, as a Ray Train worker reads them
    from the object store (``streamed_item_sets``); the splits are then not read here."""
    from raylrec.data.output import read_meta, read_table

    counts = read_meta(dataset)["counts"]
    num_users, num_items = int(counts["num_users"]), int(counts["num_items"])
    if item_sets is not None:
        train, valid = item_sets
    else:
        known = [read_table(dataset, split, ["uid", "iid", "label"]) for split in known_splits]
        train = _item_sets(pa.concat_tables(known), num_users, implicit)
        valid = None
        if valid_split and valid_split in counts["splits"]:
            valid = _item_sets(read_table(dataset, valid_split), num_users, implicit)
    if docs is None:
        items = read_table(dataset, "items.parquet")
        try:
            users = read_table(dataset, "users.parquet")
        except FileNotFoundError:
            users = None
        docs = content_docs(tokenizer, items, users, content_max_tokens)
    return Corpora(
        num_users,
        num_items,
        train,
        valid,
        docs,
        Pieces.build(tokenizer, item_noun),
        max_items,
        mask_ratio,
    )
