"""``tokbench show``: one clip, what each policy keeps, frame by frame (an animated GIF / MP4 and a PNG strip).

Two halves: ``render_clip`` runs every configuration over the clip with fresh state and collects pure data (kept
masks, the heatmap that chose each kept set, detections); ``write`` draws it. Shapes: S steps shown, (h, w) patch
grid, N = h * w patches, (H, W) frame pixels, M boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokbench.config import MethodConfig
from tokbench.engine import PRUNED, ClipState, StreamingEngine, frame_kind
from tokbench.errors import ConfigError
from tokbench.models.zoo import LoadedModel
from tokbench.pipeline import step_indices
from tokbench.policies import policy
from tokbench.tracking import track_scores

SCORE_THR = 0.3  # detections drawn above this score
DIM = 0.3  # a dropped patch is drawn as its grey level times DIM
ANIMATIONS = (".gif", ".mp4")
STRIPS = (".png",)

# layout, in inches at DPI: every figure is panels of PANEL_IN plus fixed margins, so its size is known in advance
DPI = 100
PANEL_IN = 2.4
LEFT_IN, HEADER_IN, FOOTER_IN, GAP_IN = 0.45, 0.75, 0.35, 0.12
DETECTION_COLOR, TARGET_COLOR, KEPT_EDGE = "#ff33dd", "white", "white"  # magenta: no policy uses it


@dataclass(frozen=True)
class FrameView:
    """What one configuration did on one step."""

    kind: str  # full | reset | pruned
    keep: torch.Tensor  # [h, w] bool, the patches that ran through the blocks after the cut
    heatmap: torch.Tensor | None  # [h, w] the scores the keep set was chosen from (None: nothing was chosen)
    boxes: torch.Tensor  # [M, 4] xyxy px, detections scoring above SCORE_THR (M = 0 for non-detectors)

    @property
    def num_kept(self) -> int:
        return int(self.keep.sum())


@dataclass(frozen=True)
class PolicyRun:
    """One configuration over the shown steps."""

    config: MethodConfig
    frames: list[FrameView]

    @property
    def label(self) -> str:
        return f"rgtp r={self.config.window}" if self.config.policy == "rgtp" else self.config.policy

    @property
    def color(self) -> str:
        return policy(self.config.policy).color

    @property
    def has_heatmap(self) -> bool:
        return policy(self.config.policy).rollout


@dataclass(frozen=True)
class Rendering:
    """Everything the pictures show; no drawing state."""

    model: str
    clip_id: str
    sampling: int
    indices: list[int]  # clip frame index of each step (first frame of its tubelet) [S]
    images: torch.Tensor  # [S, 3, H, W] in [0, 1]
    targets: list[torch.Tensor] | None  # per step [M, 4] xyxy px ground truth; None: the clip has no targets
    patch: tuple[int, int]  # patch size (ph, pw) in px
    runs: list[PolicyRun]
    strip: list[int]  # the steps (positions in ``indices``) shown as rows of the PNG strip

    @property
    def columns(self) -> list[tuple[PolicyRun, str]]:
        """The panels of a row, left to right: ``(run, "kept")`` per run, and ``(run, "heatmap")`` after RGTP's."""
        return [(run, part) for run in self.runs for part in ("kept", "heatmap")[: 1 + run.has_heatmap]]


# ------------------------------------------------------------------------------------------------- computation


