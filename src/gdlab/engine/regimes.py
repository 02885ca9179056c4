"""Sample schedules: which training rows feed each gradient.

* ``full``: every step uses all N rows (the exact full-batch gradient).
* ``minibatch``: each epoch draws a fresh random permutation (seeded ``torch.Generator``) and
  walks it in batches of B. The last partial batch of an epoch (when B does not divide N) is
  kept as a smaller batch (``last_batch="keep"``, so every row is used exactly once per epoch)
  or dropped (``last_batch="drop"``, every step has exactly B rows and N mod B rows sit out
  each epoch).
* ``stochastic``: minibatch with B = 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gdlab.errors import GdlabError, unknown_name

REGIMES = {
    "full": "exact full-batch gradient over all N training rows each step",
    "minibatch": "B rows per step, reshuffled each epoch (--batch-size, default 32)",
    "stochastic": "one row per step, reshuffled each epoch (B = 1)",
}
LAST_BATCH_POLICIES = ("keep", "drop")
DEFAULT_BATCH_SIZE = 32


@dataclass
class SampleSchedule:
    """Yields the row indices of each step's gradient; None means all rows (full batch).

    Holds its own state (epoch, position, permutation, generator) so a run can be resumed.
    """

    name: str
    n: int
    batch_size: int
    last_batch: str = "keep"
    seed: int = 0
    epoch: int = 0
    position: int = 0
    _perm: torch.Tensor | None = field(default=None, repr=False)
    _gen: torch.Generator | None = field(default=None, repr=False)
    _order: list[int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._gen = torch.Generator().manual_seed(int(self.seed))

    @property
    def is_full(self) -> bool:
        return self.name == "full"

    @property
    def steps_per_epoch(self) -> int:
        """Steps that make one pass over the data (1 for full batch)."""
        if self.is_full:
            return 1
        if self.last_batch == "drop":
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def next_indices(self) -> torch.Tensor | None:
        """Row indices (int64, on CPU) for the next step, or None for all rows."""
        if self.is_full:
            self.epoch += 1
            return None
        start, stop = self._advance()
        return self._perm[start:stop]

    def next_row(self) -> int:
        """The row index of the next step when it uses one row (batch size 1), as a Python int:
        the same order and state as :meth:`next_indices`, without a tensor per step."""
        start, _ = self._advance()
        if self._order is None:
            self._order = self._perm.tolist()
        return self._order[start]

    def _advance(self) -> tuple[int, int]:
        """Move to the next batch, drawing a new permutation at the end of an epoch; returns the
        batch's (start, stop) positions in the permutation."""
        usable = self.n - self.n % self.batch_size if self.last_batch == "drop" else self.n
        if self._perm is None or self.position >= usable:
            if self._perm is not None:
                self.epoch += 1
            self._perm = torch.randperm(self.n, generator=self._gen)
            self._order = None
            self.position = 0
        start, stop = self.position, min(self.position + self.batch_size, usable)
        self.position = stop
        return start, stop

    def state_dict(self) -> dict:
        perm = None if self._perm is None else self._perm.clone()
        return {"epoch": self.epoch, "position": self.position, "perm": perm,
                "generator": self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._perm = None if state["perm"] is None else state["perm"].clone()
        self._order = None
        self._gen.set_state(state["generator"])


def make_schedule(
    regime: str, n: int, *, batch_size: int | None = None, last_batch: str = "keep", seed: int = 0
) -> SampleSchedule:
    """Validated schedule for ``regime`` over ``n`` training rows (GdlabError on bad values)."""
    if regime not in REGIMES:
        raise unknown_name("regime", regime, REGIMES)
    if last_batch not in LAST_BATCH_POLICIES:
        raise unknown_name("last_batch policy", last_batch, LAST_BATCH_POLICIES)
    if regime == "full":
        if batch_size is not None and batch_size != n:
            raise GdlabError(f"batch_size {batch_size} conflicts with regime 'full', which always uses all "
                             f"{n} rows; drop --batch-size or use --regime minibatch")
        return SampleSchedule("full", n, n, "keep", seed)
    if regime == "stochastic":
        if batch_size not in (None, 1):
            raise GdlabError(f"regime 'stochastic' uses one row per step but batch_size is {batch_size}; "
                             "drop --batch-size or use --regime minibatch")
        batch_size = 1
    if batch_size is None:
        batch_size = min(DEFAULT_BATCH_SIZE, n)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise GdlabError(f"batch_size must be an integer >= 1, got {batch_size!r}; use --batch-size 32")
    if batch_size > n:
        raise GdlabError(f"batch_size {batch_size} is larger than the training set ({n} rows); "
                         f"use --batch-size <= {n} or --regime full")
    return SampleSchedule(regime, n, batch_size, last_batch, seed)
