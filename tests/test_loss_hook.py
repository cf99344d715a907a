"""A model's own ``loss`` is what training optimises: a method (and a CF encoder) whose ``loss``
adds a term — an L2 pull of one parameter group toward a constant, as RLMRec adds its alignment
term — is trained a few steps in a plain process by the same task and loop training uses, and
the trained weights follow that term (and do not without it)."""

from __future__ import annotations

import numpy as np
import torch

from raylrec.cf.config import ENCODERS
from raylrec.cf.data import Split
from raylrec.cf.encoders.mf.model import MF
from raylrec.cf.task import CFTask, epoch_batches
from raylrec.config import BackboneConfig, EvalConfig, TrainConfig
from raylrec.llm.backbone import load_backbone
from raylrec.methods import METHODS
from raylrec.methods.tallrec.model import TALLRec
from raylrec.methods.task import LLMTask
from raylrec.methods.task import epoch_batches as llm_batches
from raylrec.train.engines import TorchEngine
from raylrec.train.loop import fit
from raylrec.train.reporting import LocalReporter

TARGET = 0.5  # where the extra term pulls the parameters


class PulledTALLRec(TALLRec):
    """TALLRec whose loss also pulls every LoRA weight toward ``TARGET``."""

    def loss(self, batch):
        pull = sum(((p - TARGET) ** 2).sum() for p in self.parameter_groups()["lora"])
        return super().loss(batch) + 10.0 * pull


class PulledMF(MF):
    """MF whose loss also pulls the item table toward ``TARGET``."""

    def loss(self, batch, objective):
        return super().loss(batch, objective) + 10.0 * ((self.items.weight - TARGET) ** 2).mean()


def _train_config(**kw) -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=4, lr=0.05, seed=0, metric="valid/auc", log_every_s=1e9, **kw)


def _prompts(rows: int = 16, tokens: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(5, 800, (rows, tokens)),
        "attention_mask": np.ones((rows, tokens), np.int64),
        "uid": np.arange(rows) % 4 + 1,
        "iid": np.arange(rows) + 1,
        "label": (np.arange(rows) % 2).astype(np.float32),
    }


def _lora_distance(cls) -> tuple[float, float]:
    """Mean |w - TARGET| of the LoRA weights before and after a few training steps of ``cls``."""
    torch.manual_seed(0)
    backbone = load_backbone(BackboneConfig(name="tiny-random-llama"))
    method = cls(METHODS.get("tallrec")(), backbone, None)
    method.set_stage(method.stages()[0])

    def distance() -> float:
        return float(torch.cat([(p.detach() - TARGET).abs().flatten() for p in method.lora]).mean())

    before = distance()
    config, arrays = _train_config(), _prompts()
    params = [p for p in method.parameters() if p.requires_grad]
    engine = TorchEngine(method, config, 4, params, full_state=False)
    task = LLMTask(method, arrays, EvalConfig(), config.batch_size, torch.device("cpu"))
    fit(task, lambda e: llm_batches(arrays, 4, 0, e, torch.device("cpu")), config, LocalReporter(), engine)
    return before, distance()


def test_a_method_trains_on_its_own_loss():
    before, plain = _lora_distance(TALLRec)
    _, pulled = _lora_distance(PulledTALLRec)
    assert pulled < 0.5 * before, (before, pulled)  # the added term moved the weights to TARGET
    assert abs(plain - before) < 0.2 * before, (before, plain)  # and without it they stay put


def _item_distance(cls) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    rows = 64
    arrays = {
        "uid": rng.integers(1, 9, rows),
        "iid": rng.integers(1, 13, rows),
        "label": (np.arange(rows) % 2).astype(np.float32),
    }
    train = Split(arrays, 9, 13)
    cf = ENCODERS.get("mf")(dim=4)
    torch.manual_seed(0)
    model = cls(train.num_users, train.num_items, cf.dim)
    before = float((model.items.weight.detach() - TARGET).abs().mean())
    config = _train_config()
    task = CFTask(model, cf, EvalConfig(), train, train)
    engine = TorchEngine(model, config, 16)
    fit(task, lambda e: epoch_batches(train, 4, 0, e, cf), config, LocalReporter(), engine)
    return before, float((model.items.weight.detach() - TARGET).abs().mean())


def test_a_cf_encoder_trains_on_its_own_loss():
    before, plain = _item_distance(MF)
    _, pulled = _item_distance(PulledMF)
    assert pulled < 0.7 * before and pulled < plain, (before, plain, pulled)
