"""Mean and standard deviation of each metric, over all samples and per target age."""

from __future__ import annotations

import numpy as np


def field_stats(values: list) -> dict:
    """Return {mean, std, count, missing} of the non-null values; std is the population std (ddof 0)."""
    present = np.array([v for v in values if v is not None], dtype=np.float64)
    stats = {"count": int(present.size), "missing": len(values) - int(present.size)}
    if present.size:
        stats.update(mean=float(present.mean()), std=float(present.std()))
    else:
        stats.update(mean=None, std=None)
    return stats


def stats_by_field(records: list[dict], fields: list[str]) -> dict:
    return {name: field_stats([record.get(name) for record in records]) for name in fields}


def summarize(records: list[dict], fields: list[str], ages: list[int] | None) -> dict:
    """Return {"overall": {field: stats}, "per_target_age": {age: {field: stats}}} (no ages: overall only)."""
    summary = {"overall": stats_by_field(records, fields)}
    if ages:
        summary["per_target_age"] = {
            str(age): stats_by_field([r for r in records if r["target_age"] == age], fields) for age in ages
        }
    return summary

