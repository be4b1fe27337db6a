"""The `afnext` command: ask, transcribe, caption, chat and info.

Every user-facing failure (bad audio, missing model, malformed checkpoint, bad option) prints one
line, `error: ...`, on stderr and exits with status 2; tracebacks are reserved for bugs.
Generated text streams to stdout; progress and status go to stderr, so `--json` output stays clean.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from afnext.variants import DEFAULT_MODEL, TRANSCRIBE_PROMPT, VARIANTS, get_variant

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="AF-Next: ask questions about speech, sounds and music in recordings up to 30 minutes.")
err = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help=f"Hub id or local checkpoint directory [default: the variant's checkpoint, {DEFAULT_MODEL}]")]
VariantOpt = Annotated[str, typer.Option("--variant", help=f"{' | '.join(VARIANTS)}: model-card prompts and generation defaults")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1, mps [default: cuda if available]")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="float32 | bfloat16 | float16 [default: float32 on CPU, bfloat16 on GPU]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print answer, reasoning, evidence, timings and token counts as JSON")]
MaxNewOpt = Annotated[Optional[int], typer.Option("--max-new-tokens", help="Generation length cap [default: the variant's]")]
TempOpt = Annotated[Optional[float], typer.Option("--temperature", help="Sample at this temperature (greedy when omitted)")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k")]
RepOpt = Annotated[Optional[float], typer.Option("--repetition-penalty")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed")]
TruncOpt = Annotated[bool, typer.Option("--truncate", help="Keep the first 30 min (AF3: 10 min) of longer audio instead of failing")]
SystemOpt = Annotated[Optional[str], typer.Option("--system", help="Replace the checkpoint's default system prompt")]
AudioArgs = Annotated[list[Path], typer.Argument(help="Audio files (wav, flac, mp3, ogg, opus, m4a, webm, ...)", show_default=False)]


def _error_line(message: str) -> str:
    # Escaped (a path like "a[/x].wav" is not markup) and never wrapped: one error, one line.
    # The library's duration error names its keyword argument; the CLI's equivalent is --truncate.
    return f"[bold red]error:[/] {escape(str(message).replace('truncate=True', '--truncate'))}"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # Library warnings (e.g. audio truncated) are user information: one line, no source location.
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


warnings.showwarning = _show_warning


def _register_data_commands() -> None:
    from afnext.data.cli import register as register_data
    from afnext.eval.cli import register as register_eval

    register_data(app)
    register_eval(app)


def _fail(message: str) -> None:
    err.print(_error_line(message), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _emit(text: str) -> None:
    """Write generated text verbatim (rich would expand tabs, strip control codes and turn :smile: into emoji)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _user_errors():
    from afnext.audio import AudioError
    from afnext.checkpoint import CheckpointError
    from afnext.config import ConfigError
    from afnext.hub import ModelNotFoundError

    return (AudioError, CheckpointError, ConfigError, ModelNotFoundError, ValueError, OSError)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(model: str | None, variant: str, device: str | None, dtype: str | None, quiet: bool):
    from afnext.inference import Assistant

    v = get_variant(variant)
    ref = model or v.hub_id
    with err.status(f"loading {ref} ...", spinner="dots") if not quiet else _nullctx():
        return Assistant.load(ref, variant=v.name, device=device or _default_device(), dtype=dtype)


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _progress_bar(enabled: bool):
    """A progress callback for audio encoding, shown only for multi-window inputs."""
    if not enabled:
        return None, _nullctx()
    progress = Progress(TextColumn("encoding audio"), BarColumn(), TextColumn("{task.completed}/{task.total} windows"),
                        TimeRemainingColumn(), console=err, transient=True)
    state = {}

    def update(done: int, total: int) -> None:
        if total <= 1:
            return
        if "task" not in state:
            state["task"] = progress.add_task("encode", total=total)
        progress.update(state["task"], completed=done)

    return update, progress


