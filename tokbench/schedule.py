"""Drop schedules without tensors (docs/method.md 7.1, 7.2): parsing, the patch tokens of every block, and the
cost of a propagation solve. Torch-free, so the paper-convention counter (``tokbench.flops_ref``) shares it with
the engine."""

from __future__ import annotations

from tokbench.errors import ConfigError

PROPAGATIONS = ("none", "supplement", "reference")


def parse_schedule(text: str) -> tuple[tuple[int, int], ...]:
    """``"BLOCK:COUNT[,BLOCK:COUNT...]"`` -> ``((block, count), ...)`` in block order; ``""`` or ``none`` -> ``()``.

    Blocks must be distinct and >= 0, counts >= 1. Raises a one-line ``ConfigError`` otherwise.
    """
    text = text.strip()
    if not text or text.lower() == "none":
        return ()
    pairs = []
    for item in text.split(","):
        block, sep, count = item.strip().partition(":")
        try:
            pair = (int(block), int(count))
        except ValueError:
            pair = None
        if not sep or pair is None:
            raise ConfigError(f"drop_schedule expects BLOCK:COUNT[,BLOCK:COUNT...] (e.g. 0:300,3:50), got {text!r}")
        if pair[0] < 0 or pair[1] < 1:
            raise ConfigError(f"drop_schedule {item.strip()!r}: blocks must be >= 0 and counts >= 1")
        pairs.append(pair)
    blocks = [b for b, _ in pairs]
    if len(set(blocks)) != len(blocks):
        raise ConfigError(f"drop_schedule {text!r} names a block twice")
    return tuple(sorted(pairs))


def format_schedule(schedule: tuple[tuple[int, int], ...]) -> str:
    """The canonical spelling: ``((3, 50), (0, 300))`` -> ``"0:300,3:50"``."""
    return ",".join(f"{b}:{c}" for b, c in sorted(schedule))


def block_tokens(num_patches: int, depth: int, schedule: tuple[tuple[int, int], ...]) -> list[int]:
    """Patch tokens each block's MLP sees on a pruned frame: ``N`` up to the first drop, then ``N`` minus every
    count dropped at or before the block. Raises ``ConfigError`` if a block is past the model or no patch is left."""
    dropped = 0
    drops = dict(schedule)
    if schedule and max(drops) >= depth:
        raise ConfigError(f"drop_schedule block {max(drops)} must be below the model's depth {depth}")
    if sum(drops.values()) >= num_patches:
        raise ConfigError(f"drop_schedule drops {sum(drops.values())} of {num_patches} patch tokens; "
                          "at least one must stay")
    out = []
    for block in range(depth):
        dropped += drops.get(block, 0)
        out.append(num_patches - dropped)
    return out


def solve_macs(n: int) -> int:
    """MACs of one dense ``n x n`` solve: LU factorisation ``n^3 / 3`` plus the two triangular solves ``n^2``."""
    return n**3 // 3 + n**2
