"""The scoring actor: a batch of user profiles in, their top-K recommendation rows out.

Per user: retrieval of ``candidates`` items (seen items excluded) by the CF bundle or by a
full-catalog method (CLLM4Rec: one forward pass ranks every item), then, with a pointwise model
bundle, the LLM reranks them (shared-prefix scoring) and the top ``k`` by its logit are kept;
without one, the top ``k`` by retrieval score (``source`` "cf", or the method's name). Users
the retriever cannot rank (unknown to MF/LightGCN or to the method's ID tables, without a
training row in the CF bundle, or no history for SASRec) get the fallback: the most popular
items they have not seen (``source = "popular"``; a user who has seen all of them gets them
anyway, so nobody is left without rows). Every row says which of these produced it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from raylrec import storage
from raylrec.cf.bundle import bundle_history_len, cf_vocabularies, load_cf_bundle, trained_users
from raylrec.data.arrays import list_rows
from raylrec.data.output import read_table
from raylrec.data.vocab import Vocabulary
from raylrec.scoring.publish import RECS_SCHEMA
from raylrec.scoring.rerank import Reranker, RerankRequest
from raylrec.scoring.retrieval import FaissIndex, exact_top_n

__all__ = ["CatalogRetriever", "ScoringPlan", "Recommender"]

_PROGRESS_EVERY_S = 15.0


@dataclass(frozen=True)
class ScoringPlan:
    """Everything an actor needs, resolved on the driver (paths absolute, ids raw)."""

    dataset: str
    cf_bundle: str | None  # the retriever: a CF bundle, or
    retriever_bundle: str | None  # a full-catalog model bundle
    model_bundle: str | None  # the pointwise reranker
    model_name: str
    run_id: str
    k: int
    candidates: int
    exclude_seen: bool
    index: str
    item_chunk: int
    rerank_rows: int
    rerank_pack_tokens: int
    popular_items: tuple[str, ...]  # raw ids, most popular first
    popular_scores: tuple[float, ...]


def _pad(rows: list[np.ndarray], length: int) -> torch.Tensor:
    out = np.zeros((len(rows), length), np.int64)
    for i, row in enumerate(rows):
        row = row[-length:]
        out[i, length - len(row) :] = row
    return torch.from_numpy(out)


class CatalogRetriever:
    """A full-catalog method's bundle (CLLM4Rec) as the retriever: each user's top ``n`` over
    every item from ``RecMethod.recommend``, their known items masked, in the bundle's own id
    space (its ``users.parquet`` and ``items.parquet``), mapped back to raw ids."""

    def __init__(self, path: str, device: torch.device, item_chunk: int):
        from raylrec.methods.bundle import load_model_bundle

        bundle = load_model_bundle(path, device)
        if bundle.users is None:
            raise ValueError(
                f"model bundle {path} has no users.parquet (written before bundles held one): "
                "retrain it to rank with it"
            )
        self.method, self.item_chunk = bundle.method, item_chunk
        self.name = bundle.method.name
        self.users = Vocabulary.from_table(bundle.users, "user_id", "uid")
        self.items = Vocabulary.from_table(bundle.items, "item_id", "iid")

    def top_n(
        self, users: np.ndarray, seen: list[np.ndarray], n: int, exclude_seen: bool
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """(the rows of ``users`` the method has an ID token for, their raw top ids, scores);
        ``seen``: each user's items in the bundle's own numbering (0: an item it does not know)."""
        uid = self.users.to_dense(users)
        rows = np.flatnonzero(uid > 0)
        if not len(rows):
            return rows, [], []
        known = [seen[r][seen[r] > 0] for r in rows]  # items the bundle does not know are not masked
        n = min(n, self.method.num_items - 1)
        scores, ids = self.method.recommend(
            uid[rows], known, n, exclude_seen=exclude_seen, item_chunk=self.item_chunk
        )
        found = ids > 0
        return (
            rows,
            [self.items.to_raw(i[f]) for i, f in zip(ids, found, strict=True)],
            [s[f] for s, f in zip(scores, found, strict=True)],
        )


class Recommender:
    """Loaded once per Ray Data actor (``map_batches(Recommender, compute=ActorPoolStrategy)``)."""

    def __init__(self, plan: ScoringPlan, device: str | None = None):
        self.plan = plan
        self._scored, self._started = 0, time.perf_counter()
        self._last_report = self._started
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.data_items = Vocabulary.from_table(read_table(plan.dataset, "items.parquet"), "item_id", "iid")
        self.cf, self.catalog = None, None
        if plan.cf_bundle:
            self.cf = load_cf_bundle(plan.cf_bundle)
            self.cf_users, self.cf_items = cf_vocabularies(plan.cf_bundle)
            # a user with no training row (first seen in the held-out days) has an embedding
            # nothing trained: it gets the popularity fallback, not a ranking by noise
            self.cf_trained = trained_users(plan.cf_bundle, self.cf.config["num_users"])
            self.cf_history = bundle_history_len(self.cf.config)
            self.cf.encoder.to(self.device)
            self.item_table = self.cf.items.to(self.device)
            self.index = FaissIndex(self.cf.items) if plan.index == "faiss" else None
            self.retrieval_source = "cf"
        else:
            self.catalog = CatalogRetriever(plan.retriever_bundle, self.device, plan.item_chunk)
            self.retrieval_source = self.catalog.name
        # A user's seen items arrive in the dataset's numbering; the retriever masks them in its
        # own. One map per actor (an int per catalogue item) moves a whole list in one take, so
        # the cost per user is its list's length in ints, never raw-id strings.
        retriever_items = self.cf_items if self.cf is not None else self.catalog.items
        self.seen_to_retriever = self.data_items.dense_map(retriever_items)
        self.popular_dense = self.data_items.to_dense(np.asarray(plan.popular_items, dtype=object))
        self.reranker = None
        if plan.model_bundle:
            from raylrec.methods.bundle import load_model_bundle

            bundle = load_model_bundle(plan.model_bundle, self.device)
            own_cf = storage.join(plan.model_bundle, "cf")
            has_cf = bundle.method.cf is not None
            self.rr_items = Vocabulary.from_table(bundle.items, "item_id", "iid")
            self.rr_users = cf_vocabularies(own_cf)[0] if has_cf else None
            rr_history = (
                bundle_history_len(storage.read_json(storage.join(own_cf, "config.json"))) if has_cf else 0
            )
            self.reranker = Reranker(
                bundle.method, bundle.prompts, rr_history, plan.rerank_rows, plan.rerank_pack_tokens
            )

    # --- stages -------------------------------------------------------------------------------

    def _user_vectors(
        self, users: np.ndarray, histories: list[np.ndarray]
    ) -> tuple[torch.Tensor, np.ndarray]:
        """CF vectors of the users that have one, and which those are."""
        if self.cf_history:
            mapped = [h[h > 0] for h in (self.cf_items.to_dense(h) for h in histories)]
            has = np.array([len(h) > 0 for h in mapped], bool)
            if not has.any():
                return torch.zeros(0, self.item_table.shape[1]), has
            padded = _pad([m for m, keep in zip(mapped, has, strict=True) if keep], self.cf_history)
            with torch.no_grad():
                return self.cf.encoder.user_vectors({"history": padded.to(self.device)}), has
        uid = self.cf_users.to_dense(users)
        has = (uid > 0) & self.cf_trained[uid]
        return self.cf.users[torch.from_numpy(uid[has])].to(self.device), has

    def _candidates(
        self, users: np.ndarray, histories: list[np.ndarray], seen: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """(the users' rows that got candidates, their raw candidate ids, retrieval scores), best
        first: ``candidates`` of them when a reranker follows, else ``k``. ``seen``: each user's
        items in the retriever's numbering (0 where it lacks one)."""
        n = self.plan.candidates if self.reranker is not None else self.plan.k
        if self.catalog is not None:
            return self.catalog.top_n(users, seen, n, self.plan.exclude_seen)
        vectors, has_vector = self._user_vectors(users, histories)
        rows = np.flatnonzero(has_vector)
        if not len(rows):
            return rows, [], []
        scores, ids = self._retrieve(vectors, [seen[r] for r in rows], n)
        candidates = [self.cf_items.to_raw(i[i > 0]) for i in ids]
        return rows, candidates, [s[i > 0] for s, i in zip(scores, ids, strict=True)]

    def _retrieve(
        self, vectors: torch.Tensor, seen: list[np.ndarray], n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        exclude = [s[s > 0] for s in seen] if self.plan.exclude_seen else None
        n = min(n, len(self.item_table) - 1)
        if self.index is not None:
            return self.index.top_n(vectors.cpu(), n, exclude)
        return exact_top_n(vectors, self.item_table, n, exclude, self.plan.item_chunk)

    def _rerank(
        self, users: np.ndarray, histories: list[np.ndarray], candidates: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(raw item ids, logits) per user, best first; candidates the reranker does not know
        are dropped."""
        requests, kept = [], []
        rr_uid = (
            self.rr_users.to_dense(users) if self.rr_users is not None else np.zeros(len(users), np.int64)
        )
        for uid, history, raw in zip(rr_uid, histories, candidates, strict=True):
            ids = self.rr_items.to_dense(raw)
            known = ids > 0
            kept.append(raw[known])
            mapped_history = self.rr_items.to_dense(history)
            requests.append(
                RerankRequest(int(uid), mapped_history[mapped_history > 0].tolist(), ids[known].tolist())
            )
        scored = [r for r in range(len(requests)) if len(requests[r].candidates)]
        logits = self.reranker.score([requests[r] for r in scored])
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, object), np.zeros(0, np.float32))] * len(
            users
        )
        for r, scores in zip(scored, logits, strict=True):
            order = np.argsort(-scores, kind="stable")
            out[r] = (kept[r][order], scores[order])
        return out

    def _popular(self, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``seen``: the user's items in the dataset's numbering."""
        items = np.asarray(self.plan.popular_items, dtype=object)
        scores = np.asarray(self.plan.popular_scores, np.float32)
        fresh = ~np.isin(self.popular_dense, seen) if self.plan.exclude_seen else np.ones(len(items), bool)
        if not fresh.any():  # seen every popular item: better a seen item than no row at all
            fresh[:] = True
        return items[fresh][: self.plan.k], scores[fresh][: self.plan.k]

    # --- one batch ----------------------------------------------------------------------------

    def __call__(self, batch: pa.Table) -> pa.Table:
        table = self._recommend(batch)
        self._progress(batch.num_rows)
        return table

    def _progress(self, users: int) -> None:
        """A line every ``_PROGRESS_EVERY_S`` seconds per actor (Ray forwards it to the driver)."""
        self._scored += users
        now = time.perf_counter()
        if now - self._last_report >= _PROGRESS_EVERY_S:
            rate = self._scored / (now - self._started)
            print(
                f"[raylrec scoring actor {os.getpid()}] {self._scored:,} users scored, {rate:.1f} users/s",
                flush=True,
            )
            self._last_report = now

    def _recommend(self, batch: pa.Table) -> pa.Table:
        users = np.asarray(batch["user_id"].to_pylist(), dtype=object)
        histories = [self.data_items.to_raw(np.asarray(h, np.int64)) for h in batch["history"].to_pylist()]
        seen_column = batch["seen"].combine_chunks()
        seen = list_rows(seen_column)  # the dataset's numbering, views of the batch's buffer
        seen_by_retriever = list_rows(seen_column, self.seen_to_retriever)
        picks: list[tuple[np.ndarray, np.ndarray, str]] = [None] * len(users)  # type: ignore[list-item]
        rows, candidates, retrieval_scores = self._candidates(users, histories, seen_by_retriever)
        if len(rows):
            reranked = (
                self._rerank(users[rows], [histories[r] for r in rows], candidates)
                if self.reranker is not None
                else [None] * len(rows)
            )
            for r, cand, score, rr in zip(rows, candidates, retrieval_scores, reranked, strict=True):
                if rr is not None and len(rr[0]):
                    picks[r] = (rr[0][: self.plan.k], rr[1][: self.plan.k], "rerank")
                else:
                    picks[r] = (cand[: self.plan.k], score[: self.plan.k], self.retrieval_source)
        for r in range(len(users)):
            if picks[r] is None or not len(picks[r][0]):  # no CF vector, or every item excluded
                picks[r] = (*self._popular(seen[r]), "popular")
        return self._rows(users, picks)

    def _rows(self, users: np.ndarray, picks: list[tuple[np.ndarray, np.ndarray, str]]) -> pa.Table:
        sizes = np.array([len(p[0]) for p in picks], np.int64)
        ranks = np.concatenate([np.arange(1, s + 1) for s in sizes]) if sizes.sum() else np.zeros(0)
        return pa.table(
            {
                "user_id": pa.array(np.repeat(users, sizes).tolist(), pa.string()),
                "rank": pa.array(ranks.astype(np.int32)),
                "item_id": pa.array([str(i) for p in picks for i in p[0]], pa.string()),
                "score": pa.array(
                    np.concatenate([p[1] for p in picks]).astype(np.float32) if len(picks) else []
                ),
                "source": pa.array(np.repeat([p[2] for p in picks], sizes).tolist(), pa.string()),
                "model": pa.array([self.plan.model_name] * int(sizes.sum()), pa.string()),
                "run_id": pa.array([self.plan.run_id] * int(sizes.sum()), pa.string()),
            },
            schema=RECS_SCHEMA,
        )
