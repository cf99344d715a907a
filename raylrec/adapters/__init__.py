"""Per-sample low-rank adapters: a different LoRA update for every sample of a batch."""

from raylrec.adapters.per_sample_lora import (
    AdapterContext,
    LoRAMixture,
    PerSampleLoRALinear,
    Router,
    inject_per_sample_lora,
)

__all__ = ["AdapterContext", "LoRAMixture", "PerSampleLoRALinear", "Router", "inject_per_sample_lora"]
