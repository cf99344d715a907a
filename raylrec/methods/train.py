"""Training an LLM method end to end: samples (Ray Data) -> each stage on Ray Train with
DeepSpeed ZeRO (or a plain process) -> best weights -> model bundle.

A stage is one Ray Train run named ``<run>-<stage>``; re-running the same run name resumes the
unfinished stage and skips finished ones (their checkpoints hold the best weights).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from raylrec import storage
from raylrec.config import RaylrecConfig
from raylrec.data.output import read_meta
from raylrec.methods.config import METHODS, Stage, template_text
from raylrec.methods.task import LLMTask, epoch_batches
from raylrec.train.loop import TrainState, fit
from raylrec.train.reporting import LocalReporter, config_fingerprint

__all__ = ["MethodResult", "train_method"]

if TYPE_CHECKING:
    from raylrec.train.ray_runner import TrialHooks


@dataclass
class MethodResult:
    run_name: str
    states: dict[str, TrainState]
    metrics: dict[str, float]
    bundle: str | None
    seconds: float


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
    from raylrec.cf.config import encoder_config

    cf = storage.read_json(storage.join(config.method.cf_bundle, "config.json"))["cf"]
    return encoder_config(cf).history_len


def _stage_template(config: RaylrecConfig, stage: Stage, last: bool) -> str:
    """The template text a stage trains with: ``prompt.template`` (a name or a text) for the
    last stage when set, else the stage's own."""
    return template_text(config.prompt.template if (last and config.prompt.template) else stage.template)


def _fingerprint(config: RaylrecConfig, stage: Stage) -> str:
    return config_fingerprint(
        {
            "dataset": config.dataset_path(),
            "backbone": config.backbone.model_dump(),
            "method": config.method.model_dump(),
            "prompt": config.prompt.model_dump(),
            "sample": config.sample.model_dump(),
            "stage": stage.name,
            "train": config.train.model_dump(
                include={
                    "batch_size", "lr", "weight_decay", "seed", "metric", "mode", "optimizer",
                    "schedule", "warmup_ratio", "max_grad_norm", "strategy", "zero_stage",
                }
            ),
        }
    )  # fmt: skip


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


def _stage_config(config: RaylrecConfig, stage: Stage) -> RaylrecConfig:
    if stage.epochs is None:
        return config
    return config.model_copy(update={"train": config.train.model_copy(update={"epochs": stage.epochs})})


