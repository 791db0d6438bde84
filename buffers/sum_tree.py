"""A vectorised sum tree for proportional prioritized replay (Schaul et al. 2016, appendix B.2.1).

Leaves hold non-negative masses; every internal node holds the float64 sum of its two children, so
the root is the total mass and a prefix-sum search from the root finds, for a value u in [0, total),
the leaf whose cumulative interval contains u. Searches work on arrays of targets at once (a few
NumPy operations per tree level), so drawing 32 leaves from 10^5 costs about twenty small array
operations rather than 32 Python descents.
"""

from __future__ import annotations

import numpy as np

# Up to this many leaves an update recomputes their ancestors in Python, each shared ancestor once: for
# the one leaf written per environment step, or a run of neighbouring leaves, that beats NumPy calls
# per tree level (measured: ~15 us vs ~50 us for 1-9 leaves of a 2^18-leaf tree).
_SCALAR_UPDATE_MAX = 12


class SumTree:
    """Binary sum tree over ``size`` leaves, stored as a flat float64 array (root at index 1).

    Invariant: every internal node equals ``left + right`` of its current children, evaluated in
    float64. Updates recompute all ancestors of the changed leaves, so the invariant holds after
    every call and the tree is a deterministic function of its leaves.
    """

    def __init__(self, size: int) -> None:
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"SumTree size must be a positive integer, got {size!r}")
        self.size = int(size)
        self._first_leaf = 1 << max(0, (self.size - 1).bit_length())
        self._depth = self._first_leaf.bit_length() - 1
        self.nodes = np.zeros(2 * self._first_leaf, dtype=np.float64)

    @property
    def total(self) -> float:
        """Sum of all leaves."""
        return float(self.nodes[1])

    def get(self, leaves: np.ndarray) -> np.ndarray:
        """Masses of the given leaves (int array in [0, size))."""
        return self.nodes[self._first_leaf + np.asarray(leaves, dtype=np.int64)]

    def set(self, leaves: np.ndarray, values: np.ndarray) -> None:
        """Set ``leaves`` to ``values`` (finite, >= 0); with repeated leaves the last value wins."""
        leaves = np.asarray(leaves, dtype=np.int64).reshape(-1)
        values = np.broadcast_to(np.asarray(values, dtype=np.float64), leaves.shape)
        if leaves.size == 0:
            return
        if leaves.min() < 0 or leaves.max() >= self.size:
            raise IndexError(f"SumTree leaf index out of range [0, {self.size})")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("SumTree masses must be finite and >= 0")
        nodes = self.nodes
        positions = leaves + self._first_leaf
        if leaves.size <= _SCALAR_UPDATE_MAX:
            for position, value in zip(positions.tolist(), values.tolist()):
                nodes[position] = value
            level = set(positions.tolist())
            for _ in range(self._depth):  # shared ancestors (neighbouring leaves) are summed once
                level = {position >> 1 for position in level}
                for position in level:
                    nodes[position] = nodes[2 * position] + nodes[2 * position + 1]
            return
        nodes[positions] = values
        for _ in range(self._depth):
            # All positions sit at one depth; a parent listed twice is written twice with the same sum.
            positions >>= 1
            left = positions << 1
            nodes[positions] = nodes[left] + nodes[left + 1]

    def find(self, targets: np.ndarray) -> np.ndarray:
        """For each target u in [0, total), the leaf i with sum(leaves[:i]) <= u < sum(leaves[:i+1]).

        Never returns a zero-mass leaf while the total is positive: float rounding can put u at or past
        the end of a subtree, so the search only turns right into a subtree with positive mass (and
        always does when the left subtree is empty).
        """
        if self.nodes[1] <= 0:
            raise ValueError("cannot search a sum tree whose total mass is 0")
        remaining = np.maximum(np.asarray(targets, dtype=np.float64), 0.0)
        position = np.ones(remaining.shape, dtype=np.int64)
        nodes = self.nodes
        for _ in range(self._depth):
            # A node is only entered with positive mass and remaining >= 0, so an empty left child is
            # always passed over and an empty right child never entered.
            position <<= 1
            left_mass = nodes[position]
            go_right = (remaining >= left_mass) & (nodes[position + 1] > 0)
            remaining -= left_mass * go_right
            position += go_right
        return position - self._first_leaf

    def state_dict(self) -> dict:
        """The node array (shared, not copied)."""
        return {"size": self.size, "nodes": self.nodes}

    def load_state_dict(self, state: dict) -> None:
        """Restore nodes saved by :meth:`state_dict` from a tree of the same size."""
        if int(state["size"]) != self.size:
            raise ValueError(f"SumTree size mismatch: saved {state['size']}, this tree {self.size}")
        nodes = np.asarray(state["nodes"], dtype=np.float64)
        if nodes.shape != self.nodes.shape:
            raise ValueError(f"SumTree node array shape {nodes.shape} != {self.nodes.shape}")
        np.copyto(self.nodes, nodes)
