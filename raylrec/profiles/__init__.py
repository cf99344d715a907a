"""RLMRec's LLM-written user and item profiles (arXiv 2310.15950) as Ray Data batch jobs.

``raylrec.profiles.generate``: profiles from a prepared dataset (items, then users from their
training items), committed by a manifest; ``raylrec.profiles.embed``: sentence embeddings of the
profiles (or of plain metadata text, the ablation) in the layout the alignment reads. The
configuration (``raylrec.profiles.config``) and the prompts import without torch.
"""

from raylrec.profiles.config import ProfilesConfig, load_profiles_config

__all__ = ["ProfilesConfig", "load_profiles_config"]
