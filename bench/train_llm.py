"""Training throughput of the LLM methods: raylrec on Ray Train with DeepSpeed ZeRO-2/3 on 1 and
2 workers, beside the loop a user would otherwise write (a plain single-process HF + peft
LoRA loop with the full LM head), on the same backbone, prompts and batch size, in one run.

    python bench/train_llm.py                                   # SmolLM2-135M, CoLLM ML-1M split
    python bench/train_llm.py --methods reclora --rows 64 --stages 2
    python bench/train_llm.py --methods cora --cf-bundle cora=/tmp/mf_collm_ml1m --rows 32

Samples/s and tokens/s are steady-state rates measured inside the training loop (start-up,
tokenisation and evaluation excluded), summed over workers. Each configuration gets all the
machine's CPUs (``cpus_per_worker`` = CPUs / workers); on a GPU box, ``--gpu`` also prints the
model FLOPs utilisation (forward 2N + activation gradients 2N per token for a frozen backbone,
over the GPU's peak bf16 FLOP/s given by ``--peak-tflops``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raylrec.config import build_config  # noqa: E402
from raylrec.methods import METHODS, template_text  # noqa: E402

# CoRA-MF: the paper's best encoder (configs/mf_collm_ml1m.yaml)
CF_BUNDLES = {
    "collm": "out/bundles/mf_collm_ml1m",
    "reclora": "out/bundles/sasrec_collm_ml1m",
    "cora": "out/bundles/mf_collm_ml1m",
}
LABELS = {
    "collm": "raylrec CoLLM (stage 2: projector)",
    "reclora": "raylrec RecLoRA",
    "cora": "raylrec CoRA-MF (generator + P_l)",
}


def _method(args, method: str) -> dict:
    """The method section: its CF bundle where it needs one; CoLLM's second stage only (the
    projector over the frozen LoRA, the stage it adds to TALLRec)."""
    fields = METHODS.get(method).model_fields
    section: dict = {"name": method}
    if METHODS.get(method).needs_cf:
        section["cf_bundle"] = args.cf_bundles.get(method, CF_BUNDLES.get(method))
    if "stage1_epochs" in fields:  # a key of another method is an error
        section["stage1_epochs"] = 0
    return section


def _config(args, method: str, workers: int, stage: int, storage: str):
    return build_config(
        {
            "dataset": args.dataset,
            "backbone": {"name": args.backbone},
            "method": _method(args, method),
            "prompt": {"max_tokens": args.max_tokens, "history_items": 10},
            "sample": {"max_train": args.rows, "max_valid": args.batch * max(workers, 1)},
            "train": {
                "epochs": 1,
                "batch_size": args.batch,
                "lr": 1e-4,
                "optimizer": "adamw",
                "num_workers": workers,
                "cpus_per_worker": max(1, args.cpus // workers),
                "use_gpu": args.gpu,
                "strategy": "deepspeed",
                "zero_stage": stage,
                "storage_path": storage,
                "wandb_project": "raylrec-bench",
            },
        }
    )


def _rates(result, workers: int) -> tuple[float, float]:
    """Summed over workers: ranks run in lockstep; rank 0's rate is in the history."""
    history = result.states[list(result.states)[-1]].history[-1]
    return history["train/samples_per_s"] * workers, history.get("train/tokens_per_s", 0.0) * workers


def bench_raylrec(args, method: str, workers: int, stage: int) -> tuple[float, float]:
    from raylrec.methods.train import train_method

    with tempfile.TemporaryDirectory() as storage:
        config = _config(args, method, workers, stage, storage)
        return _rates(train_method(config, say=lambda m: None), workers)


