"""CoLLM (Zhang et al., arXiv 2310.19488): frozen CF embeddings projected into the
token-embedding space, one token per ID, in two stages (LoRA on the text prompt, then the
projector)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raylrec.config_types import Bool, Int
from raylrec.methods.config import LoRAConfig, MethodConfig, Stage, register_method

__all__ = ["CoLLMConfig"]

# The TALLRec question with one ID slot for the user and one for the target item.
COLLM_QUESTION = (
    "#Question: A user has given high ratings to the following movies: {history}. "
    "Additionally, we have information about the user's preferences encoded in the feature "
    "{user_id}. Using all available information, make a prediction about whether the user "
    'would enjoy the movie titled {target} with the feature {item_id}? Answer with "Yes" or "No". '
    "\n#Answer:"
)


@register_method
class CoLLMConfig(MethodConfig):
    name: Literal["collm"] = "collm"
    lora: LoRAConfig = LoRAConfig()
    projector_expansion: Int = Field(
        default=10, ge=1, description="projector: Linear(d, k*d) -> ReLU -> Linear"
    )
    stage1_epochs: Int = Field(default=1, ge=0, description="stage 1 (LoRA on the text prompt); 0 skips")
    tune_cf: Bool = Field(default=False, description="stage 2 also tunes the CF embeddings")

    implementation = "raylrec.methods.collm.model:CoLLM"
    paper = "CoLLM, arXiv 2310.19488"
    needs_cf = True
    templates = {"collm": COLLM_QUESTION}

    def stages(self) -> list[Stage]:
        stage2 = Stage("projector", "collm", ("projector", "cf") if self.tune_cf else ("projector",))
        if self.stage1_epochs == 0:
            return [stage2]
        return [Stage("lora", "tallrec", ("lora",), epochs=self.stage1_epochs), stage2]
