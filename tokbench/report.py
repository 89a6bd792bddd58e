"""Tables and plots from result folders (``rows.csv`` + ``meta.json``); never recomputes anything.

A *setting* is one configuration up to the random seed: rows that differ only in ``seed`` are averaged and
reported as ``mean ± std``. Knobs that vary within a policy name the setting (``rgtp r=2``, ``random``, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tokbench.errors import DataError
from tokbench.policies import POLICIES

METRICS = ("map50", "top1", "map50_vs_dense", "top1_agreement", "cosine_pooled")
MOTION = ("slow", "medium", "fast")  # FGFA motion-IoU categories: map50_slow, map50_medium, map50_fast
KNOBS = ("window", "keep_ratio", "reset_every", "head_fusion", "similarity", "fg_ratio", "bg_ratio",
         "drop_schedule", "propagation")
KNOB_NAMES = {"window": "r", "keep_ratio": "keep", "reset_every": "k", "head_fusion": "fusion",
              "similarity": "sim", "fg_ratio": "phi", "bg_ratio": "beta", "drop_schedule": "drop",
              "propagation": "prop"}
RGTP_ONLY = ("window", "head_fusion", "similarity", "drop_schedule", "propagation")
POLICY_ORDER = tuple(sorted(POLICIES, key=lambda name: POLICIES[name].prunes))  # the unpruned reference first
METRIC_NOTES = {
    "map50": "COCO-style mAP at IoU 0.5 against the labels, percent (equals torchmetrics' map_50; [low, high]: "
             "95 % bootstrap interval over clips, mAP recomputed on each resample)",
    "top1": "top-1 accuracy against the labels, percent",
    "map50_vs_dense": "map_50 of the pruned detections scored against the dense model's own, percent",
    "top1_agreement": "top-1 agreement with the dense model, percent",
    "cosine_pooled": "cosine similarity of pooled output features to the dense model's",
}


MOTION_NOTE = ("- slow / medium / fast: mAP50 (%) of the boxes whose motion IoU (mean IoU with the same object "
               "within +-10 frames, FGFA) is > 0.9 / 0.7-0.9 / < 0.7; other boxes ignored (detections on them "
               "count neither way)")


def load_rows(folder: Path) -> pd.DataFrame:
    """Finished rows of ``folder/rows.csv`` (rows with an ``error`` are left out)."""
    path = Path(folder) / "rows.csv"
    if not path.exists():
        raise DataError(f"no rows.csv in {folder}")
    try:
        rows = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if "policy" not in rows:
        raise DataError(f"{path} is not a tokbench rows.csv (no 'policy' column)")
    return rows[rows["error"].isna() | (rows["error"] == "")] if "error" in rows else rows


def load_meta(folder: Path) -> dict:
    path = Path(folder) / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


def metric_of(rows: pd.DataFrame) -> str:
    """The quality column of these rows (labels first, then fidelity to dense)."""
    for name in METRICS:
        if name in rows and rows[name].notna().any():
            return name
    raise DataError("rows hold no quality metric (" + ", ".join(METRICS) + ")")


def varying_knobs(rows: pd.DataFrame) -> list[str]:
    """Knobs taking more than one value among the RGTP rows (or among all pruned rows if there is no RGTP)."""
    pruned = rows[rows["policy"] == "rgtp"]
    pruned = pruned if len(pruned) else rows[rows["policy"] != "dense"]
    return [k for k in KNOBS if k in pruned and pruned[k].nunique(dropna=False) > 1]


def _fmt(value) -> str:
    if value != value or value == "":  # an empty drop schedule reads back from CSV as NaN: one-shot pruning
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def with_settings(rows: pd.DataFrame) -> pd.DataFrame:
    """Add ``setting`` (a readable name) and ``order`` columns."""
    knobs = varying_knobs(rows)
    rgtp_knobs = [k for k in knobs if k not in RGTP_ONLY]

    def name(row) -> str:
        if row["policy"] == "dense":
            return "dense"
        used = knobs if row["policy"] == "rgtp" else rgtp_knobs
        parts = [f"{KNOB_NAMES[k]}={_fmt(row[k])}" for k in used]
        return " ".join([row["policy"], *parts])

    rows = rows.copy()
    rows["setting"] = rows.apply(name, axis=1)
    rank = {p: i for i, p in enumerate(POLICY_ORDER)}
    rows["order"] = rows["policy"].map(lambda p: rank.get(p, len(rank)))
    return rows


MISSING = "—"
# per metric: the column label, a transform of the stored value, and its format (digits that tell rows apart)
METRIC_DISPLAY = {
    "map50": ("mAP50 (%)", lambda v: v, "{:.1f}"),
    "map50_vs_dense": ("mAP50 vs dense (%)", lambda v: v, "{:.1f}"),
    "top1": ("top-1 (%)", lambda v: v, "{:.1f}"),
    "top1_agreement": ("top-1 agreement (%)", lambda v: v, "{:.2f}"),
    "kl_to_dense": ("KL to dense", lambda v: v, "{:.4g}"),
    "cosine_pooled": ("1 − cos, pooled (‰)", lambda v: 1000 * (1 - v), "{:.3g}"),
}


def cost_column(rows: pd.DataFrame) -> str:
    """``gmacs_per_clip`` for classification rows, else ``gmacs_per_frame``."""
    return "gmacs_per_clip" if "gmacs_per_clip" in rows and rows["gmacs_per_clip"].notna().any() else "gmacs_per_frame"


def gmacs_decimals(values, least: int = 3, most: int = 5) -> int:
    """Decimals that show the smallest difference between distinct values with 3 significant digits.

    ``[0.62, 0.621]`` -> 5; ``[0.6196, 0.6202, 1.642]`` -> 5 (capped at ``most``); ``[1.6, 1.7]`` -> 3.
    """
    import math

    distinct = sorted({round(float(v), most + 1) for v in values if v == v})
    gaps = [round(b - a, most + 1) for a, b in zip(distinct, distinct[1:], strict=False)]
    if not gaps:
        return least
    return max(least, min(most, -math.floor(math.log10(min(gaps)) + 1e-9) + 2))


def format_metric(metric: str, mean: float, std: float | None = None,
                  ci: tuple[float, float] | None = None) -> str:
    """One table cell: the metric's own precision, ``mean ± std`` over seeds, ``value [low, high]`` with a
    bootstrap interval, ``—`` when missing."""
    if mean is None or mean != mean:
        return MISSING
    _, transform, fmt = METRIC_DISPLAY.get(metric, (metric, lambda v: v, "{:.4g}"))
    cell = fmt.format(transform(mean))
    if ci is not None and all(v == v for v in ci):
        low, high = sorted(transform(v) for v in ci)
        cell += f" [{fmt.format(low)}, {fmt.format(high)}]"
    if std is not None and std == std:
        scale = abs(transform(1.0) - transform(0.0))  # the transforms are affine
        cell += " ± " + fmt.format(std * scale)
    return cell


def summary_table(rows: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """One line per setting: kept tokens, GMACs per frame (detection) or per clip (classification) at the densest
    sampling, and the metric at each frame sampling (mean ± std over seeds when there are several)."""
    metric = metric or metric_of(rows)
    rows = with_settings(rows)
    densest = rows["sampling"].min()
    keys = ["order", "setting"]
    cost = cost_column(rows)
    base = rows[rows["sampling"] == densest].groupby(keys).agg(tokens=("keep_tokens", "first"), gmacs=(cost, "mean"))
    table = pd.DataFrame(index=base.index)
    table["kept tokens"] = base["tokens"].astype("Int64")
    unit = "clip" if cost == "gmacs_per_clip" else "frame"
    decimals = gmacs_decimals(base["gmacs"])
    table[f"GMACs/{unit} (fvcore, 1/{int(densest)})"] = [
        MISSING if g != g else f"{g:.{decimals}f}" for g in base["gmacs"]
    ]
    label = METRIC_DISPLAY.get(metric, (metric,))[0]
    columns = [(metric, label)]
    if metric == "map50":  # mAP50 by motion speed (FGFA), where the data has motion IoU
        columns += [(f"map50_{s}", s) for s in MOTION if f"map50_{s}" in rows and rows[f"map50_{s}"].notna().any()]
    for name, title in columns:
        for sampling, group in rows.groupby("sampling"):
            stats = group.groupby(keys)[name].agg(["mean", "std", "count"])
            ci = (group.groupby(keys)[[f"{name}_ci_low", f"{name}_ci_high"]].first()
                  if f"{name}_ci_low" in group and name == metric else None)  # motion columns: in rows.csv
            cells = [format_metric(metric, m, s if c > 1 else None,
                                   None if ci is None or c > 1 else tuple(ci.loc[key]))
                     for key, m, s, c in zip(stats.index, stats["mean"], stats["std"], stats["count"], strict=True)]
            table[f"{title}, 1/{int(sampling)}"] = pd.Series(cells, index=stats.index)
    table = table.sort_index().fillna(MISSING)
    table.index = table.index.droplevel("order")
    return table


def provenance_lines(meta: dict, rows: pd.DataFrame, metric: str) -> list[str]:
    """What was measured, on what, with which versions."""
    data = meta.get("data", {})
    seeds = sorted(rows.loc[rows["policy"] == "random", "seed"].unique()) if "seed" in rows else []
    lines = [
        f"- model: `{meta.get('model')}`; data: {data.get('name', meta.get('task'))}, {data.get('clips_used')} "
        "clips; frames run in order, state reset per clip" + _batch_note(rows),
        "- every pruned policy keeps the same number of patch tokens on the same frames (full first frame, "
        f"{_reset_note(rows)})",
        "- GMACs: fvcore convention (1 multiply-add = 1), attention counted "
        f"({_sdpa_note(rows)}), tracking added analytically; "
        + ("per clip = views x (spatial steps + temporal encoder + classifier)" if cost_column(rows) == "gmacs_per_clip"
           else "per frame = mean over all frames, full first and reset frames included"),
        f"- {metric}: {METRIC_NOTES.get(metric, metric)}",
        *([MOTION_NOTE] if "map50_fast" in rows and rows["map50_fast"].notna().any() else []),
        f"- tokbench {meta.get('tokbench_version')} ({meta.get('git_hash')}), torch {meta.get('torch_version')}, "
        f"timm {meta.get('timm_version')}, fvcore {meta.get('fvcore_version')}; {meta.get('device')}, "
        f"{meta.get('threads')} threads",
    ]
    if meta.get("training"):
        lines.insert(1, f"- weights: {meta.get('model_info', {}).get('weights', '?')}; {meta['training']}")
    if len(seeds) > 1:
        lines.insert(2, f"- random: mean ± std over seeds {', '.join(str(int(s)) for s in seeds)}")
    return lines


def _batch_note(rows: pd.DataFrame) -> str:
    batch = int(rows["clip_batch"].max()) if "clip_batch" in rows and rows["clip_batch"].notna().any() else 1
    return f" (clips in lockstep batches of up to {batch}: the same records as one at a time)" if batch > 1 else ""


def _reset_note(rows: pd.DataFrame) -> str:
    modes = set(rows.loc[rows["policy"] != "dense", "reset_mode"].dropna()) if "reset_mode" in rows else set()
    if modes == {"pattern"}:
        return "reset frames pruned with a fixed pattern"
    return "full reset frames" if modes <= {"full"} else "full or pattern reset frames"


def _sdpa_note(rows: pd.DataFrame) -> str:
    modes = set(rows["sdpa_flops"].dropna()) if "sdpa_flops" in rows else set()
    if modes == {"explicit"}:
        return "attention run with explicit matmuls"
    return "fused attention via an SDPA handle" if modes <= {"handle"} else "SDPA handle / explicit attention"


def markdown(folder: Path, metric: str | None = None) -> str:
    """The ablation table of one result folder, as Markdown with its provenance."""
    rows = load_rows(folder)
    metric = metric or metric_of(rows)
    knobs = varying_knobs(rows)
    title = "Tracking-window ablation" if knobs == ["window"] else "Ablation"
    lines = [f"# {title}: RGTP and baselines at matched budgets", "", summary_table(rows, metric).to_markdown(), ""]
    paired = paired_table(folder, metric)
    if paired is not None:
        lines += ["## Paired differences", "", PAIRED_NOTE, "", paired.to_markdown(), ""]
    return "\n".join(lines + provenance_lines(load_meta(folder), rows, metric)) + "\n"


PAIRED_NOTE = ("Differences over the same bootstrap resamples of the clips, with their 95 % interval; * marks an "
               "interval that excludes 0 (a real difference on this data); a seeded baseline (`random`) is the mean "
               "over its seeds.")


def paired_table(folder: Path, metric: str) -> pd.DataFrame | None:
    """``paired.csv`` of a folder as one line per comparison (``a − b``) and a column per frame sampling."""
    path = Path(folder) / "paired.csv"
    if not path.exists() or path.stat().st_size < 2:
        return None
    lines = pd.read_csv(path)
    lines = lines[lines["metric"] == metric]
    if lines.empty:
        return None
    _, transform, fmt = METRIC_DISPLAY.get(metric, (metric, lambda v: v, "{:.4g}"))
    scale = transform(1.0) - transform(0.0)

    def cell(line) -> str:
        low, high = sorted((line["ci_low"] * scale, line["ci_high"] * scale))
        star = "*" if line["significant"] else ""
        return f"{line['diff'] * scale:+.1f} [{low:+.1f}, {high:+.1f}]{star}"

    comparison = lines["a"] + " − " + lines["b"]
    if lines["keep_ratio"].nunique() > 1:  # one line per budget
        comparison += lines["keep_ratio"].map(lambda k: f", keep {k:g}")
    lines = lines.assign(comparison=comparison, cell=lines.apply(cell, axis=1))
    label = METRIC_DISPLAY.get(metric, (metric,))[0]
    table = lines.pivot_table(index="comparison", columns="sampling", values="cell", aggfunc="first", sort=False)
    table.columns = [f"Δ {label}, 1/{int(s)}" for s in table.columns]
    return table.fillna(MISSING)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


POLICY_COLORS = {name: p.color for name, p in POLICIES.items()}
POLICY_MARKERS = {name: p.marker for name, p in POLICIES.items()}
KNOB_LABELS = {"window": "tracking window r", "keep_ratio": "keep ratio", "reset_every": "reset interval k",
               "fg_ratio": "foreground ratio φ", "bg_ratio": "background ratio β"}


def knob_plot(rows: pd.DataFrame, knob: str, path: Path, metric: str | None = None) -> None:
    """The metric against one RGTP knob, a panel per frame sampling; dense and each baseline as a horizontal line
    in its own colour (the same in every panel); the legend outside the data."""
    plt = _pyplot()
    metric = metric or metric_of(rows)
    samplings = sorted(rows["sampling"].unique())
    fig, axes = plt.subplots(1, len(samplings), figsize=(4.2 * len(samplings) + 1.6, 3.8), squeeze=False,
                             sharey=True)
    for ax, sampling in zip(axes[0], samplings, strict=True):
        group = rows[rows["sampling"] == sampling]
        rgtp = group[group["policy"] == "rgtp"].groupby(knob)[metric].mean()
        ax.plot(rgtp.index, rgtp.values, marker=POLICY_MARKERS["rgtp"], color=POLICY_COLORS["rgtp"], label="RGTP")
        if f"{metric}_ci_low" in group:  # 95 % bootstrap interval over clips
            ci = group[group["policy"] == "rgtp"].groupby(knob)[[f"{metric}_ci_low", f"{metric}_ci_high"]].mean()
            ax.errorbar(ci.index, rgtp.values, yerr=[rgtp.values - ci.iloc[:, 0], ci.iloc[:, 1] - rgtp.values],
                        fmt="none", ecolor=POLICY_COLORS["rgtp"], elinewidth=1, capsize=3, alpha=0.6,
                        label="RGTP 95 % interval")
        others = group[group["policy"] != "rgtp"].groupby("policy")[metric].mean()
        for policy in sorted(others.index, key=lambda p: POLICY_ORDER.index(p) if p in POLICY_ORDER else 99):
            ax.axhline(others[policy], color=POLICY_COLORS.get(policy, "tab:brown"),
                       ls="--" if policy == "dense" else "-", lw=1.2, alpha=0.8, label=policy)
        if pd.api.types.is_integer_dtype(rgtp.index) or all(float(v).is_integer() for v in rgtp.index):
            ax.set_xticks([int(v) for v in rgtp.index])
        ax.set_title(f"1/{int(sampling)} frame sampling")
        ax.set_xlabel(KNOB_LABELS.get(knob, knob))
        ax.grid(alpha=0.3)
    shown = [metric] + [c for c in (f"{metric}_ci_low", f"{metric}_ci_high") if c in rows]
    values = rows.groupby(["sampling", "policy", knob], dropna=False)[shown].mean().stack().dropna()
    pad = 0.05 * max(values.max() - values.min(), 1.0)
    axes[0][0].set_ylim(values.min() - pad, values.max() + pad)  # horizontal lines do not widen the limits
    axes[0][0].set_ylabel(METRIC_DISPLAY.get(metric, (metric,))[0])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pareto_plot(rows: pd.DataFrame, path: Path, metric: str | None = None) -> None:
    """GMACs against the metric, a panel per frame sampling: a colour and marker per policy (as in every plot), each
    point labelled with its setting, the dense point included, 95 % interval bars where the rows have them."""
    plt = _pyplot()
    metric = metric or metric_of(rows)
    rows = with_settings(rows)
    samplings = sorted(rows["sampling"].unique())
    fig, axes = plt.subplots(1, len(samplings), figsize=(5 * len(samplings) + 1.6, 4.2), squeeze=False, sharey=True)
    cost = cost_column(rows)
    labels: list[tuple[str, float, float, str]] = []
    for ax, sampling in zip(axes[0], samplings, strict=True):
        group = rows[rows["sampling"] == sampling]
        for policy, points in sorted(group.groupby("policy"), key=lambda p: POLICY_ORDER.index(p[0])
                                     if p[0] in POLICY_ORDER else 99):
            columns = [cost, metric] + [c for c in (f"{metric}_ci_low", f"{metric}_ci_high") if c in points]
            means = points.groupby("setting")[columns].mean()
            color = POLICY_COLORS.get(policy, "tab:brown")
            if len(columns) == 4:
                ax.errorbar(means[cost], means[metric], yerr=[means[metric] - means[columns[2]],
                                                               means[columns[3]] - means[metric]],
                            fmt="none", ecolor=color, elinewidth=0.8, capsize=2, alpha=0.5)
            ax.scatter(means[cost], means[metric], label=policy, s=30, color=color,
                       marker=POLICY_MARKERS.get(policy, "o"), zorder=3)
            labels += [(name, point[cost], point[metric], color) for name, point in means.iterrows()]
        _label_points(ax, labels)
        labels = []
        ax.set_title(f"1/{int(sampling)} frame sampling")
        ax.set_xlabel(f"GMACs per {'clip' if cost == 'gmacs_per_clip' else 'frame'} (fvcore)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(METRIC_DISPLAY.get(metric, (metric,))[0])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label_points(ax, labels: list[tuple[str, float, float, str]]) -> None:
    """Name each point to its right, labels of points at the same cost spread vertically so none overlap."""
    low, high = ax.get_ylim()
    gap = 0.045 * (high - low)
    xs = sorted(x for _, x, _, _ in labels)
    width = 0.15 * ((xs[-1] - xs[0]) or 1.0) if xs else 1.0  # a label runs this far right: closer points share
    starts: list[float] = []  # a column, grown greedily from its leftmost point
    for x in xs:
        if not starts or x - starts[-1] > width:
            starts.append(x)

    def column_of(x: float) -> int:
        return max(i for i, start in enumerate(starts) if x >= start)

    for col in range(len(starts)):
        column = sorted((item for item in labels if column_of(item[1]) == col), key=lambda item: item[2])
        placed: list[float] = []
        for name, x, y, color in column:
            target = max(y, placed[-1] + gap) if placed else y
            placed.append(target)
            ax.annotate(name, (x, y), xytext=(x, target), textcoords="data", fontsize=6.5, color=color, ha="left",
                        va="center", arrowprops={"arrowstyle": "-", "color": color, "lw": 0.4, "alpha": 0.5})
    span = max(x for _, x, _, _ in labels) - min(x for _, x, _, _ in labels) if labels else 0
    for text in ax.texts:  # to the right of the points
        text.set_x(text.xy[0] + 0.04 * (span or 1.0))


def ablation_plot(folder: Path, path: Path, metric: str | None = None) -> None:
    """``ablation.png``: the metric against the ablated knob (the window by default) where exactly one numeric knob
    varies, else the Pareto plot (every setting labelled)."""
    rows = load_rows(folder)
    knobs = varying_knobs(rows)
    if len(knobs) == 1 and pd.api.types.is_numeric_dtype(rows[knobs[0]]):
        knob_plot(rows, knobs[0], path, metric)
    else:
        pareto_plot(rows, path, metric)


BENCH_COLUMNS = ("name", "keep_tokens", "frame_kind", "step_ms_median", "step_ms_iqr", "speedup_vs_dense",
                 "gmacs_ratio_vs_dense", "speedup_over_gmacs_ratio", "block_efficiency", "method_ms", "method_pct",
                 "speedup_vs_random", "timed_parts_ms", "timed_parts_pct", "vs_timm")


def bench_table(rows: pd.DataFrame) -> pd.DataFrame:
    """``tokbench bench`` rows as a table: per timed variant, its median step, speed-up next to the GMACs ratio, one
    block's efficiency at its length, the method's wall-clock cost against grid (or random) at the same budget,
    the speed-up over random, and the engine's own timed parts (``tokbench.bench`` says what each measures)."""
    return rows[[c for c in BENCH_COLUMNS if c in rows]]


