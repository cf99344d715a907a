"""CLLM4Rec's model (arXiv 2311.01343; see the package docstring): ID tokens over a frozen LLM.

Two sets of ID tables share the frozen backbone: the collaborative model's (``collab_users``,
``collab_items``; fine-tuned into the recommender, and the one serving uses) and the content
model's (``content_users``, ``content_items``). Each is [rows x hidden], N(0, 0.02), row 0
the padding id; the backbone's word embeddings are not extended, so no frozen tensor changes
shape. A position's input embedding is its word's, its user's or its item's (the corpora's
``input_ids`` / ``id_users`` / ``id_items``). Heads:

- item head (collaborative LM, recommendation, serving): the last hidden state times the
  collaborative item table, no bias: tied, one tensor (``IDTable.forward(hidden=...)``);
- content LM: the backbone's own (frozen) LM head over the vocabulary.

Objectives (``loss``, by the batch's ``objective``): the collaborative LM's next-item softmax
over items, the content LM's next-token softmax, the recommendation objective's multinomial
likelihood of the held-out items (the paper's target; the released code targets all training
items). Each adds the mutual regularisation ``mr_weight`` x the mean over the batch's ID tokens
of the squared distance between this model's and the other model's vector of that ID, the
other side held fixed (the released code sums over tokens and dimensions, so its weight grows
with the batch; a mean keeps ``mr_weight`` independent of the batch size). The content
warm-up stage runs without it, as the paper's code does.

For catalogues too large for a full softmax in training, ``sampled_negatives`` = S replaces the
item softmax's normaliser by an importance-sampling estimate (``sampled_item_log_probs``; Bengio
& Senecal 2008, Jean et al. 2015, arXiv 1412.2007): the row's targets exactly, plus S negatives
drawn uniformly from the N items and shared by the batch, each weighted 1 / (S q) = N / S (its
logit + log(N/S)), a negative that is one of the row's targets dropped. The estimate of the
partition function is unbiased; its log, and so the loss, is biased low for small S. Evaluation
and serving always use the full softmax.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raylrec.cf.bundle import CFBundle
from raylrec.methods.base import Batch, RecMethod
from raylrec.methods.cllm4rec import CLLM4RecConfig
from raylrec.methods.cllm4rec.corpora import Pieces

__all__ = ["CLLM4Rec", "IDTable", "OBJECTIVES", "sampled_item_log_probs"]

OBJECTIVES = {"content": 0, "collaborative": 1, "recommendation": 2}
_IGNORE = -100


class IDTable(nn.Module):
    """One ID embedding table. Calling the module (not reading ``weight``) for both the lookup
    and the tied head lets ZeRO-3 gather the partitioned table around each use."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(rows, dim) * 0.02)

    def forward(
        self,
        ids: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
        start: int = 0,
        stop: int | None = None,
    ) -> torch.Tensor:
        """``ids`` -> their rows; or ``hidden`` [n, dim] -> logits against rows start..stop-1."""
        if hidden is not None:
            table = self.weight[start:stop]
            return hidden.to(table.dtype) @ table.T
        return F.embedding(ids, self.weight)


