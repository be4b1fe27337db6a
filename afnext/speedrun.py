"""The nano speedrun: AF-Next trained from nothing on this machine, then scored on held-out items.

    afnext speedrun                     # or `make speedrun`: corpus, tokenizer, 7 stages, export, eval
    afnext speedrun --no-rote           # the same run in the AF3 layout (no rotary time embedding)
    afnext speedrun --ablation          # both, and the figures side by side
    afnext speedrun --budget-min 0      # every configured step, however long this machine takes

Steps, each timed:
1. corpus: ``afnext.data.synth`` builds the speedrun families (``FAMILIES``) with ``TRAIN_PER_FAMILY``
   training items each (``TRAIN_OVERRIDES`` for the transcription families) and ``EVAL_PER_FAMILY``
   held-out items each, plus a few long clips, and trains the nano
   byte-level BPE tokenizer on the corpus text; then the post-training's dense onset clips
   (``build_dense_clips``, ``<data>/onset_dense``). A corpus already on disk with the same recipe is reused.
2. registry: one dataset per family (``<data>/families/<family>.jsonl``) so the stage configs can weight
   skills, plus ``long`` (the long clips) and ``event_onset_dense_all`` (the dense clips, every event
   asked in turn).
3. training: an explicit stage 0, since no pretrained nano encoder or LLM exists: ``stage0_encoder``
   trains the encoder from random weights with tagging / CTC heads on the corpus labels (the nano
   stand-in for AF-Whisper's pre-training; ``afnext.train.encoder_pretrain`` says why it is needed),
   then ``stage0`` trains encoder, adapter and a random LLM together on the answers; then the paper's four stages
   ``pretrain1`` (adapter only, audio <= 30 s), ``pretrain2`` (encoder + adapter, <= 1 min),
   ``midtrain1`` (everything, <= 10 min) and ``midtrain2`` (everything, <= 30 min, the midtrain1
   mixture at half weight plus long audio), each starting from the previous stage's export; then
   ``POST_STAGE``, post-training on onset answers (the encoder and adapter trained, the LLM through
   LoRA). Everything is fitted to ``BUDGET_S`` (30 min) on the machine at hand: stage 0b's steps are
   planned from stage 0a's speed after reserving the later stages' predicted time (``fit_stage0_steps``)
   and re-planned from stage 0b's own step times as it runs (``StageDeadline``); the post-training has a
   deadline of its own, so that a misprediction costs it steps rather than the budget.
   ``speedrun.json`` records how many steps each ran.
4. export: the last stage's ``final/`` is an HF-format checkpoint (``afnext ask --model`` and
   transformers' MusicFlamingo load it).
5. eval: ``afnext.eval.synthetic`` on the held-out items: multiple-choice accuracy, digit/word ASR WER
   and median event-onset error, each printed beside its chance baseline (``afnext eval synthetic``
   reproduces it from the exported checkpoint).

The stage files hold everything reviewable (shape, mixture, caps, freeze policy, learning rates,
steps); this module only supplies paths (``run.out_dir``, ``run.init``, ``data.registry``,
``data.processor``), step counts fitted to the budget and, for ``--no-rote``, ``model.rote = false``
on stage 0.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "nano"
STAGE0 = "stage0"
# After midtrain2: post-training on onset answers (configs/nano/posttrain.toml). The curriculum's stages
# leave the onset near chance on the nano model; this stage brings it under its target.
POST_STAGE = "posttrain"
STAGES = ("stage0_encoder", STAGE0, "pretrain1", "pretrain2", "midtrain1", "midtrain2", POST_STAGE)
# The post-training's clips: event_onset_dense (the 10-60-s clips of event_onset with 6-8 events
# instead of 2-5), each asking every event in turn (event_onset_dense_all). A clip then teaches ~7 onset
# answers for one encoding instead of ~3.5 (the audio is what a clip costs): 300 post-training steps from
# the same export gave onset 1.45 s with them against 2.80 s with event_onset_all. The stage reads ~1.7
# clips a step, so 1,500 covers its steps once.
ONSET_DENSE_FAMILY = "event_onset_dense"
ONSET_DENSE_TRAIN = 1500
DENSE_DIR = "onset_dense"  # under the corpus directory: synthesised apart, with its own recipe stamp
# The skills the nano model is trained and scored on, one family per headline figure and domain:
# multiple choice on speech (language), sound (event class) and music (timbre), four options each;
# digit and word transcription; event onsets on 10-60 s clips; and the 2-5 min clips of midtrain2.
# Word transcription uses the 20 command words (asr_commands): the 211-word list of asr_words gives each
# word ~30 occurrences in 1,500 clips, too few to learn from scratch. Fewer families is deliberate: on
# 2 cores stage 0 sees ~15K samples, and each family's audio read-out took ~600 samples of it alone but
# far more when ten families shared the batch (measured; see the README's speedrun section).
FAMILIES = ("asr_digits", "asr_commands", "speaker_language", "sound_class", "music_timbre", "event_onset",
            "event_onset_short", "long_event_grounding")
TRAIN_PER_FAMILY = 1500
# Transcription families get more clips. Stage 0b reads ~17,000 samples of each; with 1,500 clips (~12
# epochs) the nano model memorised the command-word clips: answer loss 0.19 nats/token on training clips
# against 1.07 held out (digits 0.16 / 0.27), WER 35.8 % on command words (`afnext eval synthetic
# --nll-train 50` shows such gaps). With 6,000 and 4,000 clips the speedrun's WER went 25.7 % -> 14.5 %.
# A short clip costs ~7 ms to synthesise on 2 cores (+45-60 s of corpus time).
TRAIN_OVERRIDES = (("asr_commands", 6000), ("asr_digits", 4000))
EVAL_PER_FAMILY = 50
LONG_TRAIN, LONG_EVAL = 24, 2
LONG_DURATION_S = (120.0, 300.0)  # nano long clips: 2-5 min (the full corpus uses 10-30 min)
SEED = 0
# The wall-time target of the whole run (#4), in seconds. Machines sold as the same 2 cores differ: the
# same run took 25.2 min on 2026-12-04 and 36.3 min on 2026-12-05 (every step ~40 % slower). Stage 0b is
# the one stage long enough to absorb that, so on a slower machine it runs fewer steps (fit_stage0_steps),
# predicted from how fast stage 0a ran on the same data; the step count used is logged and recorded.
BUDGET_S = 30 * 60
BUDGET_MARGIN_S = 60  # seconds kept in hand for the estimate's error
# Stage 0b step time over stage 0a step time (stage 0a's includes its start-up): 0.376 / 0.398 s
# (2026-12-04), 0.547 / 0.558 s (2026-12-05), 0.879 / 0.677 s (2026-12-06); with the alignment prior
# 0.65 / 0.47 s and 0.54 / 0.42 s (2026-12-07). It only sets stage 0b's
# first plan: StageDeadline then re-plans from stage 0b's own step times.
STAGE0_PER_ENCODER_STEP = 1.3
# Seconds of pretrain1 .. midtrain2 and the eval per second of stage 0a: 197 / 199 s (2026-12-04),
# 279 / 279 s (2026-12-05), 384 / 338 s (2026-12-06), 179 / 164 s (2026-12-08); the largest ratio is used.
AFTER_STAGE0_PER_ENCODER_S = 1.15
# The eval alone, per second of stage 0a (38 / 164 s and 32 / 153 s on 2026-12-08, 48 / 223 s on
# 2026-12-07), with room: the post-training's deadline keeps this much for it.
EVAL_PER_ENCODER_S = 0.3
# A post-training step over a stage 0a step: 1.18 / 0.40 s and 1.32 / 0.40 s inside two end-to-end runs
# (2026-12-07, a slower machine), 0.84 / 0.31 s inside one (2026-12-08). It only sets how much time
# stage 0b leaves for the post-training; the post-training's own deadline corrects the rest.
POST_PER_ENCODER_STEP = 2.9
MIN_STAGE0_FRACTION = 0.5  # never fewer than this share of the configured steps: past it, report the overrun
MIN_POST_FRACTION = 0.7  # the same for the post-training


@dataclass
class PhaseTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def corpus_preset():
    from afnext.data.synth import Preset, load_families

    short = sum(1 for f in load_families().values() if not f.long)
    return Preset("speedrun", TRAIN_PER_FAMILY * short, EVAL_PER_FAMILY * short, LONG_TRAIN, LONG_EVAL,
                  min_train=TRAIN_PER_FAMILY, min_eval=EVAL_PER_FAMILY, long_duration_s=LONG_DURATION_S,
                  train_per_family=TRAIN_OVERRIDES)


def build_corpus(data_dir: Path, *, log=print) -> dict:
    """Synthesise the speedrun corpus into data_dir (and the dense onset clips into its ``DENSE_DIR``), or
    reuse one built with the same recipe."""
    from afnext.data.synth import synthesize

    recipe = {"families": list(FAMILIES), "train_per_family": TRAIN_PER_FAMILY,
              "train_overrides": [list(p) for p in TRAIN_OVERRIDES], "eval_per_family": EVAL_PER_FAMILY,
              "long": [LONG_TRAIN, LONG_EVAL, list(LONG_DURATION_S)], "seed": SEED}
    stamp = data_dir / "speedrun_corpus.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe and (data_dir / "eval.jsonl").is_file():
        log(f"corpus: reusing {data_dir}")
    else:
        stamp.unlink(missing_ok=True)
        report = synthesize(data_dir, preset=corpus_preset(), seed=SEED, families=list(FAMILIES), progress=False)
        log(f"corpus: {report.total('train')} train + {report.total('eval')} held-out items, "
            f"{report.audio_hours:.1f} h of audio, tokenizer {report.tokenizer_vocab_size} entries "
            f"({report.wall_time_s:.0f} s)")
        stamp.write_text(json.dumps(recipe, indent=1) + "\n")
    build_dense_clips(data_dir / DENSE_DIR, log=log)
    return recipe


def write_family_registry(data_dir: Path) -> Path:
    """Split train.jsonl by family into families/<family>.jsonl; a registry with one dataset each, plus
    ``event_onset_all``: the ``event_onset`` training clips, each asking every event's onset in turn
    (``afnext.data.families.sound.ask_every_onset``; no new audio), and, when ``DENSE_DIR`` holds the
    dense clips, ``event_onset_dense_all``: those asked the same way."""
    by_family: dict[str, list[str]] = {}
    with open(data_dir / "train.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                by_family.setdefault(json.loads(line)["family"], []).append(line)
    if "event_onset" in by_family:  # the same clips asking every event in turn (stage 0b's onset lessons)
        by_family["event_onset_all"] = _ask_every(by_family["event_onset"])
    out = data_dir / "families"
    out.mkdir(exist_ok=True)
    for stale in out.glob("*.jsonl"):  # a family dropped from an earlier recipe must not linger
        if stale.stem not in by_family:
            stale.unlink()
    tables = []
    for fam, lines in by_family.items():
        (out / f"{fam}.jsonl").write_text("".join(lines), encoding="utf-8")
        name = "long" if fam == "long_event_grounding" else fam
        tables.append(f'[datasets.{name}]\nmanifest = "families/{fam}.jsonl"\naudio_root = "."\n')
    dense = data_dir / DENSE_DIR
    if (dense / "train.jsonl").is_file():
        name = f"{ONSET_DENSE_FAMILY}_all"
        lines = [line for line in (dense / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
                 if line.strip()]
        (dense / "families").mkdir(exist_ok=True)
        (dense / "families" / f"{name}.jsonl").write_text("".join(_ask_every(lines)), encoding="utf-8")
        tables.append(f'[datasets.{name}]\nmanifest = "{DENSE_DIR}/families/{name}.jsonl"\naudio_root = "{DENSE_DIR}"\n')
    path = data_dir / "registry_families.toml"
    path.write_text("# the speedrun corpus, one dataset per task family (written by afnext.speedrun)\n\n"
                    + "\n".join(tables), encoding="utf-8")
    return path


def _ask_every(lines: list[str]) -> list[str]:
    from afnext.data.families.sound import ask_every_onset

    rng = random.Random(SEED)
    return [json.dumps(ask_every_onset(json.loads(line), rng)) + "\n" for line in lines]


def build_dense_clips(dense_dir: Path, *, log=print) -> None:
    """The post-training's ``event_onset_dense`` clips in ``dense_dir`` (reused when built with the same
    recipe); ``write_family_registry`` asks them in turn."""
    from afnext.data.synth import Preset, synthesize

    recipe = {"family": ONSET_DENSE_FAMILY, "train": ONSET_DENSE_TRAIN, "seed": SEED}
    stamp = dense_dir / "onset_corpus.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe and (dense_dir / "train.jsonl").is_file():
        log(f"onset clips: reusing {dense_dir}")
        return
    stamp.unlink(missing_ok=True)
    preset = Preset("onset_dense", ONSET_DENSE_TRAIN, 0, 0, 0, min_train=ONSET_DENSE_TRAIN, min_eval=0)
    report = synthesize(dense_dir, preset=preset, seed=SEED + 1, families=[ONSET_DENSE_FAMILY], progress=False)
    log(f"onset clips: {report.total('train')} {ONSET_DENSE_FAMILY} clips, {report.audio_hours:.1f} h of audio "
        f"({report.wall_time_s:.0f} s)")
    stamp.write_text(json.dumps(recipe, indent=1) + "\n")


def fit_stage0_steps(configured: int, *, elapsed_s: float, encoder_s: float, encoder_steps: int,
                     budget_s: float, extra_s: float = 0.0) -> int:
    """Stage 0b's step count: ``configured``, or fewer when the run would otherwise end past ``budget_s``.

    ``elapsed_s``: the run's wall time so far (corpus and stage 0a); ``encoder_s`` / ``encoder_steps``:
    how long stage 0a took and how many steps it ran, the measure of this machine's speed; ``extra_s``:
    predicted seconds of any stage added to the usual ones."""
    if encoder_steps <= 0 or encoder_s <= 0:
        return configured
    step_s = STAGE0_PER_ENCODER_STEP * encoder_s / encoder_steps
    left_s = budget_s - BUDGET_MARGIN_S - elapsed_s - AFTER_STAGE0_PER_ENCODER_S * encoder_s - extra_s
    fit = math.floor(left_s / step_s) if left_s > 0 else 0
    return max(min(configured, fit), math.ceil(MIN_STAGE0_FRACTION * configured))


class StageDeadline:
    """Keeps stage 0b inside the budget from its own measured speed: every ``every`` steps from step
    ``first`` on, the mean step time of the last ``window`` steps predicts how many steps still fit
    before ``deadline`` (a ``time.perf_counter()`` reading), and the trainer's total is set to that,
    between ``floor`` and ``ceiling`` steps. The first plan (``fit_stage0_steps``) comes from stage 0a's
    speed, whose ratio to stage 0b's varied 0.94-1.31 across machines; this corrects it while the
    cosine has most of its course ahead."""

    def __init__(self, deadline: float, *, floor: int, ceiling: int, first: int = 30, every: int = 50,
                 window: int = 100, clock=time.perf_counter):
        self.deadline, self.floor, self.ceiling = deadline, floor, ceiling
        self.first, self.every, self.window, self.clock = first, every, window, clock
        self.step_s: list[float] = []
        self.plans: list[tuple[int, int]] = []  # (at step, new total) of each change

    def __call__(self, trainer, record: dict) -> None:
        self.step_s.append(float(record["step_s"]))
        step = int(record["step"])
        if step < self.first or (step - self.first) % self.every:
            return
        recent = self.step_s[-self.window:]
        per_step = max(sum(recent) / len(recent), 1e-6)
        left_s = self.deadline - self.clock()
        fit = step + (math.floor(left_s / per_step) if left_s > 0 else 0)
        total = max(self.floor, min(self.ceiling, fit), step)
        if total != trainer.cfg.optim.max_steps:
            trainer.set_max_steps(total)
            self.plans.append((step, total))


@dataclass
class BudgetPlan:
    """How the run's stages share the wall-time budget. ``budget_s`` (None: no budget) counts from
    ``started`` (a ``time.perf_counter()`` reading); stage 0a's seconds and steps (``encoder_s``,
    ``encoder_steps``, once it has run) measure this machine's speed.

    Stage 0b is planned first: what is left after reserving the four stages, the eval and the
    post-training's configured steps, all predicted from stage 0a's speed (``fit_stage0_steps``), and a
    ``StageDeadline`` re-plans it from its own step times. The post-training then gets a deadline that
    keeps only the eval's time, so a misprediction costs it steps (down to ``MIN_POST_FRACTION``) rather
    than the budget."""

    budget_s: float | None
    started: float
    encoder_s: float = 0.0
    encoder_steps: int = 0

    def _encoder_step_s(self) -> float:
        return self.encoder_s / self.encoder_steps if self.encoder_steps else 0.0

    def post_s(self, post_steps: int) -> float:
        """The post-training's predicted seconds."""
        return POST_PER_ENCODER_STEP * self._encoder_step_s() * post_steps

    def stage0(self, configured: int, post_steps: int, clock=time.perf_counter) -> tuple[int, StageDeadline | None]:
        """Stage 0b's first plan and its deadline (None without a budget)."""
        if not self.budget_s:
            return configured, None
        post_s = self.post_s(post_steps)
        steps = fit_stage0_steps(configured, elapsed_s=clock() - self.started, encoder_s=self.encoder_s,
                                 encoder_steps=self.encoder_steps, budget_s=self.budget_s, extra_s=post_s)
        after_s = AFTER_STAGE0_PER_ENCODER_S * self.encoder_s + post_s
        return steps, StageDeadline(self.started + self.budget_s - BUDGET_MARGIN_S - after_s,
                                    floor=math.ceil(MIN_STAGE0_FRACTION * configured), ceiling=configured)

    def post(self, configured: int) -> StageDeadline | None:
        """The post-training's deadline (None without a budget)."""
        if not self.budget_s:
            return None
        return StageDeadline(self.started + self.budget_s - BUDGET_MARGIN_S - EVAL_PER_ENCODER_S * self.encoder_s,
                             floor=math.ceil(MIN_POST_FRACTION * configured), ceiling=configured)


