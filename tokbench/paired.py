"""Paired comparisons of rows over the same bootstrap resamples of the clips (``rows.summarise``): every pruned row
against dense, and RGTP against every baseline at the same budget and frame sampling, each difference with its
95 % interval. Two rows of one experiment ran on the same clips, so their resample values pair up one to one."""

from __future__ import annotations

import numpy as np

from tokbench import intervals
from tokbench.policies import policy

BUDGET = ("keep_ratio", "reset_every", "sampling")  # what "the same budget and sampling" means


def setting(row: dict) -> str:
    """A short name: ``rgtp r=1`` (a policy that tracks names its window, and a drop schedule and propagation
    where set: ``rgtp r=1 drop=0:336,3:40 prop=supplement``), ``grid``, ``random`` (seeds pooled)."""
    if not policy(row["policy"]).rollout:
        return str(row["policy"])
    name = f"{row['policy']} r={row['window']}"
    schedule, propagation = row.get("drop_schedule"), row.get("propagation")
    if isinstance(schedule, str) and schedule:  # NaN when read back from CSV empty
        name += f" drop={schedule}"
    if isinstance(propagation, str) and propagation != "none":
        name += f" prop={propagation}"
    return name


def paired_rows(rows: list[dict], samples: dict[str, dict[str, np.ndarray]], level: float = 0.95) -> list[dict]:
    """Differences ``a - b`` with their bootstrap intervals, one line per (a, b, metric); ``samples`` maps a row's
    ``config_id`` to its per-resample metric values ``[R]``. A seeded baseline's rows (``random``) are pooled: the
    mean over its seeds of each resample value."""
    rows = [r for r in rows if not failed(r) and r["config_id"] in samples]
    groups: dict[tuple, list[dict]] = {}  # one setting at one budget and sampling: its seeds together
    for row in rows:
        groups.setdefault((setting(row), *(row.get(k) for k in BUDGET)), []).append(row)
    out = []
    for group in groups.values():
        first = group[0]
        if not policy(first["policy"]).prunes:
            continue
        dense = [r for r in rows if not policy(r["policy"]).prunes and r["sampling"] == first["sampling"]]
        against = [dense] + (_baselines(rows, first) if policy(first["policy"]).rollout else [])
        for other in against:
            if other:
                out += _compare(group, other, samples, level)
    return out


def failed(row: dict) -> bool:
    error = row.get("error")
    return isinstance(error, str) and bool(error)  # rows read back from CSV hold NaN where there is none


def _baselines(rows: list[dict], row: dict) -> list[list[dict]]:
    """Rows of each baseline (its seeds together) at the budget and sampling of ``row``."""
    same = [r for r in rows if policy(r["policy"]).prunes and not policy(r["policy"]).rollout
            and all(r.get(k) == row.get(k) for k in BUDGET)]
    by_policy: dict[str, list[dict]] = {}
    for r in same:
        by_policy.setdefault(r["policy"], []).append(r)
    return list(by_policy.values())


def _compare(a: list[dict], b: list[dict], samples: dict, level: float) -> list[dict]:
    """``a - b`` per metric both have (seeds of either side averaged per resample)."""
    lines = []
    for metric in samples[a[0]["config_id"]]:
        if not all(metric in samples[r["config_id"]] for r in b):
            continue
        sa = np.mean([samples[r["config_id"]][metric] for r in a], axis=0)
        sb = np.mean([samples[r["config_id"]][metric] for r in b], axis=0)
        diff = float(np.mean([r[metric] for r in a]) - np.mean([r[metric] for r in b]))
        low, high = intervals.paired(sa, sb, level)
        lines.append({"a": setting(a[0]), "b": setting(b[0]), "sampling": a[0]["sampling"],
                      "keep_ratio": a[0].get("keep_ratio"), "metric": metric, "diff": diff, "ci_low": low,
                      "ci_high": high, "significant": intervals.excludes_zero((low, high)),
                      "seeds_b": len(b), "resamples": len(sa)})
    return lines
