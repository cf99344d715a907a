"""The nightly refresh of RLMRec's profiles (arXiv 2310.15950): new items and users only.

Each night's dataset is prepared afresh, so its dense ids may differ from yesterday's and every
returning user's training sample has grown. Regenerating every profile whose prompt changed
would redo nearly all users each night; the refresh instead keeps every profile the directory
holds for an item or user it knows (matched by raw id, re-keyed to the night's dense ids) and
generates only those it has never seen (``refresh: new_only``), then re-embeds the profiles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raylrec.profiles.config import ProfilesConfig
from raylrec.profiles.embed import embed_profiles
from raylrec.profiles.generate import generate_profiles

__all__ = ["refresh_profiles"]


def refresh_profiles(
    config: ProfilesConfig, dataset: str, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Profiles of ``dataset``'s new items and users into ``config.output``, then the
    embeddings of ``config.embed.text``; returns what was generated and whether anything changed."""
    config = config.model_copy(update={"dataset": dataset, "refresh": "new_only"})
    manifest = generate_profiles(config, say)
    generated = manifest["last_run"]["generated"] if manifest["changed"] else {"item": 0, "user": 0}
    embedded = embed_profiles(config, say=say)
    return {
        "generated": generated,
        "rows": manifest["rows"],
        "changed": bool(manifest["changed"] or embedded["changed"]),
        "embeddings": config.embeddings_dir(),
    }
