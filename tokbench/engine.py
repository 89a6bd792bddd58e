"""The per-clip streaming loop (docs/method.md sections 1, 5, 6).

One ``StreamingEngine`` runs a timm ViT frame by frame; everything that crosses frames lives in one
``ClipState`` (previous heatmap, previous patch embeddings, K/V, attention-row and output buffers). Shapes:
B clips in lockstep, N patches, P prefix tokens, N' = P + N, S = tokens in the sequence after the cut (P + n).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from tokbench.adapters import adapter_for
from tokbench.config import MethodConfig
from tokbench.errors import ConfigError
from tokbench.gradual import first_drop, later_drop, propagate_step, transition
from tokbench.policies import Cut, Need, policy
from tokbench.rollout import (
    block_matrices,
    gather_tokens,
    patch_heatmap,
    pooled_rows,
    pooled_start,
    propagate,
    scatter_tokens,
    shrinking_rollout,
    unpool_scores,
)
from tokbench.schedule import block_tokens
from tokbench.selection import kept_count, reset_pattern_indices, rollout_keep_indices
from tokbench.tracking import track_scores
from tokbench.vit import ViTAdapter

FULL, RESET, PRUNED = "full", "reset", "pruned"


def frame_kind(t: int, reset_every: int) -> str:
    """``full`` at t = 0, ``reset`` at ``t % k == 0`` (k > 0), otherwise ``pruned``."""
    if t == 0:
        return FULL
    if reset_every > 0 and t % reset_every == 0:
        return RESET
    return PRUNED


class Task(Protocol):
    """What the engine needs from a task head."""

    dense: bool  # dense output map: K/V reuse, output buffer, full resets

    def head(self, vit: ViTAdapter, tokens: torch.Tensor) -> Any:
        """Predictions from the backbone output ``[B, S, C]`` (``S = N'`` for dense tasks)."""

    def rollout_start(
        self, vit: ViTAdapter, predictions: Any, tokens: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Start weights ``[B, S]`` over the output tokens the head saw (class-token row, anchor mask, ...)."""


@dataclass
class ClipState:
    """All cross-frame state of one clip (B samples in lockstep). Reset by making a new one."""

    t: int = 0
    heatmap: torch.Tensor | None = None  # s^{t-1} [B, N], untracked
    embed: torch.Tensor | None = None  # z^{t-1} [B, N, C]
    keys: torch.Tensor | None = None  # the cut block's head-averaged patch keys of frame t-1 [B, N, Ch]
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # block -> K, V [B, H, N', Ch]
    queries: dict[int, torch.Tensor] = field(default_factory=dict)  # windowed block -> Q [B, H, N', Ch] (all)
    rows: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> fused attention rows [B, N', N']
    output: torch.Tensor | None = None  # last computed output of every position [B, N', C]
    memory: torch.Tensor | None = None  # the policy's own state (eventful: reference embeddings; boxmask: boxes)
    grid: tuple[int, int] | None = None  # the last frame's token grid
    rngs: tuple[torch.Generator, ...] = ()  # random: one generator per sample (one shared if made for one clip)


@dataclass
class FrameRecord:
    """What one frame did."""

    t: int
    kind: str  # full | reset | pruned
    kept: torch.Tensor | None  # [B, n] patch indices through the blocks after the (first) cut; None = all N
    num_kept: int  # n (patch tokens after the (first) cut; prefix tokens not counted)
    num_patches: int  # N
    predictions: Any
    heatmap: torch.Tensor | None = None  # s^t [B, N], the rollout of this frame
    degenerate_heatmaps: int = 0  # samples whose rollout was all-zero / non-finite (replaced by uniform)
    degenerate: list[bool] | None = None  # per sample: whether its rollout was replaced (None: no rollout)
    pattern: bool = False  # a reset frame pruned with the fixed pattern (reset_mode=pattern), not fully processed
    block_tokens: list[int] | None = None  # patch tokens each block's MLP saw (a drop schedule's later drops)
    kept_last: torch.Tensor | None = None  # [B, n_L] patches through the last block, when later drops ran
    singular_solves: int = 0  # propagation solves that were singular (those samples carried their scores on)


@dataclass
class FullFrame:
    """A full frame's outputs and the buffers it left (``StreamingEngine.snapshot``), for engines that reuse it."""

    predictions: Any
    heatmap: torch.Tensor | None
    degenerate: list[bool] | None
    num_patches: int
    block_tokens: list[int] | None
    grid: tuple[int, int]
    embed: torch.Tensor
    keys: torch.Tensor | None
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]]
    queries: dict[int, torch.Tensor]
    rows: dict[int, torch.Tensor]
    output: torch.Tensor | None