def render_clip(loaded: LoadedModel, clip, configs: list[MethodConfig], *, sampling: int = 1,
                max_frames: int | None = 16, strip_frames: int = 4, clip_index: int = 0) -> Rendering:
    """Run each of ``configs`` on ``clip`` (a ``Clip``) with fresh state and collect what it kept, step by step.

    Steps follow ``pipeline.step_indices`` (every ``sampling``-th step, at most ``max_frames``); ``clip_index``
    seeds the random policy as in a benchmark run. ``strip_frames`` evenly spaced steps become the strip's rows.
    """
    if not configs:
        raise ConfigError("show needs at least one method configuration")
    frames = clip.frames
    size = tuple(int(s) for s in frames.shape[-2:])
    if size != tuple(loaded.img_size) and not getattr(loaded.backbone, "dynamic_img_size", False):
        raise ConfigError(f"clip frames are {size[0]}x{size[1]} px; {loaded.name} takes "
                          f"{loaded.img_size[0]}x{loaded.img_size[1]}")
    patch = tuple(int(p) for p in loaded.backbone.patch_embed.patch_size)
    indices = step_indices(int(frames.shape[0]), sampling, max_frames, loaded.tubelet)
    if not indices:
        raise ConfigError(f"clip {clip.clip_id} has no step at sampling {sampling}")
    engines = [loaded.engine(config) for config in configs]  # a refused configuration fails before any runs
    runs = [PolicyRun(config, _run(loaded, engine, clip, indices, patch, clip_index))
            for config, engine in zip(configs, engines, strict=True)]
    targets = None if clip.targets is None else [clip.targets[i]["boxes"].float() for i in indices]
    strip = sorted(set(np.linspace(0, len(indices) - 1, max(1, min(strip_frames, len(indices)))).round().astype(int)))
    return Rendering(loaded.name, clip.clip_id, sampling, indices,
                     torch.stack([torch.as_tensor(frames[i]).float() for i in indices]), targets, patch, runs,
                     [int(s) for s in strip])


