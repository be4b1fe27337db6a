"""Per-step metrics: a JSONL file (one object per step, flushed) and a rich progress bar on rank 0.

`afnext plot RUN_DIR` draws the loss and throughput curves from metrics.jsonl to a PNG.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class MetricsLogger:
    def __init__(self, path: Path, *, enabled: bool, total_steps: int, progress: bool = True, stage: str = ""):
        self.path, self.enabled, self.total = Path(path), enabled, total_steps
        self.stage = stage
        self._progress = None
        self._task = None
        self._show = progress and enabled

    def __enter__(self):
        if self._show:
            self._progress = Progress(
                TextColumn(f"[bold]{self.stage}[/]"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                TextColumn("{task.fields[ahps]} audio-h/s"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, completed=0, loss="-", tps="-", ahps="-")
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False

    def set_total(self, steps: int) -> None:
        self.total = steps
        if self._progress is not None:
            self._progress.update(self._task, total=steps)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._progress is not None:
            self._progress.update(self._task, completed=record["step"], loss=f"{record['loss']:.4f}",
                                  tps=f"{record['tokens_per_s']:.0f}", ahps=f"{record['audio_hours_per_s']:.4f}")

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint (they will be recomputed)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in keep))


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a training run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}: metrics.jsonl is empty")
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, [r["loss"] for r in rows])
    axes[0].set(title="loss", xlabel="step", yscale="log")
    axes[1].plot(steps, [r["tokens_per_s"] for r in rows])
    axes[1].set(title="tokens / s", xlabel="step")
    axes[2].plot(steps, [r["audio_hours_per_s"] * 3600 for r in rows])
    axes[2].set(title="audio seconds / s", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