def bench_lines(meta: dict) -> list[str]:
    """What a wall-clock table measured, on what."""
    return [f"- batch-1 streaming latency, medians over {meta.get('repeats')} clips x {meta.get('frames')} steps; "
            f"speed-up and GMACs ratio (fvcore) of the timed frame kind against tokbench dense",
            "- method_ms: the pruned step minus that of grid (else random) at the same keep, the policy's own work "
            "in wall-clock; timed_parts_ms: the engine's own timers (scoring, tracking, selection, rollout); "
            "block_efficiency: one block's MACs per ms at the pruned length over the dense length",
            f"- {meta.get('device')}, {meta.get('threads')} threads; torch {meta.get('torch_version')}, timm "
            f"{meta.get('timm_version')}; tokbench {meta.get('tokbench_version')} ({meta.get('git_hash')})"]


def write_report(folders: list[Path], out: Path) -> Path:
    """``out/report.md`` with, per folder, its table, a Pareto plot and a plot per ablated knob."""
    if not folders:
        raise DataError("no result folders given")
    out.mkdir(parents=True, exist_ok=True)
    sections = ["# tokbench report", ""]
    for i, folder in enumerate(folders):
        rows, meta = load_rows(folder), load_meta(folder)
        if rows.empty:
            raise DataError(f"{folder}/rows.csv holds no finished rows")
        if "speedup_vs_dense" in rows:  # tokbench bench: wall-clock rows
            sections += [f"## {folder}: wall-clock", "", bench_table(rows).to_markdown(index=False), "",
                         *bench_lines(meta), ""]
            continue
        metric = metric_of(rows)
        sections += [f"## {folder}", "", summary_table(rows, metric).to_markdown(), ""]
        paired = paired_table(folder, metric)
        if paired is not None:
            sections += [PAIRED_NOTE, "", paired.to_markdown(), ""]
        sections += provenance_lines(meta, rows, metric) + [""]
        pareto = out / f"pareto_{i}.png"
        pareto_plot(rows, pareto, metric)
        sections += [f"![GMACs vs {metric}]({pareto.name})", ""]
        for knob in [k for k in varying_knobs(rows) if pd.api.types.is_numeric_dtype(rows[k])]:  # the Pareto
            plot = out / f"{knob}_{i}.png"  # plot above labels every setting of a categorical knob
            knob_plot(rows, knob, plot, metric)
            sections += [f"![{metric} vs {knob}]({plot.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path