def bench_plain_peft(args) -> tuple[float, float]:
    """What a user writes without raylrec: HF model + peft LoRA, full LM head, one process."""
    from peft import LoraConfig, get_peft_model

    from raylrec.llm.backbone import load_backbone
    from raylrec.llm.samples import local_samples

    torch.set_num_threads(args.cpus)
    config = _config(args, "tallrec", 1, 2, "/tmp")
    device = torch.device("cuda" if args.gpu else "cpu")
    backbone = load_backbone(config.backbone, device)
    model = get_peft_model(
        backbone.model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
    )
    yes = backbone.yes_no_token_ids()[0]
    rows = local_samples(config, "train", template_text("tallrec"), 0, backbone.tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    n = len(rows["uid"]) - len(rows["uid"]) % args.batch
    samples = tokens = 0
    started = None
    for i, start in enumerate(range(0, n, args.batch)):
        if i == 1:  # the first step warms up allocators and kernels
            started, samples, tokens = time.perf_counter(), 0, 0
        ids = torch.from_numpy(rows["input_ids"][start : start + args.batch]).to(device)
        mask = torch.from_numpy(rows["attention_mask"][start : start + args.batch]).long().to(device)
        label = torch.from_numpy(rows["label"][start : start + args.batch]).to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -1, yes]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        samples += len(ids)
        tokens += int(mask.sum())
    if args.gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return samples / seconds, tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="out/collm_ml1m")
    parser.add_argument("--backbone", default="smollm2-135m-instruct")
    parser.add_argument("--methods", nargs="+", default=["tallrec", "collm", "reclora"])
    parser.add_argument("--stages", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rows", type=int, default=96, help="training rows per configuration")
    parser.add_argument("--batch", type=int, default=8, help="per worker")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    parser.add_argument(
        "--cf-bundle",
        action="append",
        default=[],
        metavar="METHOD=PATH",
        help="a method's CF bundle instead of CF_BUNDLES' (repeatable)",
    )
    args = parser.parse_args()
    args.cf_bundles = dict(item.split("=", 1) for item in args.cf_bundle)
    unknown = set(args.cf_bundles) - set(METHODS.names())
    if unknown:
        parser.error(f"--cf-bundle names unknown methods: {sorted(unknown)}")

    from raylrec.config import RayConfig
    from raylrec.runtime import init_ray

    os.environ.setdefault("WANDB_MODE", "disabled")
    init_ray(RayConfig(num_cpus=args.cpus))
    rows = []
    plain = bench_plain_peft(args)
    rows.append(("plain HF + peft LoRA (TALLRec), 1 process", "-", 1, *plain))
    for method in args.methods:
        for stage in args.stages:
            for workers in args.workers:
                print(f"... {method} ZeRO-{stage} {workers} worker(s)", flush=True)
                rows.append(
                    (
                        LABELS.get(method, f"raylrec {method}"),
                        f"ZeRO-{stage}",
                        workers,
                        *bench_raylrec(args, method, workers, stage),
                    )
                )

    from raylrec.llm.backbone import load_backbone

    params = sum(
        p.numel() for p in load_backbone(_config(args, "tallrec", 1, 2, "/tmp").backbone).model.parameters()
    )
    device = torch.cuda.get_device_name() if args.gpu else f"CPU x{args.cpus}"
    print(
        f"\nbackbone {args.backbone} ({params / 1e6:.0f}M params), batch {args.batch}/worker, "
        f"{args.rows} rows of {args.dataset}, prompts <= {args.max_tokens} tokens, {device}"
    )
    header = (
        f"{'configuration':<44} {'ZeRO':>6} {'workers':>7} {'samples/s':>10} {'tokens/s':>10} {'vs plain':>9}"
    )
    if args.gpu:
        header += f" {'MFU':>6}"
    print(header)
    print("-" * len(header))
    for name, stage, workers, sps, tps in rows:
        line = f"{name:<44} {stage:>6} {workers:>7} {sps:>10.2f} {tps:>10.0f} {sps / plain[0]:>8.2f}x"
        if args.gpu:
            line += f" {4 * params * tps / (args.peak_tflops * 1e12 * workers):>6.1%}"
        print(line)


if __name__ == "__main__":
    main()
