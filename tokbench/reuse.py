"""Full frames run once per batch of clips and reused by every job that would compute the same bits.

A full frame (every token through every block: frame 0, and every reset of a dense task) depends on the input and
on the engine's ``full_signature``, not on the pruning policy, window or budget. In the default ablation the dense
row and every baseline share one signature and the four RGTP windows another, and the frames of 1/4 sampling are
frames of 1/1 sampling, so most full frames would run several times on the same batch. ``SharedFrames`` keeps
each one until its last expected user has taken it: users are registered up front (``expect``), so memory holds
only frames still to be reused, and the buffers (K/V, attention rows: the bulk) only while a pruning job still
needs them. A user that was not expected, or comes before the frame is stored, simply runs the frame itself.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Hashable

from tokbench.engine import FullFrame

BUDGET_BYTES = 1 << 30  # buffers held at once; past it a frame is kept without them (its pruning users rerun it)


@dataclasses.dataclass
class Reused:
    """A stored full frame for one user: the frame, the producer's step time in ms (the whole batch), and whether
    this user may keep the frame's buffers instead of copying them (no later user needs them)."""

    frame: FullFrame
    ms: float
    own: bool


@dataclasses.dataclass
class _Stored:
    frame: FullFrame
    ms: float
    buffers: bool  # held with its buffers
    nbytes: int  # of those buffers


class SharedFrames:
    """Full frames keyed by ``(full_signature, clips, frame index)``, with the number of users still to come.

    Buffers are kept for a new frame only while those held stay under ``budget`` bytes (``BUDGET_BYTES``), so a
    long clip of a large model (ViTDet-B at 672 px: about 130 MB of K/V per frame and clip) cannot pile them up;
    its predictions are still shared, and a pruning user that finds no buffers runs the frame itself.
    """

    def __init__(self, budget: int | None = None) -> None:
        self._budget = BUDGET_BYTES if budget is None else budget
        self._held = 0
        self._uses: Counter[Hashable] = Counter()
        self._buffer_uses: Counter[Hashable] = Counter()  # users that go on to prune (need the buffers)
        self._frames: dict[Hashable, _Stored] = {}

    def expect(self, key: Hashable, buffers: bool) -> None:
        """Register one future user of frame ``key`` (``buffers``: it prunes later frames from this one's state)."""
        self._uses[key] += 1
        self._buffer_uses[key] += buffers

    def take(self, key: Hashable, buffers: bool) -> Reused | None:
        """Count one use of ``key``; the stored frame, or ``None`` where it is not stored, or stored without the
        buffers this user needs (the caller runs it and offers it to later users with ``put``)."""
        self._uses[key] -= 1
        self._buffer_uses[key] -= buffers
        stored = self._frames.get(key)
        if stored is None or (buffers and not stored.buffers):
            if stored is not None and self._uses[key] <= 0:
                del self._frames[key]
            return None
        own = buffers and self._buffer_uses[key] <= 0
        if self._uses[key] <= 0:
            self._release(key)
            del self._frames[key]
            own = buffers
        elif self._buffer_uses[key] <= 0 and stored.buffers:
            self._release(key)
            self._frames[key] = _Stored(_without_buffers(stored.frame), stored.ms, False, 0)
        return Reused(stored.frame, stored.ms, own)

    def wanted(self, key: Hashable) -> tuple[bool, bool]:
        """Whether a later user wants frame ``key``, and whether its buffers should be kept for one (someone needs
        them and the budget has room): ``snapshot(buffers=...)``."""
        return self._uses[key] > 0, self._buffer_uses[key] > 0 and self._held < self._budget

    def put(self, key: Hashable, frame: FullFrame, ms: float, buffers: bool) -> None:
        """Store frame ``key`` as computed in ``ms`` (the whole batch's step) for the users still expected
        (``buffers``: snapshot with its buffers)."""
        if self._uses[key] <= 0:
            return
        if key in self._frames:
            self._release(key)
        nbytes = _buffer_bytes(frame)
        self._frames[key] = _Stored(frame, ms, buffers, nbytes)
        self._held += nbytes

    @property
    def held_bytes(self) -> int:
        """Bytes of buffers held now."""
        return self._held

    def __len__(self) -> int:
        return len(self._frames)

    def _release(self, key: Hashable) -> None:
        self._held -= self._frames[key].nbytes


def _buffer_bytes(frame: FullFrame) -> int:
    tensors = [t for pair in frame.kv.values() for t in pair] + [*frame.queries.values(), *frame.rows.values()]
    tensors += [frame.output] if frame.output is not None else []
    return sum(t.untyped_storage().nbytes() for t in tensors)


def _without_buffers(frame: FullFrame) -> FullFrame:
    return dataclasses.replace(frame, kv={}, queries={}, rows={}, output=None)