def _run(loaded: LoadedModel, engine: StreamingEngine, clip, indices: list[int], patch: tuple[int, int],
         clip_index: int) -> list[FrameView]:
    """One configuration over the steps ``indices`` of ``clip`` with fresh state (``pipeline.run_batch``, B = 1)."""
    device = next(loaded.model.parameters()).device
    state = engine.new_state(clip_index)
    views = []
    for i in indices:
        x = loaded.steps(clip.frames[i : i + loaded.tubelet], clip.valid_hw).to(device)
        chooser = choosing_heatmap(engine, state, x) if engine.rollout else None
        rec = engine.step(x, state)
        grid = (x.shape[-2] // patch[0], x.shape[-1] // patch[1])
        if grid[0] * grid[1] != rec.num_patches:
            raise ConfigError(f"{rec.num_patches} patches do not tile a {grid[0]}x{grid[1]} grid of {patch} px")
        keep = torch.ones(rec.num_patches, dtype=torch.bool)
        if rec.kept is not None:
            keep = torch.zeros_like(keep).index_fill_(0, rec.kept[0].cpu(), True)
        boxes = torch.zeros(0, 4)
        if loaded.kind == "detect":
            det = rec.predictions[0]
            boxes = det["boxes"][det["scores"] > SCORE_THR].float().cpu()
        heat = None if chooser is None else chooser[0].float().cpu().reshape(grid)
        views.append(FrameView(rec.kind, keep.reshape(grid), heat, boxes))
    return views


@torch.inference_mode()
def choosing_heatmap(engine: StreamingEngine, state: ClipState, x: torch.Tensor) -> torch.Tensor | None:
    """The scores RGTP picks the next step's keep set from, before ``engine.step(x, state)``: ``[B, N]``, or None
    where the step keeps every patch or a fixed pattern (full and reset frames).

    The previous step's rollout tracked to this step by the configuration's window (as the engine's selection
    does); with ``track_features=block0_keys`` the untracked rollout (the cut block's keys exist only inside the
    step).
    """
    cfg = engine.resolved
    if state.heatmap is None or frame_kind(state.t, cfg.reset_every) != PRUNED:
        return None
    if cfg.track_features != "patch_embed":
        return state.heatmap
    z, grid = engine.vit.embed(x)
    return track_scores(state.heatmap, state.embed, z, grid, cfg.window, cfg.similarity, bounds=cfg.track_bounds,
                        min_gain_pct=cfg.min_gain_pct)


def dim_dropped(image: torch.Tensor, keep: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """``image [3, H, W]`` with the pixels of dropped patches (``keep [h, w]`` False) turned to a dark grey
    (``DIM`` times their grey level); kept patches unchanged. Pixels beyond the patch grid count as dropped."""
    mask = keep.repeat_interleave(patch[0], 0).repeat_interleave(patch[1], 1)
    full = torch.zeros(image.shape[-2:], dtype=torch.bool)
    full[: mask.shape[0], : mask.shape[1]] = mask[: image.shape[-2], : image.shape[-1]]
    grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).clamp(0, 1)
    return torch.where(full, image, DIM * grey)


# ------------------------------------------------------------------------------------------------------ drawing


def check_paths(animation: Path, strip: Path) -> None:
    """One-line ``ConfigError`` for an output suffix ``write`` cannot produce (call before the slow part)."""
    if Path(animation).suffix.lower() not in ANIMATIONS:
        raise ConfigError(f"animation {animation}: the suffix must be one of {', '.join(ANIMATIONS)}")
    if Path(strip).suffix.lower() not in STRIPS:
        raise ConfigError(f"strip {strip}: the suffix must be {', '.join(STRIPS)}")


def figure_size(rows: int, columns: int) -> tuple[int, int]:
    """Pixel size ``(width, height)`` of a figure of ``rows x columns`` panels."""
    width = LEFT_IN + columns * (PANEL_IN + GAP_IN)
    height = HEADER_IN + rows * (PANEL_IN + GAP_IN) + FOOTER_IN
    return round(width * DPI), round(height * DPI)


def write(rendering: Rendering, animation: Path, strip: Path, *, frame_ms: int = 500) -> tuple[Path, Path]:
    """Draw ``rendering``: one animation frame per step (``.gif``, or ``.mp4`` via PyAV), and the PNG strip
    (strip steps as rows, panels as columns). Returns both paths."""
    animation, strip = Path(animation), Path(strip)
    check_paths(animation, strip)
    images = [_to_rgb(_figure(rendering, [s])) for s in range(len(rendering.indices))]
    if animation.suffix.lower() == ".gif":
        from PIL import Image

        first, *rest = [Image.fromarray(image) for image in images]
        first.save(animation, save_all=True, append_images=rest, duration=frame_ms, loop=0)
    else:
        _write_mp4(images, animation, 1000 / frame_ms)
    fig = _figure(rendering, rendering.strip)
    fig.savefig(strip, dpi=DPI)
    return animation, strip


def _title(rendering: Rendering) -> str:
    ratios = sorted({c.config.keep_ratio for c in rendering.runs if policy(c.config.policy).prunes})
    pruned = [v.num_kept for r in rendering.runs for v in r.frames if v.kind == PRUNED]
    total = rendering.runs[0].frames[0].keep.numel()
    budget = f"keep ratio {', '.join(f'{r:g}' for r in ratios)}" if ratios else "dense"
    if pruned and len(set(pruned)) == 1:
        budget += f" ({pruned[0]}/{total} tokens)"
    every = "every frame" if rendering.sampling == 1 else f"1/{rendering.sampling} frame sampling"
    return f"{rendering.model} on {rendering.clip_id}: {budget}, {every}"


def _figure(rendering: Rendering, steps: list[int]):
    """A figure of the steps ``steps`` (rows) x ``rendering.columns``; panels titled on the top row only."""
    from matplotlib.figure import Figure

    columns = rendering.columns
    width, height = figure_size(len(steps), len(columns))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    w_in, h_in = width / DPI, height / DPI
    fig.subplots_adjust(left=LEFT_IN / w_in, right=1 - GAP_IN / w_in, top=1 - HEADER_IN / h_in,
                        bottom=FOOTER_IN / h_in, wspace=GAP_IN / PANEL_IN, hspace=GAP_IN / PANEL_IN)
    axes = fig.subplots(len(steps), len(columns), squeeze=False)
    title = _title(rendering)
    if len(steps) == 1:
        s = steps[0]
        title += f"\nframe {rendering.indices[s]} (step {s + 1}/{len(rendering.indices)})"
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / h_in, va="top")
    for r, s in enumerate(steps):
        for col, (ax, (run, part)) in enumerate(zip(axes[r], columns, strict=True)):
            _panel(ax, rendering, run, part, s)
            if r == 0:
                name = run.label if part == "kept" else f"{run.label}: heatmap"
                ax.set_title(name, color=run.color, fontsize=10, fontweight="bold", pad=4)
            if col == 0 and len(steps) > 1:
                ax.set_ylabel(f"frame {rendering.indices[s]}", fontsize=9)
    fig.text(0.5, 0.35 * FOOTER_IN / h_in, _legend(rendering), ha="center", va="center", fontsize=8, color="0.25")
    return fig


