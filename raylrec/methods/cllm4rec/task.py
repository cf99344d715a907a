"""CLLM4Rec as a training task (arXiv 2311.01343): its stages, each stage's epochs of corpora, and
full-ranking evaluation; ``CLLM4RecDefinition`` is what ``raylrec.methods.train.train_method``
runs for it (``CLLM4RecConfig.definition``), in a plain process or on Ray Train with DeepSpeed.

Stages (``CLLM4RecConfig.stages``), each one run of the training loop:

- ``content``: content-LM warm-up epochs, no mutual regularisation;
- ``pretrain``: each epoch a collaborative-LM pass (regularised to the content tables), then a
  content-LM pass (regularised to the collaborative tables) — the paper's alternation;
- ``finetune``: each epoch a recommendation pass (regularised to the content tables), then,
  with ``finetune_content``, a content pass regularised to the recommender's tables (the
  released code's fine-tuning loop).

The pretraining stages keep their lowest-training-loss epoch (the released code saves the
embeddings whenever the training loss improves); fine-tuning keeps the best ``train.metric``,
by default the paper's Recall@20 + Recall@40 + NDCG@100 on validation. Every evaluation ranks
the whole catalogue for every validation user (training items masked), so each stage has a
learning curve.

Every rank holds the (small) corpora and takes an equal slice of each epoch's global order:
the same number of steps everywhere, as ZeRO's collectives need. The text is tokenised in the
process (a user's or item's text once, the prompt pieces once), not in a Ray Data pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from raylrec.config import EvalConfig, RaylrecConfig
from raylrec.data.output import read_meta
from raylrec.eval.ranking import ItemSets, topk_metric_sums
from raylrec.methods.cllm4rec import PAPER_KS, SELECTION_METRIC
from raylrec.methods.cllm4rec.content import content_dataset, docs_from_arrays
from raylrec.methods.cllm4rec.corpora import ContentDoc, Corpora, load_corpora, streamed_item_sets
from raylrec.methods.cllm4rec.model import OBJECTIVES
from raylrec.methods.cllm4rec.serve import recommend
from raylrec.methods.train import MethodDefinition, _build
from raylrec.train.loop import TrainState
from raylrec.train.pipeline import Fitting, StagePlan

if TYPE_CHECKING:
    import ray.data

__all__ = ["CLLM4RecDefinition", "CLLM4RecTask", "evaluate_ranking", "stage_batches", "stage_steps"]

Batch = dict[str, torch.Tensor]


def _to_torch(arrays: dict[str, np.ndarray], objective: str, device: torch.device) -> Batch:
    batch = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}
    batch["objective"] = torch.full((len(arrays["input_ids"]),), OBJECTIVES[objective], device=device)
    return batch


def _passes(stage: str, finetune_content: bool) -> list[str]:
    """The corpora one epoch of ``stage`` runs through, in order."""
    if stage == "content":
        return ["content"]
    if stage == "pretrain":
        return ["collaborative", "content"]
    return ["recommendation", "content"] if finetune_content else ["recommendation"]


def stage_batches(
    corpora: Corpora,
    stage: str,
    finetune_content: bool,
    batch_size: int,
    seed: int,
    epoch: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
) -> Iterator[Batch]:
    """One epoch of ``stage``'s batches on this rank (seeded by (seed, epoch): a resumed run
    sees the same order)."""
    makers = {
        "content": corpora.content_batches,
        "collaborative": corpora.collaborative_batches,
        "recommendation": corpora.recommendation_batches,
    }
    for objective in _passes(stage, finetune_content):
        for arrays in makers[objective](batch_size, seed, epoch, rank, world):
            yield _to_torch(arrays, objective, device)


def stage_steps(corpora: Corpora, stage: str, finetune_content: bool, batch_size: int, world: int = 1) -> int:
    kinds = {"content": "content", "collaborative": "users", "recommendation": "users"}
    return sum(corpora.steps(kinds[o], batch_size, world) for o in _passes(stage, finetune_content))


def evaluate_ranking(
    model: nn.Module,
    corpora: Corpora,
    ks: list[int],
    recall_denominator: str,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    prefix: str = "valid",
) -> dict[str, float]:
    """Full ranking of every user with held-out (``corpora.valid``) items: top-max(ks) over the
    catalogue, training items masked; each rank ranks users ``rank::world`` in the same number
    of batches (ZeRO-3: every forward is a collective) and the metric sums are gathered."""
    users = corpora.users_with_valid()
    mine = users[rank::world]
    rounds = math.ceil(math.ceil(len(users) / world) / batch_size) * batch_size
    padded = np.r_[mine, np.full(rounds - len(mine), users[0] if len(users) else 1, np.int64)]
    k = max(ks)
    _, top = recommend(model, corpora, padded.tolist(), k, seed=seed, users_per_batch=batch_size)
    top = top[: len(mine)]
    valid = corpora.valid
    hits = np.zeros(top.shape, np.float64)
    relevant = np.zeros(len(mine), np.float64)
    for row, uid in enumerate(mine):
        held = valid.indices[valid.indptr[uid] : valid.indptr[uid + 1]]
        hits[row] = np.isin(top[row], held) & (top[row] > 0)
        relevant[row] = len(held)
    sums = topk_metric_sums(torch.from_numpy(hits), torch.from_numpy(relevant), tuple(ks), recall_denominator)
    sums["users"] = float(len(mine))
    if world > 1:
        gathered: list[dict[str, float] | None] = [None] * world
        torch.distributed.all_gather_object(gathered, sums)
        sums = {name: sum(part[name] for part in gathered) for name in sums}
    count = max(sums.pop("users"), 1.0)
    out = {f"{prefix}/{name}": value / count for name, value in sums.items()}
    out[f"{prefix}/users"] = count
    if all(f"{prefix}/{m}" in out for m in ("recall@20", "recall@40", "ndcg@100")):
        out[SELECTION_METRIC.replace("valid/", f"{prefix}/", 1)] = (
            out[f"{prefix}/recall@20"] + out[f"{prefix}/recall@40"] + out[f"{prefix}/ndcg@100"]
        )
    return out


class CLLM4RecTask:
    """The loop's task: the method's own loss, and full-ranking validation."""

    def __init__(
        self,
        model: nn.Module,
        corpora: Corpora,
        eval_config: EvalConfig,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ):
        self.model, self.corpora, self.eval_config = model, corpora, eval_config
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world

    def loss(self, batch: Batch) -> torch.Tensor:
        """The method's ``loss`` through the wrapper's forward (DDP's sync, DeepSpeed's hooks)."""
        return self.model(batch, compute_loss=True)

    def evaluate(self) -> dict[str, float]:
        ks = sorted({*self.eval_config.ks, *PAPER_KS})
        return evaluate_ranking(
            self.model,
            self.corpora,
            ks,
            self.eval_config.recall_denominator,
            self.batch_size,
            self.seed,
            self.rank,
            self.world,
        )


def _with_sizes(config: RaylrecConfig) -> RaylrecConfig:
    """The ID tables' sizes from the dataset (recorded in the bundle's method config)."""
    method = config.method
    if method.num_users is not None and method.num_items is not None:
        return config
    counts = read_meta(config.dataset_path())["counts"]
    method = method.model_copy(update={"num_users": counts["num_users"], "num_items": counts["num_items"]})
    return config.model_copy(update={"method": method})


class CLLM4RecDefinition(MethodDefinition):
    """CLLM4Rec's stages over its own corpora (module docstring); export as any method's."""

    def __init__(self, config: RaylrecConfig):
        super().__init__(_with_sizes(config))
        self._content: ray.data.Dataset | None = None  # driver side: the tokenised content corpus

    def stages(self) -> list[StagePlan]:
        plans = []
        for stage in self.config.method.stages():
            update: dict = {"epochs": stage.epochs} if stage.epochs is not None else {}
            if stage.name != "finetune":
                update.update(metric="train/loss", mode="min")  # pretraining: lowest loss
            plans.append(StagePlan(stage.name, self.config.train.model_copy(update=update), spec=stage))
        return plans

    def _corpora(
        self,
        tokenizer,
        docs: list[ContentDoc] | None,
        item_sets: tuple[ItemSets, ItemSets | None] | None = None,
    ) -> Corpora:
        method = self.config.method
        return load_corpora(
            self.config.dataset_path(),
            tokenizer,
            max_items=method.max_items,
            mask_ratio=method.mask_ratio,
            content_max_tokens=method.content_max_tokens,
            item_noun=method.item_noun,
            implicit=method.implicit,
            docs=docs,
            item_sets=item_sets,
        )

    def ray_datasets(self, stage: StagePlan, say):
        from ray.train import DataConfig

        # The content corpus (one document per item and user: the catalogue's size, not the
        # log's) is tokenised once by Ray Data, for every stage; each worker gets all of it
        # (unsplit) and takes its slice of each epoch's seeded order. The user-item sets grow
        # with the log: Ray tasks stream the splits into them once, for every stage, and the
        # workers read them from the object store (one copy per node; nothing reads a split whole).
        if self._content is None:
            method = self.config.method
            content = content_dataset(
                self.config.dataset_path(), self.config.backbone, method.content_max_tokens
            )
            self._content = content.materialize()
            say(f"content corpus: {self._content.count():,} documents tokenised by Ray Data")
            self.worker_data["item_sets"] = streamed_item_sets(self.config.dataset_path(), method.implicit)
            say("user-item sets of train and valid built by Ray tasks, shared through the object store")
        return {"content": self._content}, DataConfig(datasets_to_split=[])

    def _fitting(self, stage, init, device, rank, world, make_engine, docs=None, item_sets=None) -> Fitting:
        config, train = self.config, stage.train
        method, backbone = _build(config, stage.spec, init, device)
        corpora = self._corpora(backbone.tokenizer, docs, item_sets)
        finetune_content = config.method.finetune_content
        steps = stage_steps(corpora, stage.name, finetune_content, train.batch_size, world)
        if steps == 0:
            raise ValueError(f"cllm4rec stage {stage.name}: no training rows on rank {rank}")
        engine = make_engine(method, train.epochs * steps)
        task = CLLM4RecTask(engine.model, corpora, config.eval, train.batch_size, train.seed, rank, world)
        seed = train.seed

        def batches(epoch: int) -> Iterator[Batch]:
            return stage_batches(
                corpora, stage.name, finetune_content, train.batch_size, seed, epoch, device, rank, world
            )

        return Fitting(task, batches, engine, steps)

    def worker_fitting(self, stage: StagePlan, init: dict[str, torch.Tensor]) -> Fitting:
        import ray.train
        import ray.train.torch

        from raylrec.train.engines import build_engine
        from raylrec.train.ray_runner import shard_arrays

        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        device = ray.train.torch.get_device()
        refs = self.worker_data["item_sets"]
        sets = ray.get(list(refs))  # zero-copy views of the node's object store
        return self._fitting(
            stage,
            init,
            device,
            rank,
            world,
            lambda method, total: build_engine(method, stage.train, total, world, full_state=False),
            docs=docs_from_arrays(shard_arrays("content")),
            item_sets=(sets[0], sets[1] if len(sets) > 1 else None),
        )

    def local_fitting(self, stage: StagePlan, init: dict[str, torch.Tensor], say) -> Fitting:
        from raylrec.train.engines import TorchEngine

        train = stage.train
        device = torch.device("cuda" if torch.cuda.is_available() and train.use_gpu else "cpu")

        def engine(method, total):
            params = [p for p in method.parameters() if p.requires_grad]
            return TorchEngine(method, train, total, params, full_state=False)

        fitting = self._fitting(stage, init, device, 0, 1, engine)
        say(f"stage {stage.name}: {fitting.steps_per_epoch} steps per epoch")
        return fitting

    def final_metrics(self, states: dict[str, TrainState], weights: dict[str, torch.Tensor], say):
        final = states[next(reversed(states))]
        metrics = next((h for h in final.history if h.get("epoch") == final.best_epoch), {})
        metrics = {k: v for k, v in metrics.items() if k.startswith("valid/")}
        shown = ", ".join(
            f"{name} {metrics[f'valid/{name}']:.4f}"
            for name in ("recall@20", "recall@40", "ndcg@100")
            if f"valid/{name}" in metrics
        )
        say(f"best validation (epoch {final.best_epoch}): {shown}")
        return metrics
