"""Report writers: `report.json` (every figure and the exact run configuration), `report.md` (our
headline beside the paper's numbers, then every breakdown), and a per-group bar chart PNG.

The JSON is the record of truth; the Markdown and PNG are views of it. Accuracy-like values are stored
as fractions in the JSON and shown as percentages in the Markdown (the paper reports percentages).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.json")
_PERCENT_KEYS = ("accuracy", "wer", "mc_accuracy", "asr_wer", "exact_match", "chance", "chance_wer")


def paper_numbers(key: str | None) -> dict | None:
    """The paper entry for benchmark `key` ({"name", "metric", "unit", "systems"}), or None."""
    if not key:
        return None
    data = json.loads(PAPER_NUMBERS.read_text(encoding="utf-8"))
    entry = data["benchmarks"].get(key)
    return {**entry, "source": data["source"]} if entry else None


def _atomic_write(path: Path, data: bytes) -> Path:
    # A report is read by people and scripts while long runs go on: never leave a half-written one.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_json(report: dict, path: str | Path) -> Path:
    return _atomic_write(Path(path), (json.dumps(report, indent=2, sort_keys=False, default=str) + "\n").encode())


def _fmt(key: str, value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{100 * value:.2f}" if any(key.endswith(k) or key == k for k in _PERCENT_KEYS) else f"{value:.3f}"
    return str(value)


def render_markdown(report: dict) -> str:
    cfg = report.get("config", {})
    lines = [f"# {report.get('benchmark', 'benchmark')} evaluation", ""]
    if cfg:
        lines += [f"- model: `{cfg.get('model')}`", f"- data: `{cfg.get('data_dir')}`",
                  f"- limit: {cfg.get('limit')}", f"- afnext: {cfg.get('afnext_version')}",
                  f"- generation: `{json.dumps(cfg.get('generation', {}), sort_keys=True)}`", ""]
    lines += [f"Items scored: {report.get('n')}; without a prediction (scored wrong): {len(report.get('missing', []))}", ""]
    paper = report.get("paper")
    systems = list(paper["systems"]) if paper else []
    lines += ["## Headline", "", "| metric | ours | " + " | ".join(f"paper: {s}" for s in systems) + (" |" if systems else ""),
              "|---|---|" + "---|" * len(systems)]
    for metric, entry in report.get("headline", {}).items():
        ours = _fmt(metric, entry.get("value"))
        extra = f" (chance {_fmt(metric, entry['chance'])})" if "chance" in entry else ""
        row = f"| {metric} | {ours}{extra} |"
        if paper:
            same = metric == paper["metric"]
            row += "".join(f" {v:.2f} |" if same else " — |" for v in paper["systems"].values())
        lines.append(row)
    if paper:
        lines += ["", f"Paper numbers ({paper['unit'] or 'score'}): {paper['source']}."]
    for axis, groups in report.get("breakdowns", {}).items():
        keys = sorted({k for g in groups.values() for k in g})
        keys = ["n"] + [k for k in keys if k != "n"]
        lines += ["", f"## By {axis}", "", f"| {axis} | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, g in groups.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(k, g.get(k, "")) if k in g else "" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(report: dict, path: str | Path) -> Path:
    return _atomic_write(Path(path), render_markdown(report).encode())


def write_bar_chart(report: dict, path: str | Path, axis: str | None = None, metric: str = "accuracy") -> Path | None:
    """A bar chart of `metric` per group of breakdown `axis` (default: "category", else the first axis
    whose groups carry `metric`). Returns None, writing nothing, when no breakdown has that metric."""
    breakdowns = report.get("breakdowns", {})
    candidates = [axis] if axis else ["category"] + list(breakdowns)
    chosen = next((a for a in candidates if a in breakdowns and any(metric in g for g in breakdowns[a].values())), None)
    if chosen is None:
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless: evaluation runs on servers without a display
    import matplotlib.pyplot as plt

    groups = {k: g for k, g in breakdowns[chosen].items() if metric in g}
    names, values = list(groups), [100 * g[metric] for g in groups.values()]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(names) + 2), 4))
    ax.bar(range(len(names)), values, color="#4477aa")
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{report.get('benchmark', '')} {metric} by {chosen}")
    for i, v in enumerate(values):
        ax.text(i, v + 1, f"{v:.1f}", ha="center", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_all(report: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    paths = {"json": write_json(report, out / "report.json"), "markdown": write_markdown(report, out / "report.md")}
    chart = write_bar_chart(report, out / "report.png")
    if chart:
        paths["chart"] = chart
    return paths
