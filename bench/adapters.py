"""Benchmark: batched per-sample LoRA (``raylrec.adapters``) against a plain LoRA and a naive
per-sample loop, forward + backward, in one run.

On one frozen backbone (truncated to its first ``--layers`` decoder layers), one batch of random
token ids and one random condition per sample (dim 64), it times a training step without the
optimiser (forward, BCE on the "Yes" logit at the last position as ``RecMethod`` computes it,
backward into the adapter parameters only) for:

- plain LoRA: peft's ``inject_adapter_in_model`` (r 8, alpha 16, q_proj/v_proj), the baseline;
- the batched mixture: ``inject_per_sample_lora`` + ``LoRAMixture`` (r 8, q_proj/v_proj) with
  K = 4, 8, 16 meta-LoRAs and a ``Router`` over the condition;
- a naive per-sample loop: the K = ``--loop-k`` mixture model called once per sample (batch of
  1, its own mixed LoRA each, one backward each), i.e. per-sample LoRA without a batched module;
- the generated factor (CoRA): ``WeightGenerator`` (``--generator-layers`` layers, 8 heads,
  width ``--cond-dim``, 4 queries) turns the condition into one [hidden, r] "A" per sample,
  shared by q_proj/v_proj, each with its own ``GeneratedFactor`` P [r, d_out]; the generator's
  forward and backward (once per step) are part of its time.

Then the same for one ``--dim`` x ``--dim`` linear alone (frozen linear, plain LoRA, mixtures,
loop), which isolates the adapter's own cost. Variants run interleaved (one step of each per
round) so that a noisy machine slows them alike; the table shows the median and the minimum.

Before timing, the batched mixture and the per-sample loop are checked against each other: the
logits and the adapter gradients must agree (max abs diff printed). Every LoRA B factor is drawn
at random instead of zero (its init) so that the update and all gradients are non-trivial. The
models run in eval mode (no dropout) so that both paths are deterministic.

    .venv/bin/python bench/adapters.py                      # smollm2-135m, 4 layers, batch 8 x 128
    .venv/bin/python bench/adapters.py --layers 0           # all 30 layers
    .venv/bin/python bench/adapters.py --device cuda --batch 32 --tokens 512 --layers 0

``--layers 4`` is the default to keep a CPU run to about a minute: every layer adds the same
backbone and adapter work (the embedding lookup and the one-position head are small), so the
ratios barely depend on depth. On a CPU shared with other work, ``--threads 1`` gives far steadier
numbers than oversubscribed cores do.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from raylrec.adapters import (
    AdapterContext,
    GeneratedFactor,
    LoRAMixture,
    PerSampleLoRALinear,
    Router,
    WeightGenerator,
    inject_per_sample_lora,
)
from raylrec.config import BackboneConfig
from raylrec.llm.backbone import load_backbone

TARGETS = ("q_proj", "v_proj")


@dataclass
class Variant:
    """One thing to time: ``step`` runs forward + backward and returns the output; ``params`` are
    the tensors it fills ``.grad`` of: its trainable parameters (and, for one linear, the input)."""

    name: str
    step: Callable[[], torch.Tensor]
    params: list[torch.Tensor]


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def zero_grads(params: list[nn.Parameter]) -> None:
    for p in params:
        p.grad = None


def run_interleaved(variants: list[Variant], warmup: int, repeats: int, device: torch.device) -> dict:
    """Milliseconds per step of every variant, one step of each per round, warm-up rounds dropped."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for round_ in range(warmup + repeats):
        for v in variants:
            zero_grads(v.params)
            sync(device)
            start = time.perf_counter()
            v.step()
            sync(device)
            if round_ >= warmup:
                times[v.name].append((time.perf_counter() - start) * 1e3)
    return times


def print_table(title: str, variants: list[Variant], times: dict, baseline: str, loop: tuple[str, str]):
    """Median and minimum per variant, each also as a ratio to ``baseline``'s (on a shared, busy
    machine the minimum is the steadier of the two)."""
    base_med, base_min = statistics.median(times[baseline]), min(times[baseline])
    row = "{:<26} {:>10} {:>10} {:>9} {:>11} {:>11}".format
    print(f"\n{title}")
    print(row("variant", "trainable", "median ms", "min ms", "x plain med", "x plain min"))
    for v in variants:
        med, low = statistics.median(times[v.name]), min(times[v.name])
        n_params = sum(p.numel() for p in v.params if isinstance(p, nn.Parameter))
        cells = (
            f"{n_params:,}",
            f"{med:.2f}",
            f"{low:.2f}",
            f"{med / base_med:.2f}",
            f"{low / base_min:.2f}",
        )
        print(row(v.name, *cells))
    loop_name, batched_name = loop
    ratio_med = statistics.median(times[loop_name]) / statistics.median(times[batched_name])
    ratio_min = min(times[loop_name]) / min(times[batched_name])
    print(f"{loop_name} / {batched_name}: {ratio_med:.2f}x (median), {ratio_min:.2f}x (min)")