def _run_once(audio: list[Path], prompt: str, *, model, variant, device, dtype, as_json, max_new_tokens,
              temperature, top_p, top_k, repetition_penalty, seed, truncate, system) -> None:
    from afnext.inference import load_clips

    try:
        assistant = _load(model, variant, device, dtype, quiet=False)
        clips = load_clips(audio, max_windows=assistant.processor.max_windows, truncate=truncate)
        gen = dict(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, seed=seed,
                   top_p=top_p, top_k=top_k)
        if temperature is not None:
            gen.update(do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0)
        on_progress, bar = _progress_bar(True)
        streamed = []

        def on_delta(d: str) -> None:
            streamed.append(d)
            if not as_json:
                _emit(d)

        with bar:
            answer = assistant.ask(clips, prompt, system=system, on_delta=on_delta,
                                   on_audio_progress=on_progress, **gen)
    except _user_errors() as exc:
        _fail(str(exc))
        return
    if as_json:
        print(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    out.print()
    if answer.evidence:
        table = Table("start", "end", "evidence", title="timestamps mentioned", title_justify="left")
        for e in answer.evidence:
            flag = " [red](outside the audio)[/]" if e["out_of_range"] else ""
            table.add_row(f"{e['start_s']:.2f}s", f"{e['end_s']:.2f}s", e["text"] + flag)
        err.print(table)


@app.command()
def ask(
    audio: AudioArgs,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The question or instruction")],
    model: ModelOpt = None, variant: VariantOpt = "instruct", device: DeviceOpt = None, dtype: DtypeOpt = None,
    as_json: JsonOpt = False, max_new_tokens: MaxNewOpt = None, temperature: TempOpt = None, top_p: TopPOpt = None,
    top_k: TopKOpt = None, repetition_penalty: RepOpt = None, seed: SeedOpt = None, truncate: TruncOpt = False,
    system: SystemOpt = None,
) -> None:
    """Ask a question about one or more audio files."""
    _run_once(audio, prompt, **locals_without(locals(), "audio", "prompt"))


@app.command()
def transcribe(
    audio: AudioArgs,
    model: ModelOpt = None, variant: VariantOpt = "instruct", device: DeviceOpt = None, dtype: DtypeOpt = None,
    as_json: JsonOpt = False, max_new_tokens: MaxNewOpt = None, truncate: TruncOpt = False,
) -> None:
    """Transcribe speech (the AF prompt "Transcribe the input speech.")."""
    for path in audio:
        _run_once([path], TRANSCRIBE_PROMPT, model=model, variant=variant, device=device, dtype=dtype, as_json=as_json,
                  max_new_tokens=max_new_tokens, temperature=None, top_p=None, top_k=None, repetition_penalty=None,
                  seed=None, truncate=truncate, system=None)


@app.command()
def caption(
    audio: AudioArgs,
    model: ModelOpt = None, variant: VariantOpt = "captioner", device: DeviceOpt = None, dtype: DtypeOpt = None,
    as_json: JsonOpt = False, max_new_tokens: MaxNewOpt = None, truncate: TruncOpt = False,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Override the caption prompt")] = None,
) -> None:
    """Write a detailed, timestamped caption (defaults to the Captioner checkpoint)."""
    try:
        prompt = prompt or get_variant(variant).caption_prompt
    except ValueError as exc:
        _fail(str(exc))
    for path in audio:
        _run_once([path], prompt, model=model, variant=variant, device=device,
                  dtype=dtype, as_json=as_json, max_new_tokens=max_new_tokens, temperature=None, top_p=None,
                  top_k=None, repetition_penalty=None, seed=None, truncate=truncate, system=None)


@app.command()
def chat(
    audio: Annotated[Optional[list[Path]], typer.Argument(help="Audio attached to the first turn")] = None,
    model: ModelOpt = None, variant: VariantOpt = "instruct", device: DeviceOpt = None, dtype: DtypeOpt = None,
    max_new_tokens: MaxNewOpt = None, truncate: TruncOpt = False, system: SystemOpt = None,
) -> None:
    """Interactive multi-turn chat. Commands: /audio PATH (attach to the next turn), /reset, /exit."""
    from afnext.inference import load_clips

    try:
        assistant = _load(model, variant, device, dtype, quiet=False)
        pending = load_clips(audio or [], max_windows=assistant.processor.max_windows, truncate=truncate)
    except _user_errors() as exc:
        _fail(str(exc))
        return
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    clips = []
    err.print("[dim]type a message; /audio PATH attaches audio, /reset clears, /exit quits[/]")
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            err.print()
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            messages, clips, pending = messages[:1] if system else [], [], []
            continue
        if line.startswith("/audio "):
            try:
                pending += load_clips([line[7:].strip()], max_windows=assistant.processor.max_windows, truncate=truncate)
            except _user_errors() as exc:
                err.print(_error_line(exc), highlight=False, soft_wrap=True)
            continue
        content = [{"type": "audio"} for _ in pending] + [{"type": "text", "text": line}]
        turn_clips = clips + pending
        out.print("assistant> ", end="")
        try:
            answer = assistant.respond(messages + [{"role": "user", "content": content}], turn_clips,
                                       on_delta=_emit,
                                       max_new_tokens=max_new_tokens)
        except _user_errors() as exc:
            err.print("\n" + _error_line(exc), highlight=False, soft_wrap=True)
            continue
        out.print()
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer.text}]
        clips, pending = turn_clips, []


