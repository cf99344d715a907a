"""RLMRec's alignment around a base CF encoder (see the package docstring for the paper)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from raylrec.cf.encoders.lightgcn.model import LightGCN
from raylrec.cf.encoders.rlmrec.profiles import ProfileEmbeddings, read_profile_embeddings
from raylrec.cf.models import CFEncoder

if TYPE_CHECKING:
    from raylrec.cf.config import CFConfig
    from raylrec.cf.data import Split
    from raylrec.cf.encoders.rlmrec import RLMRecConfig
    from raylrec.cf.graph import GraphRows

__all__ = ["RLMRec", "info_nce", "profile_mlp"]


def _mix(seed: int, stream: int, draw: int = 0) -> int:
    """A seed for draw ``draw`` of private stream ``stream`` of a run seeded ``seed``."""
    return (
        seed * 6364136223846793005 + stream * 2862933555777941757 + draw * 1442695040888963407 + 1
    ) % 2**63


def profile_mlp(d_in: int, d_out: int, hidden: int) -> nn.Sequential:
    """RLMRec's mapping: Linear -> LeakyReLU -> Linear, xavier-uniform weights (the paper's
    sigma-down for Con, profile -> CF; sigma-up for Gen, CF -> profile)."""
    mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(), nn.Linear(hidden, d_out))
    for layer in (mlp[0], mlp[2]):
        nn.init.xavier_uniform_(layer.weight)
    return mlp


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    candidates: torch.Tensor,
    temperature: float,
    rows: torch.Tensor | None = None,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cosine InfoNCE: the mean over the kept ``rows`` of -log softmax_j(cos(a, c_j) / t) at
    the row's positive, the softmax over the kept ``columns`` of ``candidates`` (which hold
    every kept row's positive). What is left out are profiles that do not exist. With no row
    kept it is an exact 0 that still reaches every input (DDP needs each parameter used)."""
    if rows is not None and not bool(rows.all()):
        anchors, positives = anchors[rows], positives[rows]
    a = F.normalize(anchors, dim=-1)
    logits = a @ F.normalize(candidates, dim=-1).T / temperature
    if columns is not None and not bool(columns.all()):  # all present (the usual case): nothing to mask
        logits = logits.masked_fill(~columns, float("-inf"))
    positive = (a * F.normalize(positives, dim=-1)).sum(-1) / temperature
    per_row = torch.logsumexp(logits, dim=-1) - positive
    return per_row.sum() / max(len(per_row), 1)


