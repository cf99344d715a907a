"""Training an LLM method end to end: samples (Ray Data) -> each stage on Ray Train with
DeepSpeed ZeRO (or a plain process) -> best weights -> model bundle. The method is a
``TaskDefinition`` with one ``StagePlan`` per stage; ``raylrec.train.pipeline`` runs it.

A stage is one Ray Train run named ``<run>-<stage>``; re-running the same run name resumes the
unfinished stage and skips finished ones (their checkpoints hold the best weights).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from raylrec import storage
from raylrec.config import RaylrecConfig
from raylrec.data.output import read_meta
from raylrec.methods.config import METHODS, Stage, template_text
from raylrec.methods.task import LLMTask, StreamedRows, epoch_batches, to_batch
from raylrec.registry import import_object
from raylrec.train.loop import TrainState
from raylrec.train.pipeline import Fitting, StagePlan, TaskDefinition, TrainResult, run_pipeline
from raylrec.train.shards import equal_shards, held_out_name, held_out_shards, shard_epoch, shard_name

__all__ = ["MethodDefinition", "MethodResult", "train_method"]

# Rows of a rank's training shard shuffled together as it streams (``raylrec.train.shards``):
# a tokenised prompt is a few KB, so a few thousand rows keep the buffer near 10-50 MB.
SHUFFLE_ROWS = 4096

if TYPE_CHECKING:
    from raylrec.train.hooks import TrialHooks


MethodResult = TrainResult  # the result of train_method (``result.states`` by stage name)


def _absolute(config: RaylrecConfig) -> RaylrecConfig:
    """Workers run elsewhere: every path they read must not depend on the driver's cwd."""
    method = config.method
    for field in ("cf_bundle", "init_from"):
        if getattr(method, field):
            method = method.model_copy(update={field: storage.absolute(getattr(method, field))})
    return config.model_copy(
        update={
            "dataset": storage.absolute(config.dataset_path()),
            "method": method,
            "train": config.train.model_copy(
                update={"storage_path": storage.absolute(config.train.storage_path)}
            ),
        }
    )


def _cf_history(config: RaylrecConfig) -> int:
    if not config.method.cf_bundle:
        return 0
    from raylrec.cf.bundle import bundle_history_len

    return bundle_history_len(storage.read_json(storage.join(config.method.cf_bundle, "config.json")))


def _stage_template(config: RaylrecConfig, stage: Stage, last: bool) -> str:
    """The template text a stage trains with: ``prompt.template`` (a name or a text) for the
    last stage when set, else the stage's own."""
    return template_text(config.prompt.template if (last and config.prompt.template) else stage.template)


def _build(config: RaylrecConfig, stage: Stage, init: dict[str, torch.Tensor], device: torch.device):
    from raylrec.cf.bundle import load_cf_bundle
    from raylrec.llm.backbone import load_backbone

    backbone = load_backbone(config.backbone, device)
    cf = load_cf_bundle(config.method.cf_bundle) if config.method.cf_bundle else None
    method = config.method.build(backbone, cf)
    if init:
        method.load_method_state_dict(init, strict=False)
    method.set_stage(stage)
    return method.to(device), backbone