@app.command()
def info(model: Annotated[str, typer.Argument(help="Hub id or local checkpoint directory")] = DEFAULT_MODEL,
         as_json: JsonOpt = False) -> None:
    """Describe a checkpoint without loading its weights."""
    from afnext.modelinfo import describe

    try:
        facts = describe(model)
    except _user_errors() as exc:
        _fail(str(exc))
        return
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    table = Table(show_header=False, title=str(model), title_justify="left")
    for k, v in facts.items():
        table.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    out.print(table)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Stage configuration (TOML), e.g. configs/nano/pretrain1.toml")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: section.key=value (repeatable)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run directory's latest checkpoint")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar")] = False,
) -> None:
    """Train one curriculum stage (runs as is, or under torchrun for several processes / nodes)."""
    from afnext.data.loader import SampleError
    from afnext.train.config import TrainConfig, TrainConfigError
    from afnext.train.loop import TrainError, Trainer

    try:
        cfg = TrainConfig.load(config, set_ or [])
        if cfg.run.objective == "encoder":
            from afnext.train.encoder_pretrain import EncoderPretrainer

            if resume:
                raise TrainError("--resume is not supported for run.objective = 'encoder' (a few-minute stage); rerun it")
            final = EncoderPretrainer(cfg, progress=not quiet).fit()
            err.print(f"exported {final}")
            return
        trainer = Trainer(cfg, resume=resume, progress=not quiet)
        final = trainer.fit()
    except (TrainConfigError, TrainError, SampleError) + _user_errors() as exc:
        _fail(str(exc))
        return
    if trainer.rank == 0:
        err.print(f"exported {final}")
        if trainer.loader.summary.skipped:
            err.print(f"[yellow]warning:[/] {escape(trainer.loader.summary.summary())}", soft_wrap=True)
        if trainer.drops.total:
            err.print(f"dropped by stage caps: {trainer.drops.as_dict()}", soft_wrap=True)


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="A checkpoint (RUN/checkpoints/step-000600) or a run directory (its latest)")],
    out: Annotated[Path, typer.Argument(help="New directory for the HF-format checkpoint")],
) -> None:
    """Export a training checkpoint to HF format (LoRA merged), loadable by `afnext ask` and transformers."""
    from afnext.train.export import ExportError, export_checkpoint

    try:
        path = export_checkpoint(source, out)
    except (ExportError,) + _user_errors() as exc:
        _fail(str(exc))
        return
    err.print(f"exported {path}")


