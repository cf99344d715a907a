"""Helpers two or more bench scripts share (bench/quality.py, bench/leaderboard.py,
bench/rlmrec_quality.py): a prepared dataset made on demand, and a CF bundle scored on the same
hash sample of CTR rows the LLM methods are scored on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raylrec import storage
from raylrec.config import load_config

__all__ = ["cf_ctr_metrics", "ensure_dataset"]


def ensure_dataset(config_path: str | Path, out: str, say=print) -> str:
    """The dataset ``config_path`` prepares, at ``out`` (prepared now, on a local Ray instance,
    when it is not there yet)."""
    from raylrec.data.output import read_meta

    try:
        read_meta(out)
        return out
    except FileNotFoundError:
        pass
    from raylrec.data.prepare import prepare
    from raylrec.runtime import init_ray

    config = load_config(Path(config_path), [f"data.output={out}"])
    init_ray(config.ray)
    say(f"... preparing {out} ({config_path})")
    prepare(config.data)
    return out


def cf_ctr_metrics(
    dataset: str, bundle_path: str, split: str, seed: int, fraction: float
) -> dict[str, float]:
    """AUC / UAUC / logloss on all, warm and cold rows of ``split`` for a CF bundle, on the hash
    sample (``raylrec.llm.samples.sample_mask``) of ``fraction`` of the rows: the same rows an LLM
    method with the same ``sample.seed`` is scored on. Keys ``<split>/auc``, ``<split>/warm/auc``,
    ...; ``<split>/rows`` is the rows scored, ``<split>/score_s`` the seconds scoring took."""
    import time

    from raylrec.cf.bundle import bundle_history_len, load_cf_bundle
    from raylrec.cf.data import load_split
    from raylrec.eval import CTRAccumulator
    from raylrec.llm.samples import sample_mask

    bundle = load_cf_bundle(bundle_path)
    table = load_split(storage.absolute(dataset), split, bundle_history_len(bundle.config))
    keep = sample_mask(table.arrays["uid"], table.arrays["iid"], seed, fraction)
    rows = {k: v[keep] for k, v in table.arrays.items()}
    started = time.perf_counter()
    with torch.no_grad():
        batch = {k: torch.from_numpy(rows[k]) for k in ("uid", "iid", "history") if k in rows}
        logits = bundle.encoder.score(batch)
    seconds = time.perf_counter() - started
    acc = CTRAccumulator()
    acc.update(rows["uid"], rows["label"], torch.sigmoid(logits.float()).numpy(), rows.get("warm"))
    metrics = {f"{split}/{k.removeprefix('all/')}": v for k, v in acc.compute().items()}
    metrics[f"{split}/rows"] = float(np.count_nonzero(keep))
    metrics[f"{split}/score_s"] = seconds
    return metrics
