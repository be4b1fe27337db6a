"""`afnext eval`: run a benchmark (resumable, shardable), merge shard outputs, score any system's predictions.

    afnext eval run mmau --model DIR --data DIR --out DIR [--limit N] [--shard i/n] [--batch-size B]
    afnext eval run mmau-pro --variant think --data DIR --out DIR       # the variant's checkpoint and settings
    afnext eval merge OUT_DIR mmau
    afnext eval score mmau --predictions FILE --data DIR [--out DIR]
    afnext eval synthetic --model DIR --data SYNTH_DIR [--limit-per-family N] [--json OUT] [--predictions OUT] [--nll] [--nll-train N]

Generation in `eval run` is greedy with 512 new tokens and no repetition penalty unless told otherwise.
`--variant instruct|think|captioner` picks the variant's released checkpoint when `--model` is not given
and its model-card generation settings (max new tokens, repetition penalty; `afnext.variants`); explicit
flags (`--max-new-tokens`, `--repetition-penalty`, `--sample`, `--temperature`, `--top-p`, `--top-k`,
`--seed`) override both. The effective settings are recorded in run_config.json and the report.

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

BenchArg = Annotated[str, typer.Argument(help="Benchmark name (e.g. mmau, mmau-pro, longaudiobench, voicebench-openbookqa, "
                                               "synthetic)", show_default=False)]


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


def generation_settings(variant: str | None, *, max_new_tokens: int | None = None,
                        repetition_penalty: float | None = None, sample: bool = False, temperature: float | None = None,
                        top_p: float | None = None, top_k: int | None = None, seed: int | None = None) -> dict:
    """Generation overrides for a run: explicit flags, else the variant's model-card settings, else the
    eval defaults (greedy, DEFAULT_MAX_NEW_TOKENS, no repetition penalty)."""
    from afnext.eval.runner import DEFAULT_MAX_NEW_TOKENS
    from afnext.variants import get_variant

    v = get_variant(variant) if variant else None
    return {"max_new_tokens": max_new_tokens or (v.max_new_tokens if v else None) or DEFAULT_MAX_NEW_TOKENS,
            "repetition_penalty": repetition_penalty if repetition_penalty is not None
            else (v.repetition_penalty if v else None),
            "do_sample": sample, "temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed}


@eval_app.command("run")
def run_cmd(
    benchmark: BenchArg,
    data: Annotated[Path, typer.Option("--data", help="Benchmark data directory")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (predictions, reports)")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Checkpoint directory or hub id "
                                                 "[default: the --variant's checkpoint]")] = None,
    variant: Annotated[Optional[str], typer.Option("--variant", help="instruct | think | captioner: the variant's "
                                                   "checkpoint and model-card generation settings")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N items")] = None,
    shard: Annotated[str, typer.Option("--shard", help="i/n: run shard i of n")] = "0/1",
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="[default: the variant's, else 512]")] = None,
    device: Annotated[Optional[str], typer.Option("--device")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype")] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option("--repetition-penalty", help="[default: the variant's, else 1.0]")] = None,
    sample: Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding")] = False,
    temperature: Annotated[Optional[float], typer.Option("--temperature")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Sampling seed")] = None,
) -> None:
    """Generate predictions (resuming a previous run in OUT) and, unsharded, write the report."""
    from afnext.eval.runner import PredictionsError, parse_shard, run_benchmark
    from afnext.variants import get_variant

    bench = _bench(benchmark)
    try:
        sh = parse_shard(shard)
        if variant is not None:
            get_variant(variant)
    except ValueError as e:
        _fail(str(e))
    if model is None and variant is None:
        _fail("give --model (a checkpoint) or --variant (instruct, think, captioner)")
    if limit is not None and limit < 1:
        _fail("--limit must be >= 1")
    if batch_size < 1:
        _fail("--batch-size must be >= 1")
    if max_new_tokens is not None and max_new_tokens < 1:
        _fail("--max-new-tokens must be >= 1")
    if not sample and any(x is not None for x in (temperature, top_p, top_k)):
        _fail("--temperature/--top-p/--top-k only apply with --sample (decoding is greedy otherwise)")
    gen = generation_settings(variant, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                              sample=sample, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    model_ref = model or get_variant(variant).hub_id

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    try:
        result = run_benchmark(bench, model_ref, data, out, limit=limit, shard=sh, batch_size=batch_size,
                               device=device, dtype=dtype, variant=variant, progress=progress, **gen)
    except (FileNotFoundError, PredictionsError, ValueError, RuntimeError, ImportError) as e:
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
    except (FileNotFoundError, PredictionsError, ValueError, RuntimeError, ImportError) as e:
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
    except (FileNotFoundError, PredictionsError, ValueError, ImportError) as e:
        _fail(str(e))
    config = {"benchmark": bench.name, "model": None, "predictions": str(predictions), "data_dir": str(data),
              "limit": limit}
    try:  # judged benchmarks need a judge (RuntimeError without one), MMAU-Pro may need an embedder package
        if out is not None:
            report = finalize(bench, items, preds, out, config)
        else:
            report = bench.score(items, {k: v for k, v in preds.items() if k in {it.id for it in items}})
    except (RuntimeError, ImportError, ValueError) as e:
        _fail(str(e))
    _summary(report, out)
    if out is None:
        typer.echo(json.dumps(report["headline"]))


def _family_line(family: str, entry: dict) -> str:
    parts = [f"  {family:<24} n={entry.get('n')}"]
    if "accuracy" in entry:
        parts.append(f"accuracy {entry['accuracy']:.1%} (chance {entry['chance']:.1%})")
    if "wer" in entry:
        parts.append(f"WER {entry['wer']:.1%} (chance {entry['chance_wer']:.1%})")
    if "median_onset_error_s" in entry:
        parts.append(f"median onset error {entry['median_onset_error_s']:.2f} s "
                     f"(chance {entry['chance_median_onset_error_s']:.2f} s, unparsable {entry['unparsable']})")
    if "exact_match" in entry:
        parts.append(f"exact match {entry['exact_match']:.1%}")
    if "answer_nll" in entry:
        train = f" (training items {entry['answer_nll_train']:.3f})" if "answer_nll_train" in entry else ""
        parts.append(f"answer NLL {entry['answer_nll']:.3f}{train}")
    return "  ".join(parts)


@eval_app.command("synthetic")
def synthetic_cmd(
    model: Annotated[Path, typer.Option("--model", "-m", help="Local checkpoint directory")],
    data: Annotated[Path, typer.Option("--data", help="Synth output directory (its eval.jsonl) or a manifest")],
    limit_per_family: Annotated[Optional[int], typer.Option("--limit-per-family", help="At most N items per family")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full report as JSON here")] = None,
    predictions_out: Annotated[Optional[Path], typer.Option("--predictions", help="Write one JSONL line per item")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 48,
    device: Annotated[Optional[str], typer.Option("--device", help="[default: cuda if available, else cpu]")] = None,
    nll: Annotated[bool, typer.Option("--nll", help="Also each family's teacher-forced answer loss (nats/token)")] = False,
    nll_train: Annotated[Optional[int], typer.Option(
        "--nll-train", help="Also the answer loss on the first N training items per family (train.jsonl beside "
                            "eval.jsonl): far below the held-out loss means memorised clips")] = None,
    onset_mbr: Annotated[bool, typer.Option("--onset-mbr", help="Also the onset figure with each answer read as the "
                                            "median of the model's distribution over timestamps (MBR)")] = False,
) -> None:
    """Score a checkpoint on the synthetic corpus's held-out items: headline figures beside chance, per family."""
    from afnext.eval.benchmarks.synthetic import resolve_manifest
    from afnext.eval.synthetic import evaluate_synthetic, format_headline

    if limit_per_family is not None and limit_per_family < 1:
        _fail("--limit-per-family must be >= 1")
    if batch_size < 1 or max_new_tokens < 1:
        _fail("--batch-size and --max-new-tokens must be >= 1")
    if not model.is_dir():
        _fail(f"{model}: not a checkpoint directory")
    if nll_train is not None and nll_train < 1:
        _fail("--nll-train must be >= 1")
    try:
        manifest = resolve_manifest(data)
    except FileNotFoundError as e:
        _fail(str(e))
    train_manifest = manifest.parent / "train.jsonl"
    if nll_train is not None and not train_manifest.is_file():
        _fail(f"--nll-train: {train_manifest} not found")
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    for path in (json_out, predictions_out):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    try:
        report = evaluate_synthetic(model, manifest, limit_per_family=limit_per_family, batch_size=batch_size,
                                    max_new_tokens=max_new_tokens, device=device, predictions_out=predictions_out,
                                    nll=nll, nll_train=(train_manifest, nll_train) if nll_train is not None else None,
                                    onset_mbr=onset_mbr)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"{report['items']} item(s) from {manifest} in {report['seconds']:.1f} s")
    headline = format_headline(report)
    if headline:
        typer.echo(headline)
    typer.echo("per family:")
    for family, entry in report["families"].items():
        typer.echo(_family_line(family, entry))
    if json_out is not None:
        from afnext.eval.report import write_json

        write_json(report, json_out)
        typer.echo(f"report: {json_out}")
    if predictions_out is not None:
        typer.echo(f"predictions: {predictions_out}")


def register(app: typer.Typer) -> None:
    """Add the `eval` command group to the top-level CLI."""
    app.add_typer(eval_app, name="eval")
