"""Make every SID name exactly one item. Collisions are resolved once, here, and stored in the artifact.

Two methods:

* ``dedup_level`` (default, TIGER): append one level whose code numbers the items sharing a SID in item order —
  (12, 24, 52) twice becomes (12, 24, 52, 0) and (12, 24, 52, 1). *Every* item gets the extra level, also the
  items that collide with nobody (they get code 0): an imported 4-token index with 0.4% collisions becomes 5 tokens
  for all items (one more decoding step each). All SIDs keep one length, which decoding requires (the trie, the
  beam search and the logits processor end every SID after exactly ``levels`` tokens); its codebook size is the
  largest collision group. To keep the length when only a few items collide, use ``reassign``.
* ``reassign``: keep the first item of each group; move each other one to the nearest *free* code of the last level
  under the same prefix (nearest by the caller's cost, e.g. distance of the last-level residual to the centroids).
  SIDs keep their length; fails if a prefix has no free code left.
* ``none``: keep the codes as they are and fail if two items share a SID (e.g. importing SIDs that are already
  unique, such as an index.json this package exported).

Extending only the colliding items (mixed SID lengths) is not offered: see README, "Collisions and SID length".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

COLLISION_METHODS = ("dedup_level", "reassign", "none")
# Asked for (issue #11 item 12) but not offered: decoding assumes one SID length. The config check says why.
NOT_OFFERED = {
    "extend_colliding": "extending only the colliding items would give SIDs of mixed lengths, which decoding cannot "
                        "take (the trie, beam search and logits processor end every SID after exactly `levels` "
                        "tokens; README: Collisions and SID length); use reassign to keep the length, or dedup_level",
}


def collision_stats(codes: np.ndarray) -> dict[str, float]:
    """codes [N, L] -> n_items, n_unique, collision_rate (= 1 − unique / N), colliding_items, max_group."""
    _, counts = np.unique(codes, axis=0, return_counts=True)
    n = len(codes)
    return {
        "n_items": n,
        "n_unique": len(counts),
        "collision_rate": round(1.0 - len(counts) / n, 6) if n else 0.0,
        "colliding_items": int(counts[counts > 1].sum()),
        "max_group": int(counts.max()) if n else 0,
    }


def duplicate_rank(codes: np.ndarray) -> np.ndarray:
    """For each row, how many earlier rows have the same code tuple: codes [N, L] -> int64 [N] (0 = first)."""
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")  # groups together, item order inside each group
    sorted_groups = inverse[order]
    first = np.searchsorted(sorted_groups, sorted_groups, side="left")
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - first
    return rank


def add_dedup_level(codes: np.ndarray) -> np.ndarray:
    """TIGER de-duplication: codes [N, L] -> [N, L + 1]; the new level is :func:`duplicate_rank`."""
    return np.concatenate([codes, duplicate_rank(codes)[:, None]], axis=1)


def reassign_to_free_codes(
    codes: np.ndarray, codebook_size: int, last_level_cost: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Move every non-first item of a collision group to the cheapest unused last-level code under its prefix.

    codes [N, L]; ``last_level_cost(rows)`` returns the cost [len(rows), codebook_size] of each last-level code
    for those rows. Items are processed in row order, so the result is deterministic. Returns new codes [N, L].
    """
    out = codes.copy()
    movers = np.flatnonzero(duplicate_rank(codes) > 0)
    if movers.size == 0:
        return out
    used: dict[tuple[int, ...], set[int]] = {}
    for row in codes:
        used.setdefault(tuple(row[:-1].tolist()), set()).add(int(row[-1]))
    costs = last_level_cost(movers)  # [M, K]
    for row, cost in zip(movers, costs):
        prefix = tuple(codes[row, :-1].tolist())
        taken = used[prefix]
        free = [int(c) for c in np.argsort(cost, kind="stable") if int(c) not in taken]
        if not free:
            raise ValueError(f"cannot reassign item row {row}: all {codebook_size} last-level codes under prefix "
                             f"{prefix} are used; use collision: dedup_level")
        out[row, -1] = free[0]
        taken.add(free[0])
    return out


def resolve_collisions(
    codes: np.ndarray, method: str, codebook_size: int | None = None,
    last_level_cost: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Apply ``method`` (one of :data:`COLLISION_METHODS`); the result has no two equal rows."""
    if method == "dedup_level":
        resolved = add_dedup_level(codes)
    elif method == "reassign":
        if last_level_cost is None or codebook_size is None:
            raise ValueError("collision method 'reassign' needs the codebook size and a last-level cost")
        resolved = reassign_to_free_codes(codes, codebook_size, last_level_cost)
    elif method == "none":
        stats = collision_stats(codes)
        if stats["n_unique"] != len(codes):
            raise ValueError(f"collision: none, but {stats['colliding_items']} items share a SID (largest group "
                             f"{stats['max_group']}); use dedup_level or reassign")
        resolved = codes.copy()
    else:
        raise ValueError(f"unknown collision method {method!r}; choose from {COLLISION_METHODS}")
    assert collision_stats(resolved)["n_unique"] == len(resolved), "collision resolution left duplicates"
    return resolved