def sampled_item_log_probs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    table: IDTable,
    num_items: int,
    negatives: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Estimated log-probabilities [n, t] of ``targets`` [n, t] (0 = padding) under the tied item
    softmax of ``hidden`` [n, dim], with ``negatives`` uniform samples (from ``generator``, a CPU
    one) for the non-target mass (see the module docstring). Only the targets' and the samples'
    rows of ``table`` are read."""
    real_items = num_items - 1  # row 0 is padding
    drawn = torch.randint(1, num_items, (negatives,), generator=generator).to(hidden.device)
    hidden = hidden.float()
    target_logits = torch.einsum("nd,ntd->nt", hidden, table(targets).float())
    target_logits = target_logits.masked_fill(targets == 0, -torch.inf)
    negative_logits = hidden @ table(drawn).float().T + float(np.log(real_items / negatives))
    hits = (drawn[None, None, :] == targets[:, :, None]).any(1)  # already counted exactly
    negative_logits = negative_logits.masked_fill(hits, -torch.inf)
    log_partition = torch.logsumexp(torch.cat([target_logits, negative_logits], 1), dim=1, keepdim=True)
    return target_logits - log_partition


class CLLM4Rec(RecMethod):
    def __init__(self, config: CLLM4RecConfig, backbone, cf: CFBundle | None):
        super().__init__(config, backbone, cf)
        if config.num_users is None or config.num_items is None:
            raise ValueError(
                "cllm4rec: method.num_users and method.num_items size the ID tables "
                "(training sets them from the dataset's meta.json)"
            )
        dim = self.lm.get_input_embeddings().weight.shape[1]
        self.collab_users = IDTable(config.num_users, dim)
        self.collab_items = IDTable(config.num_items, dim)
        self.content_users = IDTable(config.num_users, dim)
        self.content_items = IDTable(config.num_items, dim)
        self.mr_weight = config.mr_weight
        self.stage_name = ""
        self.pieces = Pieces.build(backbone.tokenizer, config.item_noun)  # the serving prompt's text

    @property
    def num_items(self) -> int:
        # from the config: under ZeRO-3 a partitioned table's local shape is a placeholder's
        return int(self.config.num_items)

    def recommend(
        self, users: np.ndarray, known: Sequence[np.ndarray], k: int, *, exclude_seen: bool = True,
        item_chunk: int = 65_536,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """The catalogue's top-``k`` for each user from one forward pass of its serving prompt
        (``serve.recommend_known``; the paper's section 3.5)."""
        from raylrec.methods.cllm4rec.serve import recommend_known

        return recommend_known(
            self, self.pieces, users, known, k, max_items=self.config.max_items,
            seed=0, exclude_seen=exclude_seen, item_chunk=item_chunk,
        )  # fmt: skip

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "collab": [self.collab_users.weight, self.collab_items.weight],
            "content": [self.content_users.weight, self.content_items.weight],
        }

    def set_stage(self, stage) -> None:
        super().set_stage(stage)
        self.stage_name = stage.name

    def _tables(self, side: str) -> tuple[IDTable, IDTable]:
        if side == "collab":
            return self.collab_users, self.collab_items
        return self.content_users, self.content_items

    # --- inputs and hidden states -------------------------------------------------------------

    def embed(self, batch: Batch, side: str = "collab") -> torch.Tensor:
        """[rows, tokens, hidden]: each position's word, user or item vector."""
        words = self.lm.get_input_embeddings()(batch["input_ids"])
        users_table, items_table = self._tables(side)
        users, items = batch["id_users"], batch["id_items"]
        out = torch.where((users > 0)[..., None], users_table(users).to(words.dtype), words)
        return torch.where((items > 0)[..., None], items_table(items).to(words.dtype), out)

    def input_embeddings(self, batch: Batch) -> torch.Tensor | None:
        return self.embed(batch, "collab")

    def hidden_states(self, batch: Batch, side: str = "collab") -> torch.Tensor:
        """The frozen decoder's last hidden states [rows, tokens, hidden] over ``side``'s IDs."""
        mask = batch["attention_mask"]
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        decoder = self.lm.get_decoder()
        out = decoder(
            inputs_embeds=self.embed(batch, side),
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
        )
        return out.last_hidden_state

    def user_states(self, batch: Batch) -> torch.Tensor:
        """[rows, hidden]: the recommendation prompt's last hidden state (rows are left-padded)."""
        return self.hidden_states(batch, "collab")[:, -1]

    def item_logits(self, hidden: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The tied item head: [n, hidden] -> [n, items start..stop-1] (float32), padding at -inf."""
        logits = self.collab_items(hidden=hidden, start=start, stop=stop).float()
        if start == 0:
            logits[:, 0] = -torch.inf
        return logits

    def forward(self, batch: Batch, compute_loss: bool = False) -> torch.Tensor:
        """Scores of every item for each row's prompt [rows, items] (``compute_loss``: the loss)."""
        if compute_loss:
            return self.loss(batch)
        return self.item_logits(self.user_states(batch))

    # --- objectives ---------------------------------------------------------------------------

    def loss(self, batch: Batch) -> torch.Tensor:
        return self._objective_loss(batch) + self._zero3_gradient_anchor(batch)

    def _objective_loss(self, batch: Batch) -> torch.Tensor:
        objective = int(batch["objective"][0])
        if objective == OBJECTIVES["content"]:
            loss = self.content_loss(batch)
            with_mr = self.stage_name != "content"  # the warm-up runs without it
            return loss + self.mutual_regularisation(batch, "content") if with_mr else loss
        if objective == OBJECTIVES["collaborative"]:
            return self.collaborative_loss(batch) + self.mutual_regularisation(batch, "collab")
        return self.recommendation_loss(batch) + self.mutual_regularisation(batch, "collab")

    def _zero3_gradient_anchor(self, batch: Batch) -> torch.Tensor:
        """Zero, with every ID table in the graph. Each pass trains one side's tables; under
        DeepSpeed ZeRO-3 (0.19) a parameter that gets no gradient in a backward keeps its
        previous one, so a content pass re-applied the last collaborative gradient to the
        collaborative tables at every step (measured: ZeRO-3's pretraining loss rose where
        ZeRO-2's fell). A zero contribution overwrites it. Only under ZeRO-3 (its parameters
        carry ``ds_id``): a plain torch optimiser skips parameters without a gradient, and a
        zero one would move them by Adam's momentum."""
        if not hasattr(self.collab_users.weight, "ds_id"):
            return torch.zeros((), device=batch["input_ids"].device)
        padding = torch.zeros(1, dtype=torch.long, device=batch["input_ids"].device)
        tables = (self.collab_users, self.collab_items, self.content_users, self.content_items)
        return 0.0 * sum(table(padding).sum() for table in tables)

    def collaborative_loss(self, batch: Batch) -> torch.Tensor:
        """Next-item softmax over items only, the head tied to the item table."""
        labels = batch["item_labels"]
        where = labels > 0
        hidden = self.hidden_states(batch, "collab")[where]
        if self._sampling():
            return -self._sampled_log_probs(hidden, labels[where][:, None]).mean()
        return F.cross_entropy(self.item_logits(hidden), labels[where])

    def content_loss(self, batch: Batch) -> torch.Tensor:
        """Next-token softmax over the vocabulary on the text, the backbone's own LM head."""
        labels = batch["token_labels"]
        where = labels != _IGNORE
        hidden = self.hidden_states(batch, "content")[where]
        # Calling the head module (not indexing its weight) lets ZeRO-3 gather it.
        logits = self.lm.get_output_embeddings()(hidden).float()
        return F.cross_entropy(logits, labels[where])

    def recommendation_loss(self, batch: Batch) -> torch.Tensor:
        """Multinomial likelihood of the held-out items: -sum_j t_j log softmax(h W_items^T)_j,
        averaged over users."""
        targets = batch["target_items"]
        if self._sampling():
            picked = self._sampled_log_probs(self.user_states(batch), targets)
        else:
            log_probs = torch.log_softmax(self.item_logits(self.user_states(batch)), dim=-1)
            picked = log_probs.gather(1, targets)
        # where(), not a product: padding targets are at -inf (and -inf * 0 is NaN)
        return -torch.where(targets > 0, picked, 0.0).sum(1).mean()

    def _sampling(self) -> bool:
        return self.training and self.config.sampled_negatives is not None

    def _sampled_log_probs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Seeded by the batch's targets, not the global RNG: a run resumed mid-epoch replays the
        # same batches and so draws the same negatives (the checkpoint holds no RNG state).
        seed = zlib.crc32(targets.detach().cpu().numpy().tobytes())
        return sampled_item_log_probs(
            hidden, targets, self.collab_items, self.num_items, int(self.config.sampled_negatives),
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    def mutual_regularisation(self, batch: Batch, side: str) -> torch.Tensor:
        """``mr_weight`` x mean over the batch's ID tokens of ||e_side - e_other||^2, the other
        model's vectors held fixed."""
        if not self.mr_weight:
            return torch.zeros((), device=batch["input_ids"].device)
        users = batch["id_users"][batch["id_users"] > 0]
        items = batch["id_items"][batch["id_items"] > 0]
        if "target_items" in batch:
            items = torch.cat([items, batch["target_items"][batch["target_items"] > 0]])
        mine_u, mine_i = self._tables(side)
        other_u, other_i = self._tables("content" if side == "collab" else "collab")
        with torch.no_grad():
            fixed_u, fixed_i = other_u(users), other_i(items)
        distance = ((mine_u(users) - fixed_u) ** 2).sum(-1).sum() + ((mine_i(items) - fixed_i) ** 2).sum(
            -1
        ).sum()
        return self.mr_weight * distance / max(1, len(users) + len(items))