# ----------------------------------------------------------------------------- models


def truncate(model: nn.Module, layers: int) -> nn.Module:
    """Keep the first ``layers`` decoder layers (0: all)."""
    decoder = model.get_decoder()
    if 0 < layers < len(decoder.layers):
        decoder.layers = decoder.layers[:layers]
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy whose frozen weights are the original's tensors (no memory), to add adapters to."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, shared)


def randomise_b(params: dict[str, nn.Parameter], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in params.items():
            if "lora_B" in name or "lora_P" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def trainable(model: nn.Module, keep: Callable[[str], bool]) -> list[nn.Parameter]:
    """Freeze every parameter but those whose name ``keep`` accepts; return those."""
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name))
        if p.requires_grad:
            params.append(p)
    return params


def add_plain_lora(model: nn.Module, rank: int, alpha: int, targets=TARGETS) -> list[nn.Parameter]:
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)), model)
    randomise_b(dict(model.named_parameters()), seed=1)
    return trainable(model, lambda name: "lora_" in name)


def mixture_factory(k: int, rank: int, cond_dim: int) -> Callable[[nn.Linear, str], nn.Module]:
    def make(linear: nn.Linear, name: str) -> nn.Module:
        return LoRAMixture(linear.in_features, linear.out_features, rank, k, Router(cond_dim, k))

    return make


def add_mixture(model, k, rank, alpha, cond_dim, targets=TARGETS) -> tuple[AdapterContext, list]:
    context = AdapterContext()
    inject_per_sample_lora(model, targets, mixture_factory(k, rank, cond_dim), context, alpha / rank)
    randomise_b(dict(model.named_parameters()), seed=k)
    return context, trainable(model, lambda name: ".factors." in name or name.startswith("factors."))


def add_generated(
    model, rank, alpha, cond_dim, layers, targets=TARGETS
) -> tuple[AdapterContext, list, nn.Module]:
    """CoRA's adapters: one ``WeightGenerator`` for the model, a ``GeneratedFactor`` per target."""
    widths = sorted({m.in_features for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets})
    generator = WeightGenerator(cond_dim, widths, rank, layers=layers, heads=8, queries=4)
    offsets = generator.offsets()
    context = AdapterContext()

    def make(linear: nn.Linear, name: str) -> nn.Module:
        return GeneratedFactor(linear.in_features, linear.out_features, rank, offsets[linear.in_features])

    inject_per_sample_lora(model, targets, make, context, alpha / rank)
    randomise_b(dict(model.named_parameters()), seed=2)
    params = trainable(model, lambda name: ".factors." in name)
    return context, [*params, *generator.parameters()], generator


# ----------------------------------------------------------------------------- whole model


@dataclass
class Inputs:
    ids: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T]
    condition: torch.Tensor  # [B, cond_dim]
    labels: torch.Tensor  # [B]
    yes_id: int


def yes_logit(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, yes_id: int) -> torch.Tensor:
    """As ``RecMethod.forward``: decoder, last position, LM head on that position only."""
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return model.get_output_embeddings()(hidden[:, -1]).float()[:, yes_id]


def plain_step(model: nn.Module, x: Inputs) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        logits = yes_logit(model, x.ids, x.mask, x.yes_id)
        F.binary_cross_entropy_with_logits(logits, x.labels).backward()
        return logits.detach()

    return step


def mixture_step(model: nn.Module, context: AdapterContext, x: Inputs) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        with context.use(x.condition):
            logits = yes_logit(model, x.ids, x.mask, x.yes_id)
        F.binary_cross_entropy_with_logits(logits, x.labels).backward()
        return logits.detach()

    return step


def generated_step(
    model: nn.Module, context: AdapterContext, generator: nn.Module, x: Inputs
) -> Callable[[], torch.Tensor]:
    """The generator once per step (as ``RecMethod.decode`` calls ``condition``), then the model."""

    def step() -> torch.Tensor:
        with context.use(generator(x.condition)):
            logits = yes_logit(model, x.ids, x.mask, x.yes_id)
        F.binary_cross_entropy_with_logits(logits, x.labels).backward()
        return logits.detach()

    return step