class MethodDefinition(TaskDefinition):
    """An LLM method as a task: its stages (``config.method.stages()``), each a Ray Train run
    with DeepSpeed ZeRO or a plain process, and its model bundle."""

    kind = "model bundle"

    def default_run_name(self) -> str:
        from raylrec.train.ray_runner import default_run_name

        return default_run_name(self.config.method.name)

    def stages(self) -> list[StagePlan]:
        stages = self.config.method.stages()
        plans = []
        for i, stage in enumerate(stages):
            train = self.config.train
            if stage.epochs is not None:
                train = train.model_copy(update={"epochs": stage.epochs})
            template = _stage_template(self.config, stage, last=i == len(stages) - 1)
            plans.append(StagePlan(stage.name, train, spec=(stage, template)))
        return plans

    def identity(self, stage: StagePlan) -> dict[str, Any]:
        config = self.config
        return {
            "backbone": config.backbone.model_dump(),
            "method": config.method.model_dump(),
            "prompt": config.prompt.model_dump(),
            "sample": config.sample.model_dump(),
            "stage": stage.name,
        }

    def wandb_config(self, stage: StagePlan) -> dict[str, Any]:
        return {
            "method": self.config.method.model_dump(),
            "train": stage.train.model_dump(),
            "stage": stage.name,
        }

    def announce(self, run_name: str, stages: list[StagePlan], say) -> None:
        config = self.config
        meta = read_meta(config.dataset_path())
        if "valid" not in meta["counts"]["splits"]:
            raise ValueError(f"{config.dataset_path()} has no valid split to select the best epoch on")
        say(
            f"training {config.method.name} on {config.backbone.name} over {config.dataset_path()}: "
            f"stages {[s.name for s in stages]}, run {run_name}"
        )

    def initial_weights(self, say) -> dict[str, torch.Tensor]:
        return _initial_weights(self.config, say)

    def ray_datasets(self, stage: StagePlan, say):
        from ray.train import DataConfig

        from raylrec.llm.samples import build_samples

        config, (_, template) = self.config, stage.spec
        cf_history = _cf_history(config)
        started = time.perf_counter()
        # Tokenise before the workers start (they would hold every CPU a tokenising actor needs).
        shards, rows_per_rank = equal_shards(
            build_samples(config, "train", template, cf_history), stage.train.num_workers
        )
        valid, valid_rows = held_out_shards(
            build_samples(config, "valid", template, cf_history), stage.train.num_workers
        )
        say(
            f"stage {stage.name}: {rows_per_rank * stage.train.num_workers:,} training prompts "
            f"({rows_per_rank:,} per rank) and {sum(valid_rows):,} validation prompts "
            f"({max(valid_rows):,} per rank), streamed, tokenised in {time.perf_counter() - started:.1f}s"
        )
        self.worker_data = {"rows_per_rank": rows_per_rank, "valid_rows": max(valid_rows)}
        # each rank streams its own training shard and its own part of the validation rows
        return {**shards, **valid}, DataConfig(datasets_to_split=[])

    def worker_fitting(self, stage: StagePlan, init: dict[str, torch.Tensor]) -> Fitting:
        import ray.train
        import ray.train.torch

        from raylrec.train.engines import build_engine

        config, train_config = self.config, stage.train
        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        device = ray.train.torch.get_device()
        method, _ = _build(config, stage.spec[0], init, device)
        shard = ray.train.get_dataset_shard(shard_name(rank))
        valid = StreamedRows(
            ray.train.get_dataset_shard(held_out_name("valid", rank)), self.worker_data["valid_rows"]
        )
        size, rows = train_config.batch_size, self.worker_data["rows_per_rank"]
        steps_per_epoch = rows // size
        if steps_per_epoch == 0:
            raise ValueError(
                f"rank {rank} got {rows} training rows, fewer than one batch of "
                f"{size}: lower train.batch_size or sample more rows"
            )
        engine = build_engine(
            method, train_config, train_config.epochs * steps_per_epoch, world, full_state=False
        )
        task = LLMTask(engine.model, valid, config.eval, size, device, rank, world)

        def batches(epoch: int):
            for batch in shard_epoch(shard, size, train_config.seed, rank, epoch, SHUFFLE_ROWS):
                yield to_batch(batch, np.arange(size), device)

        return Fitting(task, batches, engine, steps_per_epoch)

    def local_fitting(self, stage: StagePlan, init: dict[str, torch.Tensor], say) -> Fitting:
        from raylrec.llm.samples import local_samples
        from raylrec.train.engines import TorchEngine

        config, train_config, (spec, template) = self.config, stage.train, stage.spec
        device = torch.device("cuda" if torch.cuda.is_available() and train_config.use_gpu else "cpu")
        method, backbone = _build(config, spec, init, device)
        cf_history = _cf_history(config)
        train = local_samples(config, "train", template, cf_history, backbone.tokenizer)
        valid = local_samples(config, "valid", template, cf_history, backbone.tokenizer)
        say(
            f"stage {stage.name}: {len(train['uid']):,} training and {len(valid['uid']):,} validation prompts"
        )
        size, seed = train_config.batch_size, train_config.seed
        steps_per_epoch = len(train["uid"]) // size
        params = [p for p in method.parameters() if p.requires_grad]
        engine = TorchEngine(
            method, train_config, train_config.epochs * steps_per_epoch, params, full_state=False
        )
        task = LLMTask(method, valid, config.eval, size, device)
        return Fitting(
            task, lambda epoch: epoch_batches(train, size, seed, epoch, device), engine, steps_per_epoch
        )

    def final_metrics(self, states: dict[str, TrainState], weights: dict[str, torch.Tensor], say):
        final = states[next(reversed(states))]
        metrics = next((h for h in final.history if h.get("epoch") == final.best_epoch), {})
        metrics = {k: v for k, v in metrics.items() if k.startswith("valid/")}
        say(f"best validation (epoch {final.best_epoch}): " + _validation_summary(metrics))
        return metrics

    def export(self, weights: dict[str, torch.Tensor], metrics: dict[str, float], run_name: str) -> str:
        return _export(self.config, weights, metrics, run_name)


