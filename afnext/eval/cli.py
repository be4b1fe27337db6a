"""`afnext eval`: run a benchmark (resumable, shardable), merge shard outputs, score any system's predictions.

    afnext eval run mmau --model DIR --data DIR --out DIR [--limit N] [--shard i/n] [--batch-size B]
    afnext eval merge OUT_DIR mmau
    afnext eval score mmau --predictions FILE --data DIR [--out DIR]

Bad input (unknown benchmark, malformed predictions file, missing data or audio) is one `error:` line
on stderr and exit status 2, like the rest of the CLI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

eval_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                       help="Evaluate on benchmarks and compare with the paper's numbers.")

BenchArg = Annotated[str, typer.Argument(help="Benchmark name (mmau, synthetic)", show_default=False)]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _bench(name: str):
    from afnext.eval.benchmarks import get_benchmark

    try:
        return get_benchmark(name)
    except KeyError as e:
        _fail(e.args[0])


def _summary(report: dict, out: Path | None) -> None:
    for metric, entry in report.get("headline", {}).items():
        v = entry.get("value")
        shown = f"{100 * v:.2f}%" if isinstance(v, float) and ("accuracy" in metric or "wer" in metric) else v
        typer.echo(f"{report['benchmark']} {metric}: {shown} (n={entry.get('n')})")
    if report.get("missing"):
        typer.echo(f"{len(report['missing'])} item(s) had no prediction and were scored wrong")
    if out is not None:
        typer.echo(f"report: {out / 'report.md'}")


@eval_app.command("run")
def run_cmd(
    benchmark: BenchArg,
    model: Annotated[Path, typer.Option("--model", "-m", help="Local checkpoint directory")],
    data: Annotated[Path, typer.Option("--data", help="Benchmark data directory")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (predictions, reports)")],
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N items")] = None,
    shard: Annotated[str, typer.Option("--shard", help="i/n: run shard i of n")] = "0/1",
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 512,
    device: Annotated[Optional[str], typer.Option("--device")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype")] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option("--repetition-penalty")] = None,
) -> None:
    """Generate predictions (resuming a previous run in OUT) and, unsharded, write the report."""
    from afnext.eval.runner import PredictionsError, parse_shard, run_benchmark

    bench = _bench(benchmark)
    try:
        sh = parse_shard(shard)
    except ValueError as e:
        _fail(str(e))
    if limit is not None and limit < 1:
        _fail("--limit must be >= 1")
    if batch_size < 1:
        _fail("--batch-size must be >= 1")

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    try:
        result = run_benchmark(bench, model, data, out, limit=limit, shard=sh, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, device=device, dtype=dtype,
                               repetition_penalty=repetition_penalty, progress=progress)
    except (FileNotFoundError, PredictionsError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"{result['predictions']}: {result['generated']} generated, {result['skipped']} already done")
    if result["report"] is not None:
        _summary(result["report"], out)
    else:
        typer.echo(f"shard {shard} done; when all shards are: afnext eval merge {out} {benchmark}")


@eval_app.command("merge")
def merge_cmd(
    out_dir: Annotated[Path, typer.Argument(help="The --out directory the shards wrote to", show_default=False)],
    benchmark: BenchArg,
    data: Annotated[Optional[Path], typer.Option("--data", help="Data directory [default: the runs' own]")] = None,
) -> None:
    """Merge shard predictions, report missing ids, score and write the report."""
    from afnext.eval.runner import PredictionsError, merge_and_score

    bench = _bench(benchmark)
    if not out_dir.is_dir():
        _fail(f"{out_dir}: not a directory")
    try:
        merged, report = merge_and_score(out_dir, bench, data)
    except (FileNotFoundError, PredictionsError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"merged {len(merged.predictions)} prediction(s) from {len(merged.files)} file(s)")
    if merged.missing:
        typer.echo(f"missing {len(merged.missing)} id(s): {', '.join(merged.missing[:5])}"
                   + (" ..." if len(merged.missing) > 5 else ""))
    _summary(report, out_dir)


@eval_app.command("score")
def score_cmd(
    benchmark: BenchArg,
    predictions: Annotated[Path, typer.Option("--predictions", help='JSONL, one {"id", "prediction"} per line')],
    data: Annotated[Path, typer.Option("--data", help="Benchmark data directory")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write report.json/.md/.png here")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Score only the first N items")] = None,
) -> None:
    """Score an existing predictions file from any system."""
    from afnext.eval.runner import PredictionsError, finalize, read_predictions

    bench = _bench(benchmark)
    if not predictions.is_file():
        _fail(f"{predictions}: no such file")
    try:
        preds = {k: v["prediction"] for k, v in read_predictions(predictions, tolerate_partial=False).items()}
        items = bench.load(data, limit)
    except (FileNotFoundError, PredictionsError, ValueError) as e:
        _fail(str(e))
    config = {"benchmark": bench.name, "model": None, "predictions": str(predictions), "data_dir": str(data),
              "limit": limit}
    if out is not None:
        report = finalize(bench, items, preds, out, config)
    else:
        report = bench.score(items, {k: v for k, v in preds.items() if k in {it.id for it in items}})
    _summary(report, out)
    if out is None:
        typer.echo(json.dumps(report["headline"]))


def register(app: typer.Typer) -> None:
    """Add the `eval` command group to the top-level CLI."""
    app.add_typer(eval_app, name="eval")
