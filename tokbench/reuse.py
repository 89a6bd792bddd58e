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


@dataclasses.dataclass
class Reused:
    """A stored full frame for one user: the frame, the producer's step time in ms (the whole batch), and whether
    this user may keep the frame's buffers instead of copying them (no later user needs them)."""

    frame: FullFrame
    ms: float
    own: bool


class SharedFrames:
    """Full frames keyed by ``(full_signature, clips, frame index)``, with the number of users still to come."""

    def __init__(self) -> None:
        self._uses: Counter[Hashable] = Counter()
        self._buffer_uses: Counter[Hashable] = Counter()  # users that go on to prune (need the buffers)
        self._frames: dict[Hashable, tuple[FullFrame, float]] = {}

    def expect(self, key: Hashable, buffers: bool) -> None:
        """Register one future user of frame ``key`` (``buffers``: it prunes later frames from this one's state)."""
        self._uses[key] += 1
        self._buffer_uses[key] += buffers

    def take(self, key: Hashable, buffers: bool) -> Reused | None:
        """Count one use of ``key``; the stored frame, or ``None`` where it is not stored (the caller runs it and
        offers it to later users with ``put``)."""
        self._uses[key] -= 1
        self._buffer_uses[key] -= buffers
        stored = self._frames.get(key)
        if stored is None:
            return None
        frame, ms = stored
        own = buffers and self._buffer_uses[key] <= 0
        if self._uses[key] <= 0:
            del self._frames[key]
            own = buffers
        elif own or self._buffer_uses[key] <= 0:
            self._frames[key] = (_without_buffers(frame), ms)
        return Reused(frame, ms, own)

    def wanted(self, key: Hashable) -> tuple[bool, bool]:
        """Whether a later user wants frame ``key``, and whether one wants its buffers (``snapshot(buffers=...)``)."""
        return self._uses[key] > 0, self._buffer_uses[key] > 0

    def put(self, key: Hashable, frame: FullFrame, ms: float) -> None:
        """Store frame ``key`` as computed in ``ms`` (the whole batch's step) for the users still expected."""
        if self._uses[key] > 0:
            self._frames[key] = (frame, ms)

    def __len__(self) -> int:
        return len(self._frames)


def _without_buffers(frame: FullFrame) -> FullFrame:
    return dataclasses.replace(frame, kv={}, queries={}, rows={}, output=None)
