"""TALLRec (Bao et al., RecSys 2023, arXiv 2305.00447): the LLM with a text-only prompt,
fine-tuned with a plain LoRA (peft; r 8, alpha 16 on the q and v projections)."""

from __future__ import annotations

from typing import Literal

from raylrec.methods.config import LoRAConfig, MethodConfig, Stage, register_method

__all__ = ["TALLRecConfig", "QUESTION"]

# TALLRec's question, also CoLLM's first stage and RecLoRA's text (its short-term history).
QUESTION = (
    "#Question: A user has given high ratings to the following movies: {history}. "
    "Using all available information, make a prediction about whether the user would enjoy "
    'the movie titled {target}? Answer with "Yes" or "No". \n#Answer:'
)


@register_method
class TALLRecConfig(MethodConfig):
    name: Literal["tallrec"] = "tallrec"
    lora: LoRAConfig = LoRAConfig()

    implementation = "raylrec.methods.tallrec.model:TALLRec"
    paper = "TALLRec, arXiv 2305.00447"
    templates = {"tallrec": QUESTION}

    def stages(self) -> list[Stage]:
        return [Stage("lora", "tallrec", ("lora",))]
