"""The user-item interaction graph a graph encoder propagates over (LightGCN, RLMRec on it):
``D^-1/2 A D^-1/2`` of the bipartite graph, users first then items, as sparse CSR.

Two ways to the same graph, entry for entry:

- ``normalized_adjacency``: from (user, item) arrays a plain process holds;
- ``graph_from_item_sets``: from each user's distinct items (``ItemSets``, built by streaming the
  split: ``raylrec.data.item_sets``). The Ray path builds it once in a Ray task
  (``shared_graph_ref``) and every process of a node reads the one copy in the object store,
  zero-copy: a training worker, an evaluation task and the driver exporting the bundle.

Memory: 2 stored entries per distinct (user, item) pair (one in the user's row, one in the
item's), each an int64 column and a float32 value, so **24 bytes per distinct pair**, plus
8 bytes per user and item for the row pointers. Repeated interactions of a pair add nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    import ray

    from raylrec.eval.ranking import ItemSets

__all__ = ["Graph", "GraphRows", "graph_from_item_sets", "normalized_adjacency", "shared_graph_ref"]

# Which training rows the graph's edges come from: every interaction, or the label-1 ones.
GraphRows = Literal["all", "positives"]


@dataclass(frozen=True)
class Graph:
    """The normalised adjacency as plain CSR arrays: what goes into the object store (numpy
    arrays come back from it zero-copy, a torch tensor would be copied)."""

    crow_indices: np.ndarray
    col_indices: np.ndarray
    values: np.ndarray
    size: int

    def tensor(self) -> torch.Tensor:
        """A sparse CSR tensor over these arrays, without a copy (the object store's arrays are
        read-only; propagation only reads the graph, edge dropout writes a new values array)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                torch.from_numpy(self.crow_indices),
                torch.from_numpy(self.col_indices),
                torch.from_numpy(self.values),
                (self.size, self.size),
                check_invariants=False,  # built sorted and in range here
            )


def normalized_adjacency(
    users: np.ndarray, items: np.ndarray, num_users: int, num_items: int
) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the user-item bipartite graph, users first then items (sparse CSR)."""
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    u, i = pairs[:, 0], pairs[:, 1] + num_users
    rows = np.concatenate([u, i])
    cols = np.concatenate([i, u])
    n = num_users + num_items
    inv_sqrt = _inverse_sqrt(np.bincount(rows, minlength=n))
    values = inv_sqrt[rows] * inv_sqrt[cols]
    # The indices are built in range here, so the invariant check torch asks us to choose is off.
    coo = torch.sparse_coo_tensor(
        torch.as_tensor(np.stack([rows, cols])),
        torch.as_tensor(values, dtype=torch.float32),
        (n, n),
        check_invariants=False,
    )
    with warnings.catch_warnings():  # torch's "sparse CSR is in beta" notice, once per graph
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.coalesce().to_sparse_csr()


def graph_from_item_sets(sets: ItemSets, num_items: int) -> Graph:
    """The graph ``normalized_adjacency`` builds from the same pairs, from each user's sorted,
    distinct items: the user rows are the item sets themselves (shifted past the users), the
    item rows their transpose (a stable sort by item keeps each item's users ascending)."""
    if not sets.distinct:
        raise ValueError("the graph needs distinct item sets (build_item_sets(..., distinct=True))")
    num_users = sets.num_users
    user_degree = np.diff(sets.indptr)
    items = sets.indices.astype(np.int64)
    item_degree = np.bincount(items, minlength=num_items)
    inv_user, inv_item = _inverse_sqrt(user_degree), _inverse_sqrt(item_degree)
    entry_user = np.repeat(np.arange(num_users, dtype=np.int64), user_degree)
    by_item = np.argsort(items, kind="stable")
    item_users = entry_user[by_item]
    values = np.concatenate(
        [inv_user[entry_user] * inv_item[items], inv_item[items[by_item]] * inv_user[item_users]]
    ).astype(np.float32)
    crow = np.concatenate([sets.indptr, sets.indptr[-1] + np.cumsum(item_degree)]).astype(np.int64)
    cols = np.concatenate([items + num_users, item_users])
    return Graph(crow, cols, values, num_users + num_items)


def _inverse_sqrt(degree: np.ndarray) -> np.ndarray:
    """D^-1/2 of each node's degree, in float64; 0 for a node without edges."""
    degree = degree.astype(np.float64)
    return np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1)), 0.0)


def shared_graph_ref(item_sets: ray.ObjectRef, num_items: int) -> ray.ObjectRef:
    """The graph of ``item_sets`` (a reference to distinct training item sets), built by one Ray
    task and kept in the object store: each node holds one copy, its processes read it
    zero-copy. Waited for here, before any worker that needs it holds the CPUs."""
    import ray

    ref = ray.remote(num_cpus=1, max_retries=2)(graph_from_item_sets).remote(item_sets, num_items)
    ray.wait([ref], fetch_local=False)
    return ref
