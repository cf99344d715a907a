"""LLM recommenders on one interface (``RecMethod``)."""

from __future__ import annotations

from raylrec.cf.bundle import CFBundle
from raylrec.config import MethodConfig
from raylrec.methods.base import RecMethod, Stage
from raylrec.methods.collm import CoLLM
from raylrec.methods.reclora import RecLoRA
from raylrec.methods.tallrec import TALLRec

__all__ = ["METHODS", "RecMethod", "Stage", "build_method", "CoLLM", "RecLoRA", "TALLRec"]

METHODS: dict[str, type[RecMethod]] = {m.name: m for m in (TALLRec, CoLLM, RecLoRA)}


def build_method(config: MethodConfig, backbone, cf: CFBundle | None) -> RecMethod:
    return METHODS[config.name](config, backbone, cf)