def _stages(config: RaylrecConfig) -> list[Stage]:
    return config.method.stages()


def _initial_weights(config: RaylrecConfig, say) -> dict[str, torch.Tensor]:
    """Weights of ``method.init_from`` (a model bundle) that this method also has, e.g. the
    LoRA of a TALLRec bundle as CoLLM's first stage."""
    if not config.method.init_from:
        return {}
    import os
    import tempfile

    from safetensors.torch import load_file

    from raylrec.methods.bundle import CONFIG_FILE, WEIGHTS_FILE

    fs, root = storage.filesystem(config.method.init_from)
    if not fs.exists(storage.join(root, CONFIG_FILE)):
        raise FileNotFoundError(f"method.init_from: {config.method.init_from} is not a model bundle")
    source = storage.read_json(storage.join(config.method.init_from, CONFIG_FILE))
    if source["backbone"]["name"] != config.backbone.name:
        raise ValueError(
            f"method.init_from was trained on {source['backbone']['name']}, "
            f"this run uses {config.backbone.name}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        fs.get_file(storage.join(root, WEIGHTS_FILE), os.path.join(tmp, WEIGHTS_FILE))
        weights = load_file(os.path.join(tmp, WEIGHTS_FILE))
    say(f"starting from {len(weights)} tensors of {config.method.init_from} ({source['method']['name']})")
    return weights


def train_method(
    config: RaylrecConfig,
    say: Callable[[str], None] = print,
    use_ray: bool = True,
    trial: TrialHooks | None = None,
) -> TrainResult:
    """Train ``config.method`` stage by stage; the best weights of each stage start the next.
    Exports the model bundle to ``config.output`` when set. ``trial``: this run is a Ray Tune
    trial (every epoch's metrics go to Tune, epochs counted across stages)."""
    if config.method is None:
        raise ValueError(f"set a 'method' section (name: {' | '.join(METHODS.names())})")
    # A method may bring its own definition (``MethodConfig.definition``): its corpora,
    # batches and evaluation in place of the pointwise prompts and CTR metrics.
    definition = import_object(config.method.definition)
    return run_pipeline(definition(_absolute(config)), say, use_ray, trial)


def _export(config: RaylrecConfig, weights: dict[str, torch.Tensor], metrics, run_name: str) -> str:
    """Check the weights against a freshly built method (every tensor present, full shape) and
    write the bundle."""
    from raylrec.methods.bundle import save_model_bundle

    torch.manual_seed(config.train.seed)  # the initial values the workers built
    method, backbone = _build(config, _stages(config)[-1], {}, torch.device("cpu"))
    expected = method.method_state_dict()
    # A group no stage trains (CoLLM's LoRA with stage1_epochs 0 and no init_from) keeps the
    # seeded initial values every worker also used.
    trained = {name for stage in _stages(config) for name in stage.trainable}
    own = {id(p) for group in trained for p in method.parameter_groups()[group]}
    required = {n for n, p in method.named_parameters() if id(p) in own}
    for name, tensor in expected.items():
        got = weights.get(name)
        if (got is None and name in required) or (
            got is not None and tuple(got.shape) != tuple(tensor.shape)
        ):
            raise RuntimeError(
                f"trained weights for {name}: {None if got is None else tuple(got.shape)}, "
                f"expected {tuple(tensor.shape)} (a ZeRO-3 partition saved without gathering?)"
            )
    method.load_method_state_dict({k: weights.get(k, v) for k, v in expected.items()})
    return save_model_bundle(
        config.output, config, method.method_state_dict(), backbone.identity, metrics, run_name
    )


def _validation_summary(metrics: dict[str, float]) -> str:
    """``all: auc 0.61, uauc 0.58, logloss 0.66 on 455 rows; warm: ...; cold: ...``: one line."""
    parts = []
    for part in ("", "warm/", "cold/"):
        prefix = f"valid/{part}"
        own = {
            k[len(prefix) :]: v
            for k, v in metrics.items()
            if k.startswith(prefix) and "/" not in k[len(prefix) :]
        }
        text = ", ".join(f"{name} {own[name]:.4f}" for name in ("auc", "uauc", "logloss") if name in own)
        if text:
            rows = f" on {int(own['rows']):,} rows" if "rows" in own else ""
            parts.append(f"{part.rstrip('/') or 'all'}: {text}{rows}")
    return "; ".join(parts)