def loop_step(model: nn.Module, context: AdapterContext, x: Inputs) -> Callable[[], torch.Tensor]:
    """One forward and one backward per sample (batch of 1); the same loss as the batched step."""
    n = x.ids.shape[0]

    def step() -> torch.Tensor:
        out = []
        for b in range(n):
            with context.use(x.condition[b : b + 1]):
                logit = yes_logit(model, x.ids[b : b + 1], x.mask[b : b + 1], x.yes_id)
            (F.binary_cross_entropy_with_logits(logit, x.labels[b : b + 1]) / n).backward()
            out.append(logit.detach())
        return torch.cat(out)

    return step


def model_variants(base: nn.Module, x: Inputs, args, device: torch.device) -> tuple[list, Variant, Variant]:
    """All variants on frozen copies of ``base``; also the (batched, loop) pair to check."""
    torch.manual_seed(0)
    plain = frozen_copy(base)
    variants = [
        Variant("plain LoRA (peft)", plain_step(plain, x), add_plain_lora(plain, args.rank, args.alpha))
    ]
    check = None
    for k in args.experts:
        model = frozen_copy(base)
        context, params = add_mixture(model, k, args.rank, args.alpha, args.cond_dim)
        model.to(device).eval()
        variants.append(Variant(f"mixture K={k}", mixture_step(model, context, x), params))
        if k == args.loop_k:
            check = (variants[-1], Variant(f"per-sample loop K={k}", loop_step(model, context, x), params))
    plain.to(device).eval()
    variants.append(check[1])
    model = frozen_copy(base)
    context, params, generator = add_generated(
        model, args.rank, args.alpha, args.cond_dim, args.generator_layers
    )
    model.to(device).eval()
    generator.to(device, next(base.parameters()).dtype).eval()
    name = f"generated (CoRA, L={args.generator_layers})"
    variants.append(Variant(name, generated_step(model, context, generator, x), params))
    return variants, *check


def make_inputs(model: nn.Module, yes_id: int, args, device: torch.device) -> Inputs:
    gen = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    return Inputs(
        ids=torch.randint(0, vocab, (args.batch, args.tokens), generator=gen).to(device),
        mask=torch.ones(args.batch, args.tokens, dtype=torch.long, device=device),
        condition=torch.randn(args.batch, args.cond_dim, generator=gen).to(device),
        labels=torch.randint(0, 2, (args.batch,), generator=gen).float().to(device),
        yes_id=yes_id,
    )


# ----------------------------------------------------------------------------- one linear


