"""A batch's report: summary.csv, summary.md and index.html (a contact sheet of every run's views)."""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path

from splat3d.apps.batch.jobs import Job, read_status
from splat3d.io.fileio import atomic_write
from splat3d.run.folder import RunFolder

SUMMARY_FIELDS = ("prompt", "seed", "method", "status", "seconds", "gaussians", "prompt_accuracy", "iou",
                  "colour_error", "speckle", "view_consistency", "attempts", "run", "error")  # fmt: skip
METRICS = SUMMARY_FIELDS[6:11]


def summary_rows(jobs: list[Job], root: Path) -> list[dict]:
    rows = []
    for job in jobs:
        record = read_status(root / job.name) or {}
        metrics = record.get("metrics") or {}
        status = record.get("status", "pending")
        rows.append({
            "prompt": job.prompt, "seed": job.seed, "method": record.get("method") or job.method or "",
            "status": "partial" if status == "running" else status, "seconds": record.get("seconds", ""),
            "gaussians": record.get("gaussians", ""), **{k: metrics.get(k, "") for k in METRICS},
            "attempts": record.get("attempts", 0), "run": job.name, "error": record.get("error") or "",
        })  # fmt: skip
    return rows


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)


def write_summary(jobs: list[Job], root: Path) -> list[dict]:
    """DIR/summary.csv, DIR/summary.md and DIR/index.html (a contact sheet of every run's views)."""
    rows = summary_rows(jobs, root)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(root / "summary.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))

    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "partial", "pending", "interrupted")}
    md = [f"# Batch: {len(rows)} prompts", "", ", ".join(f"{v} {k}" for k, v in counts.items() if v), "",
          "| " + " | ".join(SUMMARY_FIELDS) + " |", "|" + "---|" * len(SUMMARY_FIELDS)]  # fmt: skip
    for r in rows:
        cells = [_fmt(r[k]).replace("|", "\\|") for k in SUMMARY_FIELDS]
        cells[SUMMARY_FIELDS.index("run")] = f"[{r['run']}]({r['run']}/)"
        md.append("| " + " | ".join(cells) + " |")
    atomic_write(root / "summary.md", lambda tmp: Path(tmp).write_text("\n".join(md) + "\n"))

    cards = []
    for r in rows:
        views = RunFolder(root / r["run"]).views_path
        picture = (f'<img src="{html.escape(r["run"])}/{views.name}" alt="views of {html.escape(r["prompt"])}">'
                   if views.is_file() else '<div class="none">no views</div>')  # fmt: skip
        facts = [f"seed {r['seed']}", r["method"], r["status"]]
        if r["seconds"] != "":
            facts.append(f"{float(r['seconds']):.0f} s")
        if r["gaussians"] != "":
            facts.append(f"{int(r['gaussians']):,} Gaussians")
        if r["prompt_accuracy"] != "":
            facts.append(f"accuracy {r['prompt_accuracy']:.2f}, IoU {r['iou']:.2f}")
        error = f'<p class="error">{html.escape(r["error"])}</p>' if r["error"] else ""
        cards.append(
            f'<figure class="{r["status"]}"><a href="{html.escape(r["run"])}/">{picture}</a><figcaption>'
            f"<b>{html.escape(r['prompt'])}</b><br>{html.escape(' · '.join(f for f in facts if f))}{error}"
            "</figcaption></figure>"
        )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>splat3d batch: {len(rows)} prompts</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 1em; }}
figure {{ margin: 0; background: white; border: 1px solid #ddd; border-radius: 6px; padding: .5em; }}
figure.failed {{ border-color: #d33; }} .error {{ color: #b00; font-size: .85em; }}
img {{ width: 100%; image-rendering: pixelated; }} .none {{ height: 120px; background: #eee; }}
figcaption {{ font-size: .9em; margin-top: .4em; }}
</style></head><body>
<h1>splat3d batch: {len(rows)} prompts</h1>
<p>{html.escape(", ".join(f"{v} {k}" for k, v in counts.items() if v))} · <a href="summary.csv">summary.csv</a></p>
<main>
{chr(10).join(cards)}
</main></body></html>
"""
    atomic_write(root / "index.html", lambda tmp: Path(tmp).write_text(page))
    return rows
