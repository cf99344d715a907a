"""LLM side of the recommenders: backbones (and, beside them, prompts and method modules)."""

from raylrec.llm.backbone import (
    Backbone,
    BackboneError,
    load_backbone,
    resolve_dtype,
    tiny_llama_config,
    tiny_tokenizer,
)

__all__ = [
    "Backbone",
    "BackboneError",
    "load_backbone",
    "resolve_dtype",
    "tiny_llama_config",
    "tiny_tokenizer",
]