def layer_variants(args, device: torch.device, dtype: torch.dtype) -> tuple[list, Variant, Variant]:
    """The same variants on one frozen ``dim`` x ``dim`` linear; its input needs a gradient, as a
    layer's does inside a model whose earlier layers train."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.tokens, args.dim, generator=gen).to(device, dtype).requires_grad_()
    condition = torch.randn(args.batch, args.cond_dim, generator=gen).to(device)
    linear = nn.Linear(args.dim, args.dim, bias=False).to(device, dtype).requires_grad_(False)

    def backward(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        out = module(inp)
        out.float().sum().backward()
        return out.detach()

    holder = nn.ModuleDict({"q_proj": frozen_copy(linear)})  # peft needs a parent module
    plain_params = add_plain_lora(holder, args.rank, args.alpha, targets=("q_proj",))
    holder.to(device).eval()
    variants = [
        Variant("frozen linear, no adapter", lambda: backward(linear, x), [x]),
        Variant("plain LoRA (peft)", lambda: backward(holder["q_proj"], x), [x, *plain_params]),
    ]
    check = None
    for k in args.experts:
        context = AdapterContext()
        layer = PerSampleLoRALinear(
            frozen_copy(linear), mixture_factory(k, args.rank, args.cond_dim)(linear, ""), context, args.scale
        )
        randomise_b(dict(layer.named_parameters()), seed=k)
        layer.to(device).eval()
        params = [x, *layer.factors.parameters()]
        variants.append(Variant(f"mixture K={k}", _layer_step(layer, context, x, condition, 0), params))
        if k == args.loop_k:
            loop = _layer_step(layer, context, x, condition, args.batch)
            check = (variants[-1], Variant(f"per-sample loop K={k}", loop, params))
    variants.append(check[1])
    # CoRA's generated factor: A = a given unit-norm [dim, r] per sample (the generator's
    # output; its cost is in the whole-model table), B = this layer's own P
    context = AdapterContext()
    layer = PerSampleLoRALinear(
        frozen_copy(linear), GeneratedFactor(args.dim, args.dim, args.rank), context, args.scale
    )
    randomise_b(dict(layer.named_parameters()), seed=3)
    layer.to(device).eval()
    w_gen = torch.randn(args.batch, args.dim * args.rank, generator=gen)
    w_gen = (
        F.normalize(w_gen, dim=-1).view(args.batch, args.dim, args.rank).to(device, dtype).requires_grad_()
    )
    step = _layer_step(layer, context, x, w_gen, 0)
    variants.append(Variant("generated factor (CoRA)", step, [x, w_gen, *layer.factors.parameters()]))
    return variants, *check


def _layer_step(layer, context, x, condition, per_sample: int) -> Callable[[], torch.Tensor]:
    """Batched (``per_sample`` 0) or one call per sample, then one backward of the summed output."""

    def step() -> torch.Tensor:
        if per_sample:
            outs = []
            for b in range(per_sample):
                with context.use(condition[b : b + 1]):
                    outs.append(layer(x[b : b + 1]))
            out = torch.cat(outs)
        else:
            with context.use(condition):
                out = layer(x)
        out.float().sum().backward()
        return out.detach()

    return step


# ----------------------------------------------------------------------------- correctness


def check_same(batched: Variant, loop: Variant, label: str) -> None:
    """Run both once and compare their outputs and gradients (on the same parameters)."""
    zero_grads(batched.params)
    out_b = batched.step()
    grads_b = [p.grad.clone() for p in batched.params]
    zero_grads(loop.params)
    out_l = loop.step()
    out_diff = (out_b - out_l).abs().max().item()
    grad_diff = max((gb - p.grad).abs().max().item() for gb, p in zip(grads_b, loop.params, strict=True))
    grad_scale = max(g.abs().max().item() for g in grads_b)
    print(
        f"check {label}: {batched.name} vs {loop.name}: output max |diff| {out_diff:.2e} "
        f"(max |output| {out_b.abs().max().item():.2e}), gradient max |diff| {grad_diff:.2e} "
        f"(max |grad| {grad_scale:.2e})"
    )


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="a BackboneConfig name")
    p.add_argument("--layers", type=int, default=4, help="first N decoder layers (0: all)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--layer-repeats", type=int, default=20, help="repeats of the one-linear benchmark")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=int, default=16)
    p.add_argument("--experts", type=int, nargs="+", default=[4, 8, 16], help="the mixtures' K")
    p.add_argument("--loop-k", type=int, default=8, help="K of the per-sample loop (one of --experts)")
    p.add_argument("--cond-dim", type=int, default=64)
    p.add_argument("--dim", type=int, default=576, help="the one-linear benchmark's width")
    p.add_argument("--generator-layers", type=int, default=8, help="layers of CoRA's generator")
    args = p.parse_args(argv)
    if args.loop_k not in args.experts:
        p.error(f"--loop-k {args.loop_k} is not one of --experts {args.experts}")
    args.scale = args.alpha / args.rank
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backbone = load_backbone(BackboneConfig(name=args.model, dtype=args.dtype), device)
    total_layers = len(backbone.model.get_decoder().layers)
    base = truncate(backbone.model, args.layers).requires_grad_(False)
    dtype = next(base.parameters()).dtype
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}, "
        f"layers {len(base.get_decoder().layers)}/{total_layers}, batch {args.batch}, tokens {args.tokens}, "
        f"dtype {dtype}, rank {args.rank}, alpha {args.alpha}, targets {'/'.join(TARGETS)}, "
        f"condition dim {args.cond_dim}, repeats {args.repeats}, warmup {args.warmup}"
    )
    inputs = make_inputs(base, backbone.yes_no_token_ids()[0], args, device)
    variants, batched, loop = model_variants(base, inputs, args, device)
    check_same(batched, loop, "model")
    times = run_interleaved(variants, args.warmup, args.repeats, device)
    print_table(
        "forward + backward, whole model", variants, times, "plain LoRA (peft)", (loop.name, batched.name)
    )

    variants, batched, loop = layer_variants(args, device, dtype)
    check_same(batched, loop, "linear")
    times = run_interleaved(variants, args.warmup, args.layer_repeats, device)
    shape = f"[{args.batch}, {args.tokens}, {args.dim}]"
    title = f"forward + backward, one {args.dim}x{args.dim} linear, input {shape}"
    print_table(title, variants, times, "plain LoRA (peft)", (loop.name, batched.name))


if __name__ == "__main__":
    main()
