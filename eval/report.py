"""Write an evaluation report as report.json, report.md and report.html, each file atomically.

report.json contains everything (every sample, the summary, the config and the sha256 of each weight
file); report.md and report.html render the same tables, and report.html adds an image grid as
embedded PNG data URIs.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.checkpoint.convert import file_sha256

REPORT_FORMAT = "sam-eval-report/1"
# Rows of long lists (alignment failures, unmatched files) shown in report.md and report.html;
# report.json always lists all of them.
MAX_LISTED_ROWS = 100
FIELD_DIGITS = {"lpips": 4, "mse": 4, "id_similarity": 4, "predicted_age": 2, "age_error": 2}
# Top-level report keys listed under the title when present.
HEADER_KEYS = ("checkpoint", "test_shards", "generated_dir", "ground_truth_dir", "num_images", "num_pairs",
               "target_ages", "world_size", "elapsed_sec")


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Grid:
    """Image rows of report.html: each row is a label and [H, W, 3] uint8 images under `headers`."""

    title: str
    headers: list[str]
    rows: list[tuple[str, list[np.ndarray]]]


# ---------------------------------------------------------------------------------------------
# Report content.


def describe_file(option: str, path: str | Path) -> dict:
    return {"option": option, "path": str(path), "sha256": file_sha256(path)}


# Files of a training checkpoint folder that hold the evaluated model (not the optimizer or loop state).
CHECKPOINT_MODEL_FILES = ("model.safetensors", "model.json", "config.yaml")


def checkpoint_files(checkpoint: str | Path) -> list[dict]:
    """Describe the checkpoint file, or the model files of a checkpoint folder, with their sha256."""
    checkpoint = Path(checkpoint)
    files = [checkpoint] if checkpoint.is_file() else [checkpoint / name for name in CHECKPOINT_MODEL_FILES]
    return [describe_file("--checkpoint", path) for path in files if path.is_file()]


def alignment_failures(records: list[dict]) -> dict:
    """Return the count and the list of (key, target_age, reason) whose ID similarity is missing."""
    failed = [r for r in records if r.get("id_failure")]
    entries = [{"key": r["key"], **({"target_age": r["target_age"]} if "target_age" in r else {}),
                "reason": r["id_failure"]} for r in failed]
    return {"count": len(entries), "samples": entries}


def format_value(name: str, value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{FIELD_DIGITS.get(name, 4)}f}"


def format_stats(name: str, stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{format_value(name, stats['mean'])} ± {format_value(name, stats['std'])}"


def summary_tables(report: dict) -> list[Table]:
    """Build the overall and per-target-age tables of the summary."""
    fields = report["fields"]
    summary = report["summary"]
    overall = Table(
        "Summary (mean ± population std over samples with a value)",
        ["metric", "mean", "std", "samples", "missing"],
        [[name, format_value(name, s["mean"]), format_value(name, s["std"]), str(s["count"]), str(s["missing"])]
         for name, s in summary["overall"].items()],
    )
    tables = [overall]
    if "per_target_age" in summary:
        tables.append(Table(
            "Per target age (mean ± std)",
            ["target age"] + fields,
            [[age] + [format_stats(name, stats[name]) for name in fields]
             for age, stats in summary["per_target_age"].items()],
        ))
    return tables


def listed_rows(rows: list[list[str]]) -> tuple[list[list[str]], str]:
    if len(rows) <= MAX_LISTED_ROWS:
        return rows, ""
    return rows[:MAX_LISTED_ROWS], f"First {MAX_LISTED_ROWS} of {len(rows)} rows. report.json lists all of them."


def detail_tables(report: dict) -> list[Table]:
    """Build the tables of alignment failures, unmatched files and weight files."""
    tables = []
    failures = report.get("alignment_failures")
    if failures is not None:
        with_ages = report.get("target_ages") is not None
        headers = ["key", "target age", "reason"] if with_ages else ["key", "reason"]
        rows = [[f["key"], str(f["target_age"]), f["reason"]] if with_ages else [f["key"], f["reason"]]
                for f in failures["samples"]]
        listed, note = listed_rows(rows)
        tables.append(Table(f"ID similarity: {failures['count']} sample(s) without a face found by MTCNN",
                            headers, listed, note))
    unmatched = report.get("unmatched")
    if unmatched is not None:
        rows = [[name, "generated"] for name in unmatched["only_in_generated"]]
        rows += [[name, "ground truth"] for name in unmatched["only_in_ground_truth"]]
        listed, note = listed_rows(rows)
        tables.append(Table(f"Files without a partner: {len(rows)}", ["file", "found only in"], listed, note))
    tables.append(Table("Weight files", ["option", "path", "sha256"],
                        [[w["option"], w["path"], w["sha256"]] for w in report["weights"]]))
    return tables


def report_title(report: dict) -> str:
    if report["mode"] == "checkpoint":
        return f"SAM evaluation of {report['checkpoint_name']}"
    return f"Evaluation of {report['generated_dir']} against {report['ground_truth_dir']}"


def header_lines(report: dict) -> list[str]:
    lines = [f"{key}: {report[key]}" for key in HEADER_KEYS if report.get(key) is not None]
    lines += [f"metric {metric} {reason}" for metric, reason in report["metrics"]["skipped"].items()]
    lines += report.get("notes", [])
    return lines


# ---------------------------------------------------------------------------------------------
# Rendering.


def _markdown_text(text: str) -> str:
    """Escape HTML markup, which many Markdown renderers pass through, in one line of report text."""
    return html.escape(str(text), quote=False).replace("\n", " ")


def _markdown_cell(text: str) -> str:
    return _markdown_text(text).replace("|", "\\|")


def render_markdown(report: dict, tables: list[Table]) -> str:
    out = [f"# {report_title(report)}", ""]
    out += [f"- {_markdown_text(line)}" for line in header_lines(report)]
    for table in tables:
        out += ["", f"## {table.title}", ""]
        if not table.rows:
            out.append("(none)")
            continue
        out.append("| " + " | ".join(map(_markdown_cell, table.headers)) + " |")
        out.append("|" + "---|" * len(table.headers))
        out += ["| " + " | ".join(map(_markdown_cell, row)) + " |" for row in table.rows]
        if table.note:
            out += ["", table.note]
    return "\n".join(out) + "\n"


def png_data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _html_table(table: Table) -> str:
    parts = [f"<h2>{html.escape(table.title)}</h2>"]
    if not table.rows:
        return parts[0] + "<p>(none)</p>"
    parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.headers) + "</tr>")
    for row in table.rows:
        parts.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>")
    parts.append("</table>")
    if table.note:
        parts.append(f"<p>{html.escape(table.note)}</p>")
    return "\n".join(parts)


def _html_grid(grid: Grid) -> str:
    parts = [f"<h2>{html.escape(grid.title)}</h2>", "<table class='grid'><tr><th></th>"]
    parts.append("".join(f"<th>{html.escape(h)}</th>" for h in grid.headers) + "</tr>")
    for label, images in grid.rows:
        cells = "".join(f"<td><img src='{png_data_uri(img)}' alt='{html.escape(label)}'></td>" for img in images)
        parts.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def render_html(report: dict, tables: list[Table], grid: Grid | None) -> str:
    style = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;margin-bottom:1em}"
             " td,th{border:1px solid #ccc;padding:4px 8px;text-align:left} .grid td{padding:0}")
    body = [f"<h1>{html.escape(report_title(report))}</h1>", "<ul>"]
    body += [f"<li>{html.escape(line)}</li>" for line in header_lines(report)]
    body.append("</ul>")
    body += [_html_table(table) for table in tables[:-1]]
    if grid is not None and grid.rows:
        body.append(_html_grid(grid))
    body.append(_html_table(tables[-1]))
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(report_title(report))}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------------------------------------
# Writing.


def write_report(folder: str | Path, report: dict, grid: Grid | None) -> Path:
    """Write report.json, report.md and report.html into `folder`; return the folder."""
    folder = Path(folder)
    tables = summary_tables(report) + detail_tables(report)
    texts = {
        "report.json": json.dumps(report, indent=1) + "\n",
        "report.md": render_markdown(report, tables),
        "report.html": render_html(report, tables, grid),
    }
    # Render all three first and publish them together, so a crash leaves no mix of two runs
    # except in the moment between three renames. NOTE: not one atomic step, because the folder
    # may hold the user's own files (folder mode's --output), which a folder swap would remove.
    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for name, text in texts.items():
        staging = folder / f".{name}.tmp"
        with open(staging, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        staged.append((staging, folder / name))
    for staging, final in staged:
        os.replace(staging, final)
    return folder
