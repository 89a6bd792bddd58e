"""Tables and plots from ``rows.csv`` (never recomputes anything)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tokbench.errors import DataError


def load_rows(folder: Path) -> pd.DataFrame:
    path = folder / "rows.csv"
    if not path.exists():
        raise DataError(f"no rows.csv in {folder}")
    rows = pd.read_csv(path)
    return rows[rows["error"].isna() | (rows["error"] == "")] if "error" in rows else rows


def window_table(rows: pd.DataFrame, metric: str = "map50") -> pd.DataFrame:
    """The supplement's Table 1 layout: window | GMACs per frame | metric at each sampling; a dense row first."""
    rows = rows.copy()
    rows["setting"] = rows.apply(lambda r: "dense" if r["policy"] == "dense" else f"r = {int(r['window'])}", axis=1)
    table = rows.pivot_table(index="setting", columns="sampling", values=metric, aggfunc="mean")
    table.columns = [f"{metric} (1/{int(s)} sampling)" for s in table.columns]
    gmacs = rows[rows["sampling"] == rows["sampling"].min()].groupby("setting")["gmacs_per_frame"].mean()
    table.insert(0, "GMACs/frame (fvcore, 1/1)", gmacs)
    order = ["dense"] + sorted(i for i in table.index if i != "dense")
    return table.loc[[i for i in order if i in table.index]].round(3)


def markdown(folder: Path, metric: str = "map50") -> str:
    """Markdown of the window table with what was measured, on what, with which versions."""
    rows = load_rows(folder)
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
    table = window_table(rows, metric)
    keep = rows.loc[rows["policy"] != "dense", "keep_tokens"]
    lines = [
        "# Tracking-window ablation (RGTP)",
        "",
        table.to_markdown(),
        "",
        f"- model: `{meta.get('model')}`; data: {meta.get('data', {}).get('name', meta.get('task'))}, "
        f"{meta.get('data', {}).get('clips_used')} val clips; frames run in order at batch 1, state reset per clip",
        f"- pruned frames keep {int(keep.iloc[0]) if len(keep) else 'all'} patch tokens; "
        "first frame of each clip and every reset frame are full; GMACs are averaged over all frames",
        "- GMACs: fvcore convention (1 multiply-add = 1), attention counted via an SDPA handle, "
        "tracking added analytically",
        f"- {metric}: torchmetrics MeanAveragePrecision map_50 (COCO-style), percent" if metric == "map50"
        else f"- {metric}: percent",
        f"- tokbench {meta.get('tokbench_version')} ({meta.get('git_hash')}), torch {meta.get('torch_version')}, "
        f"timm {meta.get('timm_version')}, fvcore {meta.get('fvcore_version')}; {meta.get('device')}, "
        f"{meta.get('threads')} threads",
    ]
    return "\n".join(lines) + "\n"


def window_plot(folder: Path, path: Path, metric: str = "map50") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_rows(folder)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for sampling, group in rows[rows["policy"] != "dense"].groupby("sampling"):
        group = group.sort_values("window")
        (line,) = ax.plot(group["window"], group[metric], marker="o", label=f"RGTP, 1/{int(sampling)} sampling")
        dense = rows[(rows["policy"] == "dense") & (rows["sampling"] == sampling)][metric]
        if len(dense):
            ax.axhline(float(dense.iloc[0]), ls="--", color=line.get_color(), alpha=0.6,
                       label=f"dense, 1/{int(sampling)}")
    ax.set_xlabel("tracking window r")
    ax.set_ylabel(metric)
    ax.set_xticks(sorted(rows.loc[rows["policy"] != "dense", "window"].unique()))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
