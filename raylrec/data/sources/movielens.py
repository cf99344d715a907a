"""MovieLens-100K and MovieLens-1M in GroupLens's formats (``raylrec.data.movielens``)."""

from __future__ import annotations

from typing import Literal

from raylrec.data.config import SourceConfig, register_source

__all__ = ["MovieLens1MSource", "MovieLens100KSource"]


@register_source
class MovieLens100KSource(SourceConfig):
    """MovieLens-100K: GroupLens files (u.data, u.item, u.user) at ``path``, or, when ``path``
    is unset, the copy the ``recbole==1.2.1`` wheel ships (downloaded once into the cache)."""

    type: Literal["movielens_100k"] = "movielens_100k"
    path: str | None = None

    loader = "raylrec.data.movielens:load_ml100k"


@register_source
class MovieLens1MSource(SourceConfig):
    """MovieLens-1M in GroupLens's format (ratings.dat, movies.dat, users.dat)."""

    type: Literal["movielens_1m"] = "movielens_1m"
    path: str

    loader = "raylrec.data.movielens:load_ml1m"