def _canonical_order(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows sorted by (uid, timestamp, iid): every rank scores its slice of the same sequence
    and the gathered scores line up with the labels, whatever order the blocks arrived in."""
    order = np.lexsort((arrays["iid"], arrays["timestamp"], arrays["uid"]))
    return {k: v[order] for k, v in arrays.items()}


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: build the method, wrap it in the engine, hand it to fit()."""
    import ray.train
    import ray.train.torch

    from raylrec.train.engines import build_engine
    from raylrec.train.ray_runner import fit_in_worker, shard_arrays

    config = RaylrecConfig.model_validate(loop_config["config"])
    stage = Stage(**loop_config["stage"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.train.seed)
    device = ray.train.torch.get_device()
    init = {k: torch.from_numpy(v) for k, v in loop_config["init"].items()}
    method, _ = _build(config, stage, init, device)
    train = shard_arrays("train")
    valid = _canonical_order(shard_arrays("valid"))
    steps_per_epoch = len(train["uid"]) // config.train.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"rank {rank} got {len(train['uid'])} training rows, fewer than one batch of "
            f"{config.train.batch_size}: lower train.batch_size or sample more rows"
        )
    engine = build_engine(
        method, config.train, config.train.epochs * steps_per_epoch, world, full_state=False
    )
    task = LLMTask(engine.model, valid, config.eval, config.train.batch_size, device, rank, world)
    fit_in_worker(
        task,
        lambda epoch: epoch_batches(train, config.train.batch_size, config.train.seed + rank, epoch, device),
        engine,
        config.train,
        loop_config,
        {"method": config.method.model_dump(), "train": config.train.model_dump(), "stage": stage.name},
        steps_per_epoch,
    )


def _run_stage_ray(
    config: RaylrecConfig,
    stage: Stage,
    template: str,
    run_name: str,
    init: dict[str, torch.Tensor],
    say,
    trial: TrialHooks | None = None,
) -> TrainState:
    from raylrec.llm.samples import build_samples
    from raylrec.train.ray_runner import run_on_ray

    cf_history = _cf_history(config)
    started = time.perf_counter()
    # Tokenise before the workers start (they would hold every CPU a tokenising actor needs).
    train = build_samples(config, "train", template, cf_history).materialize()
    valid = build_samples(config, "valid", template, cf_history).materialize()
    say(
        f"stage {stage.name}: {train.count():,} training and {valid.count():,} validation prompts "
        f"tokenised in {time.perf_counter() - started:.1f}s"
    )
    from ray.train import DataConfig

    return run_on_ray(
        _worker_loop,
        {
            "config": config.model_dump(mode="json"),
            "stage": stage.__dict__,
            "init": {k: v.numpy() for k, v in init.items()},
        },
        config.train,
        run_name,
        _fingerprint(config, stage),
        {"train": train, "valid": valid},
        # every rank gets all validation rows and scores its own slice of them
        data_config=DataConfig(datasets_to_split=["train"]),
        trial=trial,
    )


def _run_stage_local(
    config: RaylrecConfig, stage: Stage, template: str, init: dict[str, torch.Tensor], say
) -> TrainState:
    from raylrec.llm.samples import local_samples
    from raylrec.train.engines import TorchEngine

    device = torch.device("cuda" if torch.cuda.is_available() and config.train.use_gpu else "cpu")
    torch.manual_seed(config.train.seed)
    method, backbone = _build(config, stage, init, device)
    cf_history = _cf_history(config)
    train = local_samples(config, "train", template, cf_history, backbone.tokenizer)
    valid = local_samples(config, "valid", template, cf_history, backbone.tokenizer)
    say(f"stage {stage.name}: {len(train['uid']):,} training and {len(valid['uid']):,} validation prompts")
    steps_per_epoch = len(train["uid"]) // config.train.batch_size
    params = [p for p in method.parameters() if p.requires_grad]
    engine = TorchEngine(
        method, config.train, config.train.epochs * steps_per_epoch, params, full_state=False
    )
    task = LLMTask(method, valid, config.eval, config.train.batch_size, device)
    return fit(
        task,
        lambda epoch: epoch_batches(train, config.train.batch_size, config.train.seed, epoch, device),
        config.train,
        LocalReporter(),
        engine,
        steps_per_epoch=steps_per_epoch,
    )


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
) -> MethodResult:
    """Train ``config.method`` stage by stage; the best weights of each stage start the next.
    Exports the model bundle to ``config.output`` when set. ``trial``: this run is a Ray Tune
    trial (every epoch's metrics go to Tune, epochs counted across stages)."""
    from raylrec.train.ray_runner import default_run_name

    if config.method is None:
        raise ValueError(f"set a 'method' section (name: {' | '.join(METHODS.names())})")
    started = time.perf_counter()
    config = _absolute(config)
    meta = read_meta(config.dataset_path())
    if "valid" not in meta["counts"]["splits"]:
        raise ValueError(f"{config.dataset_path()} has no valid split to select the best epoch on")
    run_name = config.train.run_name or default_run_name(config.method.name)
    stages = _stages(config)
    say(
        f"training {config.method.name} on {config.backbone.name} over {config.dataset_path()}: "
        f"stages {[s.name for s in stages]}, run {run_name}"
    )
    weights = _initial_weights(config, say)
    states: dict[str, TrainState] = {}
    epochs_before = 0
    for i, stage in enumerate(stages):
        stage_config = _stage_config(config, stage)
        template = _stage_template(config, stage, last=i == len(stages) - 1)
        if use_ray:
            hooks = replace(trial, epoch_offset=epochs_before) if trial else None
            state = _run_stage_ray(
                stage_config, stage, template, f"{run_name}-{stage.name}", weights, say, hooks
            )
        else:
            state = _run_stage_local(stage_config, stage, template, weights, say)
        best = f"{config.train.metric} {state.best_metric:.4f}"
        say(f"stage {stage.name}: best epoch {state.best_epoch} ({best})")
        weights = {**weights, **state.best_model}
        states[stage.name] = state
        epochs_before += stage_config.train.epochs
    final = states[stages[-1].name]
    metrics = next((h for h in final.history if h.get("epoch") == final.best_epoch), {})
    metrics = {k: v for k, v in metrics.items() if k.startswith("valid/")}
    say("best validation: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if "/" in k))
    bundle = None
    if config.output:
        bundle = _export(config, weights, metrics, run_name)
        say(f"model bundle written to {bundle}")
    return MethodResult(run_name, states, metrics, bundle, time.perf_counter() - started)


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
