"""Data commands of the `afnext` CLI: `synth`, `data check`, `data stats`.

    afnext synth data/nano --preset nano --seed 0 [--workers 2] [--families sound_class,music_key]
    afnext data check data/nano/train.jsonl [--json] [--max-duration 600]
    afnext data stats data/nano/train.jsonl [--budget 8192] [--processor DIR] [--json]

`register(app)` adds `synth` and the `data` group to a Typer app (the main `afnext` app calls it).
Conventions as in `afnext.cli`: results go to stdout (`--json` prints only JSON there), progress and
errors to stderr; a user error is one `error: ...` line and exit status 2. `data check` exits 1 when it
finds problems and 0 when the manifest is clean.

Token lengths (`data stats`). A sample's length is what `afnext.data.tokenize.encode_sample` builds:
the conversation rendered with the processor's chat template (its default system turn included), each
placeholder one `<sound>` token, plus, per audio, `num_audio_tokens(samples)` audio tokens and the
`<|sound_bos|>`/`<|sound_eos|>` pair that replace the placeholder. Audio token counts come from the
stated durations (exact, because the token math depends only on the sample count) and from the file
header when a row states none; no audio is decoded, so stats over hours of audio take seconds. The
tokenizer is `--processor DIR`, by default the `tokenizer/` directory next to the manifest (what
`afnext synth` writes); without one, text tokens are estimated as UTF-8 bytes / 4 and marked so.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

err = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

BYTES_PER_TOKEN_ESTIMATE = 4  # UTF-8 bytes per BPE token when no tokenizer is available (rough)
DEFAULT_BUDGET = 8192  # tokens per packed row (the pretraining stages' context)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# ----------------------------------------------------------------------------- synth


def synth(
    out_dir: Annotated[Path, typer.Argument(help="Output directory (created; rerunning overwrites)", show_default=False)],
    preset: Annotated[str, typer.Option("--preset", help="micro | nano | full")] = "nano",
    seed: Annotated[int, typer.Option("--seed", help="Corpus seed: same seed, same bytes")] = 0,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Processes [default: CPU count]")] = None,
    families: Annotated[Optional[str], typer.Option("--families", help="Comma-separated family names [default: all]")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Generate the synthetic audio-skills corpus: FLAC audio, AF3 manifests, MMAU-style eval, tokenizer."""
    from afnext.data.synth import synthesize

    names = [f.strip() for f in families.split(",") if f.strip()] if families else None
    if workers is not None and workers < 1:
        _fail(f"--workers must be at least 1, got {workers}")
    try:
        report = synthesize(out_dir, preset=preset, seed=seed, workers=workers, families=names,
                            progress=progress and not as_json)
    except (ValueError, OSError) as e:
        _fail(str(e))
        return
    if as_json:
        print(json.dumps(report.to_dict(), indent=1))
        return
    table = Table("family", "train", "eval", title=f"{out_dir} (preset {report.preset}, seed {report.seed})",
                  title_justify="left")
    for name in report.families:
        table.add_row(name, str(report.counts["train"].get(name, 0)), str(report.counts["eval"].get(name, 0)))
    table.add_row("[bold]total", f"[bold]{report.total('train')}", f"[bold]{report.total('eval')}")
    out.print(table)
    longs = [c["duration_s"] for c in report.long_clips]
    out.print(f"audio {report.audio_hours:.2f} h; {len(longs)} long clips "
              f"({min(longs, default=0) / 60:.1f}-{max(longs, default=0) / 60:.1f} min); "
              f"{report.mc_eval_items} MC eval items; {report.disk_bytes / 1e6:.0f} MB on disk; "
              f"tokenizer {report.tokenizer_vocab_size} entries; {report.wall_time_s:.1f} s")


# ----------------------------------------------------------------------------- data check