def _legend(rendering: Rendering) -> str:
    parts = ["bright: kept tokens, dark grey: dropped"]
    if any(v.boxes.numel() for r in rendering.runs for v in r.frames):
        parts.append(f"magenta: detections (score > {SCORE_THR:g})")
    if rendering.targets is not None:
        parts.append("white dashed: ground truth")
    if any(r.has_heatmap for r in rendering.runs):
        parts.append("heatmap: previous rollout tracked to this frame, which chose the kept set (outlined)")
    return "   |   ".join(parts)


def _panel(ax, rendering: Rendering, run: PolicyRun, part: str, s: int) -> None:
    """One panel: the frame with dropped patches dimmed (``kept``) or the choosing heatmap (``heatmap``)."""
    view, image = run.frames[s], rendering.images[s]
    height, width = image.shape[-2:]
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(run.color)
        spine.set_linewidth(2)
    if part == "kept":
        ax.imshow(_hwc(dim_dropped(image, view.keep, rendering.patch)), interpolation="nearest")
        label = f"{view.kind}  {view.num_kept}/{view.keep.numel()}"
    else:
        ax.imshow(_hwc(dim_dropped(image, torch.zeros_like(view.keep), rendering.patch)), interpolation="nearest")
        if view.heatmap is not None:
            extent = (0, view.keep.shape[1] * rendering.patch[1], view.keep.shape[0] * rendering.patch[0], 0)
            ax.imshow(view.heatmap.numpy(), cmap="inferno", alpha=0.7, extent=extent, interpolation="nearest",
                      vmin=float(view.heatmap.min()), vmax=float(view.heatmap.max()))
            _outline(ax, view.keep, rendering.patch)
            label = "chose the kept set"
        else:
            label = f"{view.kind}: {'every token' if view.num_kept == view.keep.numel() else 'fixed pattern'}"
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    if part == "kept":
        if rendering.targets is not None:
            _boxes(ax, rendering.targets[s], TARGET_COLOR, 0.8, (0, (3, 2)))
        _boxes(ax, view.boxes, DETECTION_COLOR, 1.4, "-")
    ax.text(3, 3, label, fontsize=8, color="white", va="top", ha="left",
            bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "edgecolor": "none"})


def _outline(ax, keep: torch.Tensor, patch: tuple[int, int]) -> None:
    from matplotlib.patches import Rectangle

    for y, x in keep.nonzero().tolist():
        ax.add_patch(Rectangle((x * patch[1], y * patch[0]), patch[1], patch[0], fill=False, lw=0.6,
                               edgecolor=KEPT_EDGE))


def _boxes(ax, boxes: torch.Tensor, color: str, lw: float, style) -> None:
    from matplotlib.patches import Rectangle

    for x0, y0, x1, y1 in boxes.tolist():
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=lw, ls=style, edgecolor=color))


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def _to_rgb(fig) -> np.ndarray:
    """A figure as ``uint8 [height, width, 3]``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _write_mp4(images: list[np.ndarray], path: Path, fps: float) -> None:
    from fractions import Fraction

    import av

    height, width = (images[0].shape[0] // 2) * 2, (images[0].shape[1] // 2) * 2  # yuv420p: even sides
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