@dataclass
class MethodOps:
    """The method's own tensor functions (tracking, selection, rollout, heatmap): eager, or compiled by
    ``StreamingEngine.compile``."""

    track_scores: Callable = track_scores
    rollout_keep_indices: Callable = rollout_keep_indices
    block_matrices: Callable = block_matrices
    shrinking_rollout: Callable = shrinking_rollout
    propagate: Callable = propagate
    patch_heatmap: Callable = patch_heatmap


_COMPILED = ("track_scores", "block_matrices", "propagate", "patch_heatmap")  # faster compiled (``compile``)
COMPILED_GRAPHS = 64  # dynamo graphs kept per function: frame kinds x engines (each window, budget) in one process


# options that steer only pruned (and pattern-reset) frames: a full frame does not depend on them
_PRUNED_FRAME_OPTIONS = frozenset({
    "policy", "keep_ratio", "fg_ratio", "bg_ratio", "order", "tie_break", "window", "similarity", "track_bounds",
    "track_features", "min_gain_pct", "reset_every", "reset_pattern", "preset", "seed",
})


def _seq_index(keep: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Sequence positions of prefix tokens + kept patches: ``[B, n]`` -> ``[B, P + n]``."""
    prefix = torch.arange(num_prefix, device=keep.device).expand(keep.shape[0], num_prefix)
    return torch.cat([prefix, keep + num_prefix], dim=1)


def clip_seed(seed: int, clip: int) -> int:
    """The random policy's seed for clip ``clip`` (its dataset index) of a run seeded ``seed``."""
    return seed * 1_000_003 + clip + 1


class StreamingEngine:
    """Pruned (or dense) streaming inference of a timm ViT over clips.

    ``config`` is the configuration as given; ``resolved`` is what runs (every ``auto`` replaced, see
    ``MethodConfig.resolve``).
    """

    def __init__(self, model: nn.Module | ViTAdapter, config: MethodConfig, task: Task) -> None:
        self.vit = adapter_for(model)
        self.config = config
        self.task = task
        self.resolved = cfg = config.resolve(task.dense)
        self.policy = policy(cfg.policy)
        self.rollout = self.policy.rollout
        self.prunes = self.policy.prunes
        self.kv_reuse = cfg.kv_reuse == "on"
        self.reset_mode = cfg.reset_mode
        self.cut_block = cfg.prune_block if cfg.cut == "block0" else None  # None: the cut is before block 0
        self.explicit = cfg.sdpa_flops == "explicit"
        schedule = cfg.schedule
        self.first_count = schedule[0][1] if schedule else None  # the first drop's count (None: one-shot keep set)
        self.drops = dict(schedule[1:])  # later blocks -> tokens dropped at their cut
        self.propagation = cfg.propagation
        self._check()
        self.timings: dict[str, float] | None = None  # set to {} to accumulate seconds spent in select / rollout
        self.ops = MethodOps()

    def compile(self) -> None:
        """Run the method's own tensor functions that gain from it through ``torch.compile`` (static shapes: one
        graph per frame kind and shape, built at its first call, so the first frames of each kind take the
        compile time). Measured on ViT-S at batch 1 (2 CPU threads): tracking 0.54 -> 0.34 ms, block matrices
        0.59 -> 0.28 ms, heatmap 0.37 -> 0.29 ms; keep-index selection got slower (0.08 -> 0.20 ms) and the
        shrinking rollout did not change, so those stay eager, as do the model's blocks (a compiled timm block
        measured 1-3 % faster: its time is GEMMs)."""
        import logging
        import warnings

        import torch._dynamo.config as dynamo

        dynamo.recompile_limit = max(dynamo.recompile_limit, COMPILED_GRAPHS)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\._inductor")
        warnings.filterwarnings("ignore", message=r".*functools\.lru_cache.*", category=UserWarning)
        logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # the heatmap's degenerate count breaks the graph
        eager = MethodOps()
        self.ops = MethodOps(**{name: torch.compile(getattr(eager, name), dynamic=False) if name in _COMPILED
                                else getattr(eager, name) for name in vars(eager)})

    @contextmanager
    def eager(self) -> Iterator[None]:
        """The method's functions eager for a while (tracing for FLOP counts reads the eager ops)."""
        ops, self.ops = self.ops, MethodOps()
        try:
            yield
        finally:
            self.ops = ops

    def _check(self) -> None:
        """Refuse what this model and task cannot run (one-line ``ConfigError``s)."""
        cfg, vit, block, name = self.resolved, self.vit, self.resolved.prune_block, self.policy.name
        if block >= vit.depth:
            raise ConfigError(f"prune_block {block} must be below the model's depth {vit.depth}")
        if Need.PROBS in self.policy.needs and cfg.cut == "input":
            raise ConfigError(f"{name} scores tokens by the cut block's attention; it needs cut=block0")
        if Need.PROBS in self.policy.needs and not vit.is_global(block):
            raise ConfigError(f"{name} needs block {block}'s full attention; block {block} of this model is windowed")
        if self.prunes and vit.needs_all_keys and not self.kv_reuse:
            raise ConfigError("windowed / relative-position attention needs every key: use a dense task or kv_reuse=on")
        if self.rollout and cfg.rollout_pool > 1 and not self.kv_reuse:
            raise ConfigError("rollout_pool > 1 needs K/V reuse (a dense task, or kv_reuse=on): a pooled row "
                              "averages every query of its cell")
        if Need.BOXES in self.policy.needs and not hasattr(self.task, "box_mask"):
            raise ConfigError(f"{name} needs a detection task (the previous frame's boxes)")
        if cfg.schedule:
            if not self.rollout or self.policy.select is not None:
                raise ConfigError(f"drop_schedule ranks tokens by RGTP's tracked rollout; {name} has no such scores")
            block_tokens(getattr(vit.model.patch_embed, "num_patches", 10**9), vit.depth, cfg.schedule)
        if self.propagation == "reference" and not all(vit.is_global(b) for b in range(vit.depth)):
            raise ConfigError("propagation=reference inverts every block's full attention; this model has windowed "
                              "blocks (use propagation=supplement, which treats them as identity)")

    @contextmanager
    def _timed(self, part: str):
        if self.timings is None:
            yield
            return
        start = time.perf_counter()
        yield
        self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - start

    def new_state(self, clips: int | Sequence[int] = 0) -> ClipState:
        """Fresh state for the clips with dataset indices ``clips`` (one per sample of the batch, in order): each
        sample's random draws come from its own generator seeded by (seed, clip index) alone, so a clip's keep sets
        depend neither on which clips ran before it nor on which clips share its batch. A single index gives one
        generator that every sample of the batch draws from in turn."""
        clips = [clips] if isinstance(clips, int) else list(clips)
        return ClipState(rngs=tuple(torch.Generator().manual_seed(clip_seed(self.config.seed, c)) for c in clips))

    def run_clip(self, frames: Iterable[torch.Tensor], clip: int | Sequence[int] = 0) -> list[FrameRecord]:
        """Run frames ``[B, 3, H, W]`` (an iterable, or a ``[T, B, 3, H, W]`` tensor) with fresh state."""
        state = self.new_state(clip)
        return [self.step(frame, state) for frame in frames]

    def kind(self, t: int) -> str:
        """The kind of frame ``t`` (every frame is full for a policy that does not prune)."""
        return frame_kind(t, self.resolved.reset_every) if self.prunes else FULL

    def runs_full(self, t: int) -> bool:
        """Whether frame ``t`` runs every token through every block (a full frame, or a full reset)."""
        kind = self.kind(t)
        return kind == FULL or (kind == RESET and self.reset_mode == "full")

    def full_signature(self) -> tuple:
        """What a full frame's predictions and the state it leaves depend on besides the input: engines with equal
        signatures compute the same bits on the same batch, so one may reuse another's full frame
        (``snapshot`` / ``restore``). Options that only steer pruned frames are left out; the policy enters only
        through whether it needs the rollout (its own memory is rebuilt by ``restore``)."""
        options = {k: v for k, v in self.resolved.as_dict().items() if k not in _PRUNED_FRAME_OPTIONS}
        return (id(self.vit.model), type(self.task).__name__, self.rollout, tuple(sorted(options.items())))

    def snapshot(self, state: ClipState, record: FrameRecord, buffers: bool = True) -> FullFrame:
        """What ``restore`` needs to stand in for the full frame ``step`` just ran into ``state``: the record's
        outputs and (``buffers``: for an engine that prunes later frames) the buffers, copied where later frames
        write into them in place."""
        kv, queries, rows = {}, {}, {}
        if buffers:
            kv = {b: (k.clone(), v.clone()) for b, (k, v) in state.kv.items()}
            queries = {b: q.clone() for b, q in state.queries.items()}
            rows = {b: r.clone() for b, r in state.rows.items()}
        return FullFrame(record.predictions, record.heatmap, record.degenerate, record.num_patches,
                         record.block_tokens, state.grid, state.embed, state.keys, kv, queries, rows,
                         state.output if buffers else None)

    @torch.inference_mode()
    def restore(self, frame: FullFrame, state: ClipState, own: bool = False) -> FrameRecord:
        """Take a full frame another engine with the same ``full_signature`` ran on the same batch, as if this
        engine had run it at ``t = state.t``: the record, and the state it leaves (``own``: the last user, which
        may keep the snapshot's buffers instead of copying them)."""
        copy = (lambda t: t) if own else torch.clone
        if self.prunes:
            state.kv = {b: (copy(k), copy(v)) for b, (k, v) in frame.kv.items()}
            state.queries = {b: copy(q) for b, q in frame.queries.items()}
            state.rows = {b: copy(r) for b, r in frame.rows.items()}
        else:  # every frame of this engine runs every token: nothing will read the buffers
            state.kv, state.queries, state.rows = {}, {}, {}
        state.output = frame.output
        record = FrameRecord(
            t=state.t, kind=self.kind(state.t), kept=None, num_kept=frame.num_patches, num_patches=frame.num_patches,
            predictions=frame.predictions, heatmap=frame.heatmap, degenerate=frame.degenerate,
            degenerate_heatmaps=sum(frame.degenerate or []), block_tokens=frame.block_tokens,
        )
        self._advance(state, record, frame.embed, None, frame.keys, frame.grid)
        return record

    def _advance(self, state: ClipState, record: FrameRecord, z: torch.Tensor, keep: torch.Tensor | None,
                 keys: torch.Tensor | None, grid: tuple[int, int]) -> None:
        """Carry a frame's results to the next: the policy's memory, the heatmap, embeddings and keys, ``t``."""
        if self.policy.remember is not None:
            boxes = self.task.box_mask(record.predictions, grid) if Need.BOXES in self.policy.needs else None
            state.memory = self.policy.remember(state.memory, z, keep, boxes)
        state.heatmap, state.embed, state.keys, state.grid, state.t = record.heatmap, z, keys, grid, state.t + 1

    @torch.inference_mode()
    def step(self, frames: torch.Tensor, state: ClipState) -> FrameRecord:
        """Process frame ``t = state.t`` of every clip in the batch: ``frames [B, 3, H, W]``."""
        vit, cfg = self.vit, self.resolved
        kind = self.kind(state.t)
        z, grid = vit.embed(frames)
        x = vit.tokens(z, grid)
        keep = seq = keys = scores = rank = None  # keys: the cut block's head-averaged patch keys [B, N, Ch]
        attn: dict[int, torch.Tensor] = {}  # block -> attention probabilities, for the rollout
        seqs: dict[int, torch.Tensor | None] = {}  # block -> its queries' positions among the N' tokens (None: all)
        cuts: dict[int, torch.Tensor] = {}  # block -> positions kept after its attention, within its sequence
        first = None  # the first cut's kept patches [B, n]
        singular = 0
        if self.cut_block is None:
            with self._timed("select"):
                keep, _ = self._select(kind, state, z, None, grid, None)
            first = keep
            seq = None if keep is None else _seq_index(keep, vit.num_prefix)
            x = x if seq is None else gather_tokens(x, seq)
        for i, blk in enumerate(vit.blocks):
            q, k, v = vit.qkv(blk, x)
            if i == self.cut_block:
                keys = vit.block0_keys(k)
            out, probs = self._attend(state, i, q, k, v, seq, keep, kind == PRUNED)
            seqs[i] = seq
            if probs is not None and self.rollout:
                attn[i] = probs
            x = vit.attn_residual(blk, x, out)
            local = None  # positions kept within this block's sequence
            if i == self.cut_block:
                with self._timed("select"):
                    keep, scores = self._select(kind, state, z, keys, grid, probs)
                    if keep is not None and self.first_count is not None and scores is not None:
                        keep, rank = first_drop(scores, keep, self.first_count, cfg.tie_break)
                        scores = scores.gather(1, keep).to(torch.float64)  # s_0 on the survivors
                first = keep
                local = None if keep is None else _seq_index(keep, vit.num_prefix)
            elif rank is not None and i <= max(self.drops, default=-1):
                if self.propagation != "none" and probs is not None:
                    with self._timed("propagation"):
                        mat = transition(probs, seq, vit.num_prefix, self.propagation, cfg.head_fusion)
                        scores, bad = propagate_step(mat, scores, self.propagation)
                        singular += bad
                if i in self.drops:
                    kept_at = later_drop(rank, self.drops[i], scores if self.propagation != "none" else None)
                    keep, rank, scores = keep.gather(1, kept_at), rank.gather(1, kept_at), scores.gather(1, kept_at)
                    local = _seq_index(kept_at, vit.num_prefix)
            if local is not None:
                cuts[i] = local
                seq = local if seq is None else seq.gather(1, local)
                x = gather_tokens(x, local)
            x = vit.mlp_residual(blk, x)
        x = vit.finish(x)
        tokens = self._dense_output(state, x, seq) if self.task.dense else x
        predictions = self.task.head(vit, tokens)
        record = FrameRecord(
            t=state.t,
            kind=kind,
            kept=first,
            num_kept=z.shape[1] if first is None else first.shape[1],
            num_patches=z.shape[1],
            predictions=predictions,
            pattern=kind == RESET and first is not None,
            block_tokens=_block_tokens(seqs, vit.num_prefix + z.shape[1], x.shape[1], vit.num_prefix)
            if self.drops else None,
            kept_last=keep if self.drops and rank is not None else None,
            singular_solves=singular,
        )
        if self.rollout:
            with self._timed("rollout"):
                start = self.task.rollout_start(vit, predictions, tokens, grid)
                record.heatmap, record.degenerate = self._heatmap(
                    state, kind, attn, start, seq, first, keys, z, grid, seqs, cuts)
                record.degenerate_heatmaps = sum(record.degenerate)
        self._advance(state, record, z, keep, keys, grid)
        return record

    def _attend(
        self,
        state: ClipState,
        block: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        seq: torch.Tensor | None,
        keep: torch.Tensor | None,
        selects: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block ``block``'s attention for the sequence's queries ``q [B, H, S, Ch]`` (``seq [B, S]``, None = all).

        With K/V reuse the keys/values come from the block's buffer (all ``N'`` positions); a windowed block with
        ``window_queries=all`` also runs every query of every window on its Q buffer, then keeps the kept rows.
        Returns the output ``[B, H, S, Ch]`` and, where needed, the probabilities ``[B, H, S, Sk]`` (a policy that
        scores by the cut block's attention needs them only on the frames it ``selects`` on).
        """
        vit, blk = self.vit, self.vit.blocks[block]
        need_probs = (self.rollout and vit.is_global(block)) or (
            selects and block == self.cut_block and Need.PROBS in self.policy.needs
        )
        if self.kv_reuse and (self.cut_block is None or block > self.cut_block):
            k, v = self._reuse_kv(state, block, seq, k, v)
            if self.resolved.window_queries == "all" and not vit.is_global(block):
                q_all = _refresh(state.queries, block, seq, q)
                if seq is not None:
                    out, _ = vit.attend(blk, q_all, k, v, need_probs=False, explicit=self.explicit)
                    return gather_tokens(out, seq, dim=2), None
        positions = None if seq is None else keep
        return vit.attend(blk, q, k, v, need_probs=need_probs, positions=positions, explicit=self.explicit)

    # -- selection -------------------------------------------------------------------------------------------

    def _select(
        self,
        kind: str,
        state: ClipState,
        z: torch.Tensor,
        keys: torch.Tensor | None,
        grid: tuple[int, int],
        probs: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Kept patch indices ``[B, n]`` for this frame (``None`` to keep every patch) and, on an RGTP pruned
        frame, the tracked scores ``[B, N]`` they were chosen by (else ``None``).

        ``z [B, N, C]`` are this frame's patch embeddings, ``keys [B, N, Ch]`` the cut block's head-averaged patch
        keys (``None`` at an input cut), ``probs [B, H, N', N']`` the cut block's attention (``Need.PROBS``).
        """
        cfg = self.resolved
        if kind == FULL or (kind == RESET and self.reset_mode == "full"):
            return None, None
        if kind == RESET:
            pattern = reset_pattern_indices(grid, cfg.reset_pattern).to(z.device)
            return pattern.expand(z.shape[0], -1), None
        if self.policy.select is not None:  # a baseline, at RGTP's budget
            n = kept_count(int(z.shape[1]), cfg.keep_ratio, cfg.fg_ratio, cfg.bg_ratio)
            cut = Cut(z, grid, n, state.memory, state.rngs, probs, self.vit.num_prefix, self.vit.has_class_token)
            return self.policy.select(cut), None
        prev, cur = (state.keys, keys) if cfg.track_features == "block0_keys" else (state.embed, z)
        scores = self.ops.track_scores(
            state.heatmap,
            prev,
            cur,
            grid,
            cfg.window,
            cfg.similarity,
            bounds=cfg.track_bounds,
            min_gain_pct=cfg.min_gain_pct,
        )
        keep = self.ops.rollout_keep_indices(
            scores, grid, cfg.keep_ratio, cfg.fg_ratio, cfg.bg_ratio, cfg.order, tie_break=cfg.tie_break
        )
        return keep, scores

    # -- dense-task context: K/V reuse and the output buffer --------------------------------------------------

    def _reuse_kv(
        self, state: ClipState, block: int, seq: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refresh the block's K/V buffer at the computed positions; return the full ``[B, H, N', Ch]`` K, V."""
        if seq is None:  # contiguous: later frames' attention reads the buffer without copying it
            state.kv[block] = k, v = k.contiguous(), v.contiguous()
            return k, v
        kbuf, vbuf = state.kv[block]
        return scatter_tokens(kbuf, seq, k, dim=2), scatter_tokens(vbuf, seq, v, dim=2)

    def _dense_output(self, state: ClipState, x: torch.Tensor, seq: torch.Tensor | None) -> torch.Tensor:
        """Fill pruned positions from the output buffer: ``x [B, S, C]`` -> ``[B, N', C]``.

        Out of place: the returned map may be held by the caller (a frame's predictions) after later frames ran.
        """
        state.output = x if seq is None else state.output.scatter(1, seq[..., None].expand_as(x), x)
        return state.output

    # -- rollout ------------------------------------------------------------------------------------------------

    def _heatmap(
        self,
        state: ClipState,
        kind: str,
        attn: dict[int, torch.Tensor],
        start: torch.Tensor,
        seq: torch.Tensor | None,
        keep: torch.Tensor | None,
        keys: torch.Tensor | None,
        z: torch.Tensor,
        grid: tuple[int, int],
        seqs: dict[int, torch.Tensor | None],
        cuts: dict[int, torch.Tensor],
    ) -> tuple[torch.Tensor, list[bool]]:
        """Rollout of this frame over all N patches, sum-normalised: ``[B, N]`` and, per sample, whether it was
        degenerate (replaced by uniform scores).

        ``start [B, S]`` weights the output tokens the head saw (``seq [B, S]``: their positions); ``keep [B, n]``
        are the first cut's patches; ``keys [B, N, Ch]`` (the cut block's, or ``None``) match pruned patches to
        kept ones (``nearest_kept``). ``seqs``: each block's query positions; ``cuts``: where the sequence shrank.
        """
        cfg, num_prefix, num_patches = self.resolved, self.vit.num_prefix, z.shape[1]
        if self.kv_reuse and start.shape[1] != num_prefix + num_patches:  # classification: the head saw S tokens
            start = scatter_tokens(start.new_zeros(start.shape[0], num_prefix + num_patches), seq, start)
        if cfg.rollout_pool > 1:
            scores = self._rollout_pooled(state, attn, seqs, start, grid)
        else:
            own = [seqs[b] for b in attn]
            mats = dict(zip(attn, self.ops.block_matrices(list(attn.values()), cfg.head_fusion, own), strict=True))
            if self.kv_reuse:
                scores = self._rollout_buffered(state, mats, seqs, start)
            else:
                scores = self.ops.shrinking_rollout(mats, seq, start, cuts, cfg.block0_columns, cfg.rollout_form)
        previous = state.heatmap if kind == PRUNED else None
        feats = z if keys is None else keys
        args = (num_prefix, cfg.pruned_score_fill, cfg.rollout_norm)
        heatmap, bad = self.ops.patch_heatmap(scores, keep, feats, previous, *args)
        if bad == 0 or scores.shape[0] == 1:
            return heatmap, [bool(bad)] * scores.shape[0]
        # rare: find which samples were replaced (patch_heatmap acts per sample, so slices give the same answer)
        one = [slice(b, b + 1) for b in range(scores.shape[0])]
        return heatmap, [bool(self.ops.patch_heatmap(scores[s], None if keep is None else keep[s], feats[s],
                                            None if previous is None else previous[s], *args)[1]) for s in one]

    def _rollout_buffered(
        self, state: ClipState, mats: dict[int, torch.Tensor], seqs: dict[int, torch.Tensor | None],
        start: torch.Tensor
    ) -> torch.Tensor:
        """K/V-reuse rollout: kept rows refresh per-block ``[B, N', N']`` buffers of normalised rows. -> ``[B, N']``.

        Blocks up to the cut ran every query (square maps) and replace their buffer. Row normalisation acts row by
        row, so buffering normalised rows equals normalising the buffered rows.
        """
        for block, rows in mats.items():
            if rows.shape[1] == rows.shape[2]:
                state.rows[block] = rows
            else:
                scatter_tokens(state.rows[block], seqs[block], rows)
        return self.ops.propagate([state.rows[b] for b in mats], start, self.resolved.rollout_form)

    def _rollout_pooled(
        self,
        state: ClipState,
        attn: dict[int, torch.Tensor],
        seqs: dict[int, torch.Tensor | None],
        start: torch.Tensor,
        grid: tuple[int, int],
    ) -> torch.Tensor:
        """K/V-reuse rollout on p x p cells (docs/method.md 2.6) -> ``[B, N']``, cell scores upsampled bilinearly.

        Fused rows are pooled (keys summed, queries averaged), then get the identity and row normalisation on the
        ``M``-cell matrices. Blocks whose attention ran on all ``N'`` queries (every block of a full frame, and
        the blocks up to the cut of a pruned one) pool every query; the blocks after the cut average each cell's
        kept queries, and a cell without one keeps its buffered row. Anchors: cells at least half covered.
        """
        cfg, prefix, pool = self.resolved, self.vit.num_prefix, self.resolved.rollout_pool
        if grid[0] % pool or grid[1] % pool:
            raise ConfigError(f"rollout_pool {pool} must divide the {grid[0]}x{grid[1]} token grid")
        num_tokens = prefix + grid[0] * grid[1]
        for block, probs in attn.items():
            queries = None if probs.shape[2] == num_tokens else seqs[block]
            state.rows[block] = pooled_rows(probs, state.rows.get(block), grid, pool, prefix, cfg.head_fusion, queries)
        u = pooled_start(start, grid, pool, prefix, cfg.anchor_fallback)
        return unpool_scores(propagate([state.rows[b] for b in attn], u, cfg.rollout_form), grid, pool, prefix)


def _block_tokens(seqs: dict[int, torch.Tensor | None], num_tokens: int, final: int, num_prefix: int) -> list[int]:
    """Patch tokens each block's MLP saw: the next block's query count (``num_tokens`` = N' where that block ran
    every token; the final sequence length ``final`` for the last block)."""
    lengths = [num_tokens if seq is None else seq.shape[1] for seq in list(seqs.values())[1:]] + [final]
    return [n - num_prefix for n in lengths]


def _refresh(buffers: dict[int, torch.Tensor], block: int, seq: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
    """Store ``t [B, H, N', Ch]`` as the block's buffer (``seq None``), or write ``t [B, H, S, Ch]`` at ``seq``."""
    if seq is None:
        buffers[block] = t
        return t
    return scatter_tokens(buffers[block], seq, t, dim=2)