def train_stages(run_dir: Path, registry: Path, tokenizer: Path, *, rote: bool, timer: PhaseTimer,
                 steps_scale: float = 1.0, overrides: list[str] = (), progress: bool = True, log=print,
                 budget_s: float | None = None, started: float | None = None,
                 forced: dict[str, int] | None = None, names: tuple[str, ...] | None = None,
                 init: str = "scratch") -> tuple[Path, dict[str, int]]:
    """Run the stages ``names`` (default ``STAGES``) in order, the first from ``init``; returns the last
    export and each stage's steps as run. ``forced`` sets a stage's steps outright (stage 0b's and the
    post-training's are otherwise fitted to ``budget_s``, see ``BudgetPlan``; ``started``: the run's
    start, a ``time.perf_counter()`` reading)."""
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    forced = forced or {}
    plan = BudgetPlan(budget_s, started if started is not None else time.perf_counter())
    names = STAGES if names is None else names

    def load(stage: str, init: str):
        paths = [f'run.out_dir="{run_dir / stage}"', f'run.init="{init}"', f'data.registry="{registry}"',
                 f'data.processor="{tokenizer}"']
        if init == "scratch" and not rote:  # the stage that builds the model decides its layout
            paths.append("model.rote=false")
        cfg = TrainConfig.load(CONFIG_DIR / f"{stage}.toml", paths + list(overrides))
        if steps_scale != 1.0:
            cfg.optim.max_steps = max(1, round(cfg.optim.max_steps * steps_scale))
            cfg.optim.cycles = min(cfg.optim.cycles, cfg.optim.max_steps)
        return cfg

    steps: dict[str, int] = {}  # each stage's step count, as run
    final = Path(init) / "final"
    for stage in names:
        cfg = load(stage, init)
        configured, deadline = cfg.optim.max_steps, None
        if stage in forced:
            cfg.optim.max_steps = forced[stage]
        elif stage == STAGE0:
            post = 0 if POST_STAGE not in names else forced.get(POST_STAGE) or load(POST_STAGE, init).optim.max_steps
            cfg.optim.max_steps, deadline = plan.stage0(configured, post)
            if cfg.optim.max_steps < configured:
                log(f"stage0: {cfg.optim.max_steps} of its {configured} steps, to end within {budget_s / 60:g} min "
                    f"on this machine (stage 0a: {plan.encoder_s:.0f} s; --budget-min 0 runs them all)")
        elif stage == POST_STAGE:
            deadline = plan.post(configured)
        t0 = time.perf_counter()
        if cfg.run.objective == "encoder":
            from afnext.train.encoder_pretrain import EncoderPretrainer

            final = timer.run(stage, lambda: EncoderPretrainer(cfg, progress=progress).fit())
        else:
            final = timer.run(stage, lambda: Trainer(cfg, progress=progress).fit(on_step=deadline))
            if deadline is not None and deadline.plans:
                (a, first), n = deadline.plans[0], len(deadline.plans)
                log(f"{stage}: re-planned from its own step times {n} time(s), first at step {a} ({first} steps), "
                    f"ran {cfg.optim.max_steps}")
        steps[stage] = cfg.optim.max_steps
        if stage == "stage0_encoder":
            plan.encoder_s, plan.encoder_steps = timer.seconds[stage], steps[stage]
        trains = "encoder + tagging/CTC heads" if cfg.run.objective == "encoder" else \
            ", ".join(f"{g} {p}" for g, p in cfg.optim.freeze.items())
        log(f"{stage}: {cfg.optim.max_steps} steps ({trains}), audio <= {cfg.data.max_audio_s:g} s "
            f"({time.perf_counter() - t0:.0f} s)")
        init = str(run_dir / stage)
    return final, steps