class RLMRec(CFEncoder):
    """A base encoder (``self.base``) trained on its own loss plus ``weight`` times RLMRec's
    alignment with profile embeddings. Scoring, tables and the bundle are the base's: a loaded
    bundle serves ``FixedTables`` like any ID-based encoder's.

    With ``weight`` 0 it has no parameters of its own and its loss is the base's, so training
    equals the plain base of the same seed. Its own parameters are initialised, and its masks
    drawn, from private generators seeded from torch's seed at construction: the base's
    initial weights, negatives and edge dropout consume torch's random stream exactly as the
    plain base does, at any weight (runs differ by the alignment term only)."""

    def __init__(
        self,
        base: CFEncoder,
        profiles: ProfileEmbeddings,
        variant: str = "con",
        weight: float = 1e-2,
        temperature: float = 0.2,
        mask_ratio: float = 0.15,
    ):
        super().__init__()
        if variant not in ("con", "gen"):
            raise ValueError(f"variant must be 'con' or 'gen', got {variant!r}")
        if variant == "gen" and not isinstance(base, LightGCN):
            raise ValueError(
                f"RLMRec-Gen masks graph nodes: it needs a LightGCN base, got {type(base).__name__}"
            )
        nodes = base.num_users + base.num_items
        if profiles.vectors.shape[0] != nodes:
            raise ValueError(
                f"profile table has {profiles.vectors.shape[0]} rows for {nodes} users and items"
            )
        self.base = base
        self.num_users, self.num_items, self.dim = base.num_users, base.num_items, base.dim
        self.variant, self.weight = variant, weight
        self.temperature, self.mask_ratio = temperature, mask_ratio
        self._pinned: tuple[torch.Tensor, torch.Tensor] | None = None
        if not weight:
            return
        seed = torch.initial_seed()
        self._mask_seed = _mix(seed, 2)
        self.register_buffer("profiles", torch.from_numpy(profiles.vectors.copy()), persistent=False)
        self.register_buffer("has_profile", torch.from_numpy(profiles.present.copy()), persistent=False)
        self.register_buffer(
            "profiled", torch.from_numpy(profiles.present.nonzero()[0]).long(), persistent=False
        )
        d_s, d_e = profiles.dim, base.dim
        with torch.random.fork_rng(devices=[]):  # nn.Linear draws its own init: keep it off the stream
            torch.manual_seed(_mix(seed, 1))
            if variant == "con":
                self.mapper = profile_mlp(d_s, d_e, (d_s + d_e) // 2)
            else:
                self.mapper = profile_mlp(d_e, d_s, (d_s + d_e) // 2)
                self.mask_token = nn.Parameter(torch.zeros(d_e))
        if variant == "gen":
            self.register_buffer("mask_draws", torch.zeros((), dtype=torch.int64))

    @classmethod
    def graph_rows(cls, config: RLMRecConfig) -> GraphRows | None:
        base = config.base_config()
        return base.encoder_class().graph_rows(base)

    @classmethod
    def from_config(cls, config: RLMRecConfig, train: Split) -> RLMRec:
        if not config.profiles:
            raise ValueError(
                "cf.model rlmrec needs cf.profiles: a directory of profile embeddings "
                "(`raylrec profiles embed` writes one)"
            )
        base = config.base_config().build(train)  # first: the same draws as the plain base
        profiles = read_profile_embeddings(config.profiles, train.num_users, train.num_items)
        return cls(base, profiles, config.variant, config.weight, config.temperature, config.mask_ratio)

    # --- serving: the base's ------------------------------------------------------------------

    def embed(self, batch: dict[str, torch.Tensor], *items: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if self._pinned is None:
            return self.base.embed(batch, *items)
        users, table = self._pinned  # this training step's tables (one propagation, maybe masked)
        return (users[batch["uid"]], *(table if i is None else table[i] for i in items))

    def id_tables(self) -> dict[str, tuple[str, ...]]:
        return {f"base.{key}": sides for key, sides in self.base.id_tables().items()}

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.base.user_vectors(batch)

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.base.item_vectors(items)

    def regularisation(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        return self.base.regularisation(batch, items)

    # --- training ------------------------------------------------------------------------------

    def loss(self, batch: dict[str, torch.Tensor], objective: CFConfig) -> torch.Tensor:
        """The base's loss (BPR + L2, or BCE) plus ``weight`` times the alignment, both on the
        same forward (one propagation, with Gen's masked input for both, as RLMRec's)."""
        if not self.weight:
            return self.base.loss(batch, objective)
        tables, masked = self._step_tables()
        self._pinned = tables
        try:
            loss = super().loss(batch, objective)
        finally:
            self._pinned = None
        return loss + self.weight * self.alignment(batch, tables, masked)

    def _step_tables(
        self, masked: torch.Tensor | None = None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """(user table, item table) of this step and, for Gen, the masked node ids (``masked``,
        or this step's draw)."""
        if self.variant == "con":
            users = torch.arange(self.num_users, device=self.profiles.device)
            return tuple(self.base.embed({"uid": users}, None)), None
        masked = self.masked_nodes() if masked is None else masked
        ego = self.base.embedding.weight.index_put((masked,), self.mask_token.expand(len(masked), -1))
        return self.base.propagate(ego), masked

    def masked_nodes(self) -> torch.Tensor:
        """Gen: this step's masked nodes, ``max(1, floor(mask_ratio * n))`` of the ``n``
        profiled users and items drawn without replacement (RLMRec draws over all nodes; here
        nodes without a profile are never masked: they have nothing to reconstruct)."""
        generator = torch.Generator(device=self.profiled.device)
        generator.manual_seed(_mix(self._mask_seed, 0, int(self.mask_draws)))
        self.mask_draws += 1
        n = len(self.profiled)
        count = max(1, int(self.mask_ratio * n))
        pick = torch.randperm(n, generator=generator, device=self.profiled.device)[:count]
        return self.profiled[pick]

    def alignment(
        self,
        batch: dict[str, torch.Tensor],
        tables: tuple[torch.Tensor, torch.Tensor] | None = None,
        masked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """RLMRec's alignment term, unweighted, for ``batch`` on ``tables`` (default: computed
        here, e.g. to measure the term in eval mode; Gen masks ``masked``, or a fresh draw)."""
        if tables is None or (self.variant == "gen" and masked is None):
            tables, masked = self._step_tables(masked)
        if self.variant == "gen":
            return self.reconstruction(tables, masked)
        return self.contrastive(batch, tables)

    def contrastive(
        self, batch: dict[str, torch.Tensor], tables: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """RLMRec-Con: each CF vector of the batch against its profile mapped into the CF space;
        a user's negatives are every profiled user, an item's the batch's (profiled) items of the
        same role (positives, and sampled negatives when the batch has them). Rows with no
        profile are left out."""
        users, items = tables
        offset = self.num_users
        roles = [key for key in ("iid", "neg") if key in batch]
        # Each needed profile is mapped once: every user (the users' candidates) and the
        # batch's distinct items, not one MLP pass per row.
        rows = [torch.arange(offset, device=self.profiles.device), *(batch[k] + offset for k in roles)]
        needed, where = torch.unique(torch.cat(rows), return_inverse=True)
        mapped = self.mapper(self.profiles[needed])[where].split([len(r) for r in rows])
        uid = batch["uid"]
        term = info_nce(
            users[uid],
            mapped[0][uid],
            mapped[0],
            self.temperature,
            rows=self.has_profile[uid],
            columns=self.has_profile[:offset],
        )
        for key, mapped_items in zip(roles, mapped[1:], strict=True):
            iid = batch[key]
            present = self.has_profile[iid + offset]
            term = term + info_nce(
                items[iid], mapped_items, mapped_items, self.temperature, rows=present, columns=present
            )
        return term

    def reconstruction(self, tables: tuple[torch.Tensor, torch.Tensor], masked: torch.Tensor) -> torch.Tensor:
        """RLMRec-Gen: the masked nodes' propagated vectors mapped to the profile space, InfoNCE
        against their own profiles among the masked nodes."""
        final = torch.cat(tables)[masked]
        target = self.profiles[masked]
        return info_nce(self.mapper(final), target, target, self.temperature)