def _check_readable(path: Path) -> None:
    if not path.exists():
        _fail(f"{path}: no such file")
    if not path.is_file():
        _fail(f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        _fail(f"{path}: cannot read: {e.strerror or e}")


def check(
    manifest: Annotated[Path, typer.Argument(help="AF3 manifest (JSONL or JSON list)", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON")] = False,
    max_duration: Annotated[Optional[float], typer.Option("--max-duration", help="Flag audio longer than this many seconds")] = None,
    audio_root: Annotated[Optional[Path], typer.Option("--audio-root", help="Resolve relative sound paths here [default: the manifest's directory]")] = None,
    header_only: Annotated[bool, typer.Option("--header-only", help="Read audio lengths from headers instead of decoding")] = False,
    workers: Annotated[int, typer.Option("--workers", help="Threads probing audio")] = 4,
    max_problems: Annotated[int, typer.Option("--max-problems", help="Problems listed in the table")] = 50,
) -> None:
    """Check every row of a manifest (fields, turns, placeholders, audio decodes, durations, ids).

    Exit status: 0 clean, 1 problems found, 2 the file cannot be read.
    """
    from afnext.data.manifest import check_manifest

    _check_readable(manifest)
    if max_duration is not None and not max_duration > 0:
        _fail(f"--max-duration must be positive, got {max_duration}")
    try:
        report = check_manifest(manifest, audio_root=audio_root, probe_audio="header" if header_only else True,
                                max_duration_s=max_duration, workers=max(1, workers))
    except OSError as e:
        _fail(f"{manifest}: {e}")
        return
    if as_json:
        print(json.dumps(report.to_dict(), indent=1, ensure_ascii=False))
    else:
        out.print(report.render(max_problems=max_problems), end="", markup=False)
    raise typer.Exit(0 if report.ok else 1)


# ----------------------------------------------------------------------------- data stats


def load_processor(path: Path):
    """A Processor from a checkpoint or tokenizer directory (config.json optional)."""
    from afnext.processor import Processor
    from afnext.tokenizer import TextTokenizer

    if (path / "config.json").is_file():
        return Processor.from_pretrained(path)
    template = path / "chat_template.jinja"
    return Processor(TextTokenizer.from_dir(path),
                     chat_template=template.read_text(encoding="utf-8") if template.is_file() else None)


def sample_lengths(records, processor=None) -> list[dict]:
    """Per record: {"id", "family", "seconds" (per audio), "text_tokens", "audio_tokens", "tokens"} or, when
    the placeholders cannot be bound, {"id", "family", "error"}. See the module docstring for the math."""
    from afnext.audio import SAMPLE_RATE, num_audio_tokens
    from afnext.data.manifest import PlaceholderError, conversations_to_sound_tokens, probe_sound
    from afnext.data.tokenize import ROLES
    from afnext.processor import render_chat_template

    rows, texts = [], []
    for rec in records:
        fam = str(rec.extra.get("family", "unknown"))
        try:
            turns, _ = conversations_to_sound_tokens(rec.conversations, len(rec.sounds))
        except PlaceholderError as e:
            rows.append({"id": rec.id, "family": fam, "error": f"placeholders: {e}"})
            continue
        seconds = rec.sound_durations
        if seconds is None:  # not stated per sound: read the headers
            seconds = [probe_sound(s, "header").duration_s for s in rec.sounds]
        if any(s is None for s in seconds):
            rows.append({"id": rec.id, "family": fam, "error": "unknown audio duration"})
            continue
        messages = [{"role": ROLES.get(t["from"], t["from"]), "content": t["value"]} for t in turns]
        if processor is not None:
            texts.append(render_chat_template(processor.chat_template, messages, add_generation_prompt=False,
                                              **processor.tokenizer.special_tokens_map))
        else:
            texts.append("\n".join(m["content"] for m in messages))
        rows.append({"id": rec.id, "family": fam, "seconds": [float(s) for s in seconds]})
    if processor is not None:
        max_windows = processor.max_windows
        wrap = (processor.audio_bos_token_id is not None) + (processor.audio_eos_token_id is not None)
        text_counts = [len(ids) for ids in processor.tokenizer.encode_batch(texts)] if texts else []
    else:
        from afnext.audio import MAX_WINDOWS

        max_windows, wrap = MAX_WINDOWS, 2
        text_counts = [math.ceil(len(t.encode("utf-8")) / BYTES_PER_TOKEN_ESTIMATE) + len(re.findall("<sound", t))
                       for t in texts]
    counts = iter(text_counts)
    for row in rows:
        if "error" in row:
            continue
        audio = sum(num_audio_tokens(round(s * SAMPLE_RATE), max_windows) + wrap - 1 for s in row["seconds"])
        row["text_tokens"] = next(counts)
        row["audio_tokens"] = audio
        row["tokens"] = row["text_tokens"] + audio
    return rows


def manifest_stats(path: Path, budget: int = DEFAULT_BUDGET, processor_dir: Path | None = None,
                   audio_root: Path | None = None) -> dict:
    """Counts, durations, token lengths and best-fit packing efficiency of one manifest."""
    from afnext.data.manifest import iter_manifest
    from afnext.data.packing import packing_stats, summarize_durations

    if processor_dir is None:
        guess = path.absolute().parent / "tokenizer"
        processor_dir = guess if (guess / "tokenizer.json").is_file() else None
    processor = load_processor(processor_dir) if processor_dir is not None else None
    records, bad_rows = [], 0
    for rec, problem in iter_manifest(path, audio_root=audio_root, strict=False):
        if problem is not None:
            bad_rows += 1
        else:
            records.append(rec)
    rows = sample_lengths(records, processor)
    ok = [r for r in rows if "error" not in r]
    lengths = [r["tokens"] for r in ok]
    fits = [n for n in lengths if n <= budget]
    pack = packing_stats(fits, budget)
    fam: dict[str, dict] = defaultdict(lambda: {"samples": 0, "tokens": 0, "max_tokens": 0, "audio_s": 0.0,
                                                "over_budget": 0})
    for r in ok:
        f = fam[r["family"]]
        f["samples"] += 1
        f["tokens"] += r["tokens"]
        f["max_tokens"] = max(f["max_tokens"], r["tokens"])
        f["audio_s"] += sum(r["seconds"])
        f["over_budget"] += r["tokens"] > budget
    dur = summarize_durations([sum(r["seconds"]) for r in ok])
    return {
        "manifest": str(path),
        "tokenizer": str(processor_dir) if processor_dir is not None else None,
        "text_tokens": "exact" if processor is not None else f"estimated (UTF-8 bytes / {BYTES_PER_TOKEN_ESTIMATE})",
        "records": len(records), "unparseable_rows": bad_rows,
        "skipped": [{"id": r["id"], "error": r["error"]} for r in rows if "error" in r],
        "durations_s": {"count": dur.count, "total": round(dur.total_s, 3), "mean": round(dur.mean_s, 3),
                        "p50": round(dur.p50_s, 3), "p95": round(dur.p95_s, 3), "max": round(dur.max_s, 3)},
        "tokens": {"total": int(sum(lengths)), "mean": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
                   "max": max(lengths, default=0),
                   "mean_text": round(sum(r["text_tokens"] for r in ok) / len(ok), 1) if ok else 0.0},
        "packing": {"budget": budget, "samples": pack.n_samples, "rows": pack.n_bins,
                    "efficiency": round(pack.efficiency, 4), "over_budget": len(lengths) - len(fits)},
        "families": {k: {**v, "mean_tokens": round(v["tokens"] / v["samples"], 1), "audio_s": round(v["audio_s"], 2)}
                     for k, v in sorted(fam.items())},
    }


def stats(
    manifest: Annotated[Path, typer.Argument(help="AF3 manifest (JSONL or JSON list)", show_default=False)],
    budget: Annotated[int, typer.Option("--budget", help="Tokens per packed row")] = DEFAULT_BUDGET,
    processor: Annotated[Optional[Path], typer.Option("--processor", help="Checkpoint or tokenizer directory [default: tokenizer/ next to the manifest]")] = None,
    audio_root: Annotated[Optional[Path], typer.Option("--audio-root", help="Resolve relative sound paths here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON")] = False,
) -> None:
    """Token lengths and packing efficiency (best-fit into --budget rows), durations, per-family counts."""
    _check_readable(manifest)
    if budget < 1:
        _fail(f"--budget must be positive, got {budget}")
    if processor is not None and not processor.is_dir():
        _fail(f"--processor {processor}: not a directory")
    try:
        s = manifest_stats(manifest, budget, processor, audio_root)
    except (ValueError, OSError) as e:
        _fail(str(e))
        return
    if as_json:
        print(json.dumps(s, indent=1))
        return
    d, t, p = s["durations_s"], s["tokens"], s["packing"]
    out.print(f"{manifest}: {s['records']} records ({s['unparseable_rows']} unparseable rows, "
              f"{len(s['skipped'])} skipped); text tokens {s['text_tokens']}"
              + (f" with {s['tokenizer']}" if s["tokenizer"] else ""))
    out.print(f"audio: {d['total'] / 3600:.2f} h; per sample mean {d['mean']:.1f} s, p50 {d['p50']:.1f} s, "
              f"p95 {d['p95']:.1f} s, max {d['max']:.1f} s")
    out.print(f"tokens: mean {t['mean']:.0f} (text {t['mean_text']:.0f}), max {t['max']}, total {t['total']:,}")
    out.print(f"packing into {p['budget']}-token rows: {p['samples']} samples -> {p['rows']} rows, efficiency "
              f"{100 * p['efficiency']:.1f} %; {p['over_budget']} samples longer than the budget left out")
    table = Table("samples", "mean tokens", "max tokens", "audio h", "over budget")
    table.columns.insert(0, Column("family", no_wrap=True))
    for name, f in s["families"].items():
        table.add_row(name, str(f["samples"]), f"{f['mean_tokens']:.0f}", str(f["max_tokens"]),
                      f"{f['audio_s'] / 3600:.2f}", str(f["over_budget"]))
    out.print(table)


# ----------------------------------------------------------------------------- registration


def register(app: typer.Typer) -> None:
    """Add `synth` and the `data` group (`check`, `stats`) to ``app``."""
    app.command("synth")(synth)
    data = typer.Typer(no_args_is_help=True, help="Inspect AF3 manifests: row checks, token and packing statistics.")
    data.command("check")(check)
    data.command("stats")(stats)
    app.add_typer(data, name="data")