def evaluate(model_dir: Path, data_dir: Path, out_dir: Path) -> dict:
    from afnext.eval.synthetic import evaluate_synthetic

    report = evaluate_synthetic(model_dir, data_dir / "eval.jsonl", predictions_out=out_dir / "eval_predictions.jsonl")
    (out_dir / "eval_report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def run(out: Path = Path("runs/speedrun"), *, rote: bool = True, steps_scale: float = 1.0, overrides: list[str] = (),
        progress: bool = True, log=print, budget_s: float | None = BUDGET_S, stage0_steps: int | None = None,
        post_steps: int | None = None) -> dict:
    """The whole speedrun; ``steps_scale`` and ``overrides`` (``section.key=value``, every stage) are for
    tests and experiments. ``budget_s`` (None: off) fits stage 0b's and the post-training's steps to the
    wall-time budget; ``stage0_steps`` and ``post_steps`` set them outright (an ablation's second run
    reuses the first's, so the two compare).
    Returns the summary written to ``<out>/<rote|norote>/speedrun.json``."""
    from afnext.eval.synthetic import format_headline

    out = Path(out)
    timer = PhaseTimer()
    t0 = time.perf_counter()
    data_dir = out / "data"
    timer.run("corpus", build_corpus, data_dir, log=log)
    registry = write_family_registry(data_dir)
    run_dir = out / ("rote" if rote else "norote")
    forced = {k: v for k, v in ((STAGE0, stage0_steps), (POST_STAGE, post_steps)) if v is not None}
    final, steps = train_stages(run_dir, registry, data_dir / "tokenizer", rote=rote, timer=timer,
                                steps_scale=steps_scale, overrides=overrides, progress=progress, log=log,
                                budget_s=budget_s, started=t0, forced=forced)
    report = timer.run("eval", evaluate, final, data_dir, run_dir)
    summary = {"model": str(final), "rote": rote, "stage0_steps": steps.get(STAGE0, 0),
               "post_steps": steps.get(POST_STAGE, 0), "steps": steps,
               "budget_s": budget_s, "seconds": {k: round(v, 1) for k, v in timer.seconds.items()},
               "total_s": round(time.perf_counter() - t0, 1), "headline": report["headline"],
               "families": report["families"]}
    (run_dir / "speedrun.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    log(f"\nheld-out synthetic items ({'RoTE' if rote else 'no RoTE (AF3 layout)'}), model {final}:")
    log(format_headline(report))
    log("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timer.seconds.items())
        + f"; total {summary['total_s'] / 60:.1f} min")
    return summary


def side_by_side(with_rote: dict, without: dict) -> str:
    rows = [("", "RoTE", "no RoTE", "chance")]
    h1, h0 = with_rote["headline"], without["headline"]
    for key, label, fmt in (("mc_accuracy", "multiple-choice accuracy", "{:.1%}"), ("asr_wer", "digit/word ASR WER", "{:.1%}"),
                            ("onset_median_error_s", "median onset error (s)", "{:.2f}")):
        if key in h1 and key in h0:
            rows.append((label, fmt.format(h1[key]["value"]), fmt.format(h0[key]["value"]), fmt.format(h1[key]["chance"])))
    fams = sorted(set(with_rote["families"]) & set(without["families"]))
    for fam in fams:
        a, b = with_rote["families"][fam], without["families"][fam]
        for key, fmt in (("accuracy", "{:.1%}"), ("wer", "{:.1%}"), ("median_onset_error_s", "{:.2f}"), ("exact_match", "{:.1%}")):
            if key in a:
                chance = a.get("chance", a.get("chance_wer", a.get("chance_median_onset_error_s")))
                rows.append((f"  {fam} {key.replace('_', ' ')}", fmt.format(a[key]), fmt.format(b[key]),
                             "" if chance is None else fmt.format(chance)))
                break
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width))) for r in rows)
