"""Per-sample low-rank adapters: a different LoRA update for every sample of a batch."""

from raylrec.adapters.generated import GeneratedFactor, WeightGenerator
from raylrec.adapters.per_sample_lora import (
    AdapterContext,
    LoRAMixture,
    PerSampleLoRALinear,
    Router,
    inject_per_sample_lora,
)

__all__ = [
    "AdapterContext",
    "GeneratedFactor",
    "LoRAMixture",
    "PerSampleLoRALinear",
    "Router",
    "WeightGenerator",
    "inject_per_sample_lora",
]
