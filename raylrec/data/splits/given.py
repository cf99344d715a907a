"""The split the source's files already hold (the CoLLM data: ``raylrec.data.sources.collm``)."""

from __future__ import annotations

from typing import Literal

from raylrec.data.config import SplitProtocol, register_split

__all__ = ["GivenSplit"]


@register_split
class GivenSplit(SplitProtocol):
    """Keep the split the source already carries (the CoLLM data)."""

    protocol: Literal["given"] = "given"

    from_source = True