@app.command()
def interpolate(
    base: Annotated[Path, typer.Argument(help="The export the weights start from (weight 0)")],
    tuned: Annotated[Path, typer.Argument(help="An export of the same model trained further (weight 1)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New directory for the merged HF-format checkpoint")],
    weight: Annotated[float, typer.Option("--weight", "-w", help="Share of the way from BASE to TUNED")] = 0.5,
) -> None:
    """Interpolate two exports' weights (WiSE-FT): OUT = BASE + WEIGHT x (TUNED - BASE)."""
    from afnext.train.merge import MergeError, interpolate as interpolate_exports

    try:
        path = interpolate_exports(base, tuned, out, weight)
    except (MergeError,) + _user_errors() as exc:
        _fail(str(exc))
        return
    err.print(f"wrote {path} (weight {weight:g} toward {tuned})", soft_wrap=True, highlight=False)


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory (holds metrics.jsonl)")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="PNG path [default: RUN_DIR/curves.png]")] = None,
) -> None:
    """Draw loss and throughput curves of a training run to a PNG."""
    from afnext.train.metrics import plot_run

    try:
        path = plot_run(run_dir, out)
    except _user_errors() as exc:
        _fail(str(exc))
        return
    err.print(f"wrote {path}")


@app.command()
def speedrun(
    out: Annotated[Path, typer.Option("--out", help="Run directory (corpus in OUT/data, stages in OUT/rote|norote)")] = Path("runs/speedrun"),
    rote: Annotated[bool, typer.Option("--rote/--no-rote", help="Rotary time embeddings (--no-rote: the AF3 layout)")] = True,
    ablation: Annotated[bool, typer.Option("--ablation", help="Run with and without RoTE; print both side by side")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars")] = False,
    budget_min: Annotated[float, typer.Option("--budget-min", help="Wall-time budget per run (minutes): on a slower "
                                              "machine stage 0b runs fewer steps to end within it; 0: all its steps")] = 30.0,
    stage0_steps: Annotated[Optional[int], typer.Option("--stage0-steps", help="Stage 0b steps, overriding the config "
                                                        "and the budget (to repeat a run made on another machine)")] = None,
) -> None:
    """Train a nano AF-Next from nothing on synthetic audio (corpus, tokenizer, stage 0, 4 stages, onset
    post-training), then evaluate it."""
    from afnext import speedrun as sr
    from afnext.train.config import TrainConfigError
    from afnext.train.loop import TrainError

    def log(msg: str) -> None:
        print(msg, flush=True)

    if not (math.isfinite(budget_min) and budget_min >= 0):
        _fail(f"--budget-min must be a number of minutes >= 0, got {budget_min}")
        return
    if stage0_steps is not None and stage0_steps < 1:
        _fail(f"--stage0-steps must be >= 1, got {stage0_steps}")
        return
    try:
        results = {}
        for r in ([True, False] if ablation else [rote]):
            # the ablation's second run takes the first's stage 0b and post-training steps, so the two
            # differ only in RoTE
            first = next(iter(results.values()), None)
            results[r] = sr.run(out, rote=r, progress=not quiet, log=log, budget_s=budget_min * 60 or None,
                                stage0_steps=first["stage0_steps"] if first else stage0_steps,
                                post_steps=first["post_steps"] if first else None)
    except (TrainConfigError, TrainError) + _user_errors() as exc:
        _fail(str(exc))
        return
    if ablation:
        log("\nside by side (held-out items):\n" + sr.side_by_side(results[True], results[False]))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def plan(ctx: typer.Context) -> None:
    """Per-GPU activation memory and communication of a sequence-parallel layout (see `afnext plan --help`)."""
    from afnext.parallel.plan import plan_cli

    raise typer.Exit(plan_cli(list(ctx.args)))


def locals_without(d: dict, *names: str) -> dict:
    return {k: v for k, v in d.items() if k not in names}


_register_data_commands()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
