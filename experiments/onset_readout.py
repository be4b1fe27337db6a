"""Can a trained nano AF-Next learn to read event onsets from its audio, given many more onset examples?

    .venv/bin/python experiments/onset_readout.py                          # onset answers only
    .venv/bin/python experiments/onset_readout.py --grounding-weight 1     # + the grounding loss
    # reading alone: single-token reads, then drills of whole event spans (reads kept going)
    .venv/bin/python experiments/onset_readout.py --batch 0 --read-batch 64 --save runs/readout/reads
    .venv/bin/python experiments/onset_readout.py --model runs/readout/reads --batch 0 --read-batch 32 \
        --drill-batch 32 --drill-shift --drill-spans --train-clips 1000 --steps 300
    # finding without choosing: each drill keeps one event (and distractors from outside every event)
    .venv/bin/python experiments/onset_readout.py --model runs/readout/reads --batch 0 --read-batch 16 \
        --drill-batch 32 --drill-shift --drill-spans --drill-events 1 --train-clips 1000 --steps 200

The speedrun's onset figure stays at chance while its transcription and multiple-choice figures are
well past their targets. This experiment separates the two halves of an onset answer: *finding* the
asked event's first audio tokens, and *reading* their time out as digits. It continues a trained model
(by default the shipped `examples/nano-afnext`) on `event_onset` clips (10-60 s) only, with the encoder
frozen so that its output is computed once per clip and cached (the adapter and LLM train; RoTE is
applied on the fly, so the time code is the model's own). Each training clip asks about every one of
its 2-5 events in one multi-turn conversation, 2-5 answers for one clip's audio. With
``--grounding-weight`` the answer positions' attention (head 0 of LLM layer ``--grounding-layer``) is
supervised onto the asked event's onset tokens, and the layer before onto the question's name for it
(``afnext.train.grounding``), so finding is taken care of and only reading remains.
``--grounding-heads all`` supervises every head of that layer, and ``--ground-also 2`` the same heads
of a later layer too. ``--word-grounding`` moves the look-up to the question: the event word's last
token is taught to look at the onset (layer L - 1, where the word's own embedding is the query) and
the answer to look at that word (layer L).

Reads (``--read-batch``) hand the LLM one audio token of a clip, at its own time, and ask when the sound
starts: reading without finding. Drills (``--drill-batch``) cut a clip down to its events' onset tokens
(or, with ``--drill-spans``, their whole spans) plus a few others: finding among a few events, then
reading. ``--drill-events 1`` keeps only one event per drill: finding a lone event among noise
tokens, with no choice between events to make. ``--word-reads N`` adds N reads per step asked by the
event's name ("When does the siren start?", the one audio token an onset token of a siren), with both
word-grounding looks supervised: the path a whole-clip answer takes, on cheap samples. Measured from
the 2026-12-06 stage-0b export (held-out 6.95 s): 150 steps of 64 left the whole-clip answers at
8.7-13.8 s, so reading through the name does not carry over from one-token prompts. Held-out answers that land within 1 s of another
event's onset are counted apart: that is a wrong pick, not a wrong reading.

It prints the training loss (per answer token, the closing token included) and, every
``--eval-every`` steps, the median onset error on the held-out `event_onset` items of the corpus
(greedy answers to their own questions, scored like `afnext eval synthetic`). Needs the speedrun
corpus (`make speedrun` writes it to runs/speedrun/data).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import statistics
import time
from pathlib import Path

import torch

from afnext.audio import TOKEN_SECONDS, load_audio
from afnext.data.families.sound import NOUN, ONSET_QUESTIONS
from afnext.data.tokenize import StageCaps, encode_sample
from afnext.eval.synthetic import predicted_onset
from afnext.model.afnext import IGNORE_INDEX, AFNext
from afnext.model.encoder import tokens_from_mel_frames
from afnext.model.rote import window_index_per_row
from afnext.processor import Processor
from afnext.train.reads import TimeReads
from afnext.train.grounding import SPAN_S, GroundingProbe, answer_spans, grounding_span, probe_attention, word_span

CAPS = StageCaps(max_audio_s=60.0, max_tokens=8192)
ANSWER_TOKENS = 8  # greedy tokens per held-out answer: "12.4s" is 5


def read_rows(manifest: Path, family: str) -> list[dict]:
    with open(manifest, encoding="utf-8") as fh:
        return [r for r in map(json.loads, filter(str.strip, fh)) if r["family"] == family]


def greedy_next(model: AFNext, ids: torch.Tensor, embeds: torch.Tensor) -> int:
    """The most likely next token, never the audio placeholder (an untrained LLM may rank it first, and
    a placeholder without audio behind it cannot be fed back)."""
    logits = model(input_ids=ids[None], audio_embeds=embeds, logits_to_keep=1).logits[0, -1]
    logits[model.config.audio_token_id] = float("-inf")
    return int(logits.argmax())


def answer_runs(labels: torch.Tensor) -> list[list[int]]:
    """Positions of each assistant answer's labelled tokens, one list per answer, in order."""
    return [list(range(lo, hi)) for lo, hi in answer_spans(labels)]


class Clip:
    """One clip's tokenized sample, its cached encoder output and (for training) its grounding targets."""

    def __init__(self, model: AFNext, sample, targets=(), name_targets=(), events=(), word_targets=()):
        with torch.no_grad():
            self.hidden = model.encoder(sample.input_features, sample.input_features_mask)
        self.tokens_per_row = tokens_from_mel_frames(sample.input_features_mask.sum(-1).long())
        self.input_ids, self.labels = sample.input_ids, sample.labels
        self.targets, self.name_targets, self.word_targets = list(targets), list(name_targets), list(word_targets)
        self.events = list(events)  # every event of the clip, for the drill

    def placed(self, model: AFNext) -> torch.Tensor:
        """(audio tokens, C) the encoder output with RoTE applied, one row per audio token."""
        x = self.hidden
        if model.rote is not None:
            window = window_index_per_row(self.input_ids[None], model.config.audio_token_id, self.tokens_per_row)
            x = model.rote(x, window, model.encoder.tokens_per_window)
        return torch.cat([x[j, : int(self.tokens_per_row[j])] for j in range(x.shape[0])])

    def audio_embeds(self, model: AFNext, select: torch.Tensor | None = None) -> torch.Tensor:
        x = self.placed(model)
        return model.adapter(x if select is None else x[select])

    def drill(self, model: AFNext, events: list[dict], distractors: int, rng: random.Random, encode=None,
              spans: bool = False):
        """The same conversation with its audio cut down to the asked events' onset tokens plus
        ``distractors`` other tokens of the clip, in time order: (input_ids, labels, audio embeds).
        Each kept token keeps its own time code, so the answers stay the same. With ``shift`` the kept
        tokens are moved together by a random offset within the 60-s cap (RoTE applied at their new
        times) and the answers rewritten to match, so a clip's sounds no longer tell its answers. ``encode``
        (the tokenizer's) turns this on; it needs a conversation that asks about ``events`` in order. With
        fewer ``events`` than the clip has (the first ones its conversation asks about), the conversation
        is cut after their answers and no distractor falls inside any event."""
        slots = (self.input_ids == model.config.audio_token_id).nonzero().flatten()
        first, n = int(slots[0]), slots.numel()
        audio_id = model.config.audio_token_id

        def tokens_of(evs, whole: bool) -> set[int]:
            out = set()
            for e in evs:
                span = grounding_span(self.input_ids, audio_id, e["onset_s"], e["offset_s"] - e["onset_s"] if whole else SPAN_S)
                if span is not None:
                    out.update(range(span[0] - first, span[1] - first))
            return out

        keep = tokens_of(events, spans)
        # with only some of the clip's events kept, distractors come from outside every event
        busy = keep if len(events) >= len(self.events) else keep | tokens_of(self.events, True)
        others = [i for i in range(n) if i not in busy]
        keep.update(rng.sample(others, min(distractors, len(others))))
        select = torch.tensor(sorted(keep))
        input_ids, full_labels = self.input_ids, self.labels
        runs = answer_runs(full_labels)
        if len(runs) > len(events):  # a training conversation asks about every event: keep the first len(events) turns
            end = runs[len(events) - 1][-1] + 1
            input_ids, full_labels = input_ids[:end], full_labels[:end]
        ids = torch.cat([input_ids[:first], torch.full((len(select),), audio_id), input_ids[first + n:]])
        labels = torch.cat([full_labels[:first], torch.full((len(select),), IGNORE_INDEX), full_labels[first + n:]])
        if encode is None:
            return ids, labels, self.audio_embeds(model, select)
        per_window = model.encoder.tokens_per_window
        limit = int(CAPS.max_audio_s / TOKEN_SECONDS)  # tokens in the longest clip
        offset = rng.randint(-int(select[0]), limit - 1 - int(select[-1]))
        flat = torch.cat([self.hidden[j, : int(self.tokens_per_row[j])] for j in range(self.hidden.shape[0])])
        windows = math.ceil(limit / per_window)
        moved = flat.new_zeros(windows * per_window, flat.shape[-1])
        moved[select + offset] = flat[select]
        moved = moved.view(windows, per_window, -1)
        if model.rote is not None:
            moved = model.rote(moved, torch.arange(windows), per_window)
        embeds = model.adapter(moved.flatten(0, 1)[select + offset])
        # rewrite each answer: every "<t>s" answer moves by the same offset
        answers = [(e["onset_s"], f"{e['onset_s'] + offset * TOKEN_SECONDS:.1f}s") for e in events]
        out_ids, out_labels = [], []
        ids_l, labels_l = ids.tolist(), labels.tolist()
        runs = answer_runs(labels)
        if len(runs) != len(events):
            raise ValueError(f"a shifted drill needs one answer per event: {len(runs)} answers, {len(events)} events")
        cut = 0
        for run, (onset, text) in zip(runs, answers):
            body = run[:-1]  # the closing token stays
            if ids_l[body[0]: body[-1] + 1] != encode(f"{onset:.1f}s"):
                raise ValueError("a drill answer is not tokenized as its text alone")
            new = encode(text)
            out_ids += ids_l[cut: body[0]] + new
            out_labels += labels_l[cut: body[0]] + new
            cut = body[-1] + 1
        out_ids += ids_l[cut:]
        out_labels += labels_l[cut:]
        return torch.tensor(out_ids), torch.tensor(out_labels), embeds


def training_clip(model: AFNext, proc: Processor, row: dict, root: Path, rng: random.Random) -> Clip:
    events = list(row["labels"]["events"])
    rng.shuffle(events)
    conv = []
    for k, e in enumerate(events):
        question = rng.choice(ONSET_QUESTIONS).format(x=NOUN[e["label"]])
        conv += [{"from": "human", "value": ("<sound>\n" if k == 0 else "") + question},
                 {"from": "gpt", "value": f"{e['onset_s']:.1f}s"}]
    sample = encode_sample(proc, conv, [load_audio(root / row["sound"])], CAPS)
    targets, names, words = [], [], []
    for run, e in zip(answer_runs(sample.labels), events):
        queries = torch.tensor(run[:-1]) - 1  # the logit at p - 1 predicts answer token p (closing token left out)
        span = grounding_span(sample.input_ids, model.config.audio_token_id, e["onset_s"])
        name = word_span(sample.input_ids, proc.tokenizer.encode(" " + NOUN[e["label"]]), run[0])
        if span is not None:
            targets.append((queries, span[0], span[1], 0))
        if name is not None:
            names.append((queries, name[0], name[1], 0))
        if name is not None and span is not None:  # the event word's last token looks at the onset
            words.append((torch.tensor([name[1] - 1]), span[0], span[1], 0))
    return Clip(model, sample, targets, names, events, words)


class Reads:
    """Single-token reads: one audio token of a clip, at its own time, and the question "When does the
    sound start?" answered with that token's start time. The LLM sees nothing else, so a read tests (and
    trains) reading a time out of the RoTE-coded token alone, with no finding involved."""

    def __init__(self, model: AFNext, proc: Processor):
        self.rows = TimeReads(proc, model.config.audio_token_id)  # the trainer's read samples (optim.read_batch)
        self.prefix = self.rows.prefix
        self.model = model

    def pick(self, clips: list[Clip], rng: random.Random) -> tuple[Clip, int]:
        clip = rng.choice(clips)
        return clip, rng.randrange(int(clip.tokens_per_row.sum()))

    def batch(self, clips: list[Clip], n: int, rng: random.Random):
        """Right-padded (input_ids, labels) of n reads and their audio embeds."""
        picks = [self.pick(clips, rng) for _ in range(n)]
        ids, labels = self.rows.batch([token * TOKEN_SECONDS for _, token in picks])
        return ids, labels, self.model.adapter(torch.stack([clip.placed(self.model)[token] for clip, token in picks]))

    @torch.no_grad()
    def median_error(self, proc: Processor, clips: list[Clip], n: int = 200) -> float:
        """Median error of greedy reads of n random tokens of the (held-out) clips, drawn the same way each time."""
        self.model.eval()
        rng, errors = random.Random(123), []
        for _ in range(n):
            clip, token = self.pick(clips, rng)
            ids, out_ids = self.prefix, []
            embeds = self.model.adapter(clip.placed(self.model)[token][None])
            for _ in range(ANSWER_TOKENS):
                nxt = greedy_next(self.model, ids, embeds)
                if nxt == proc.tokenizer.eos_token_id:
                    break
                out_ids.append(nxt)
                ids = torch.cat([ids, torch.tensor([nxt])])
            guess = predicted_onset(proc.decode(out_ids))
            errors.append(abs((guess if guess is not None else 0.0) - token * TOKEN_SECONDS))
        self.model.train()
        return statistics.median(errors)


def drill_batch(model: AFNext, clips: list[Clip], distractors: int, rng: random.Random, encode=None,
                spans: bool = False, events: int = 0):
    """Right-padded (input_ids, labels) rows and the audio embeds of each clip's drill, in row order;
    ``events`` > 0 keeps (and asks about) only that many of each clip's events."""
    rows = [c.drill(model, c.events[:events] if events else c.events, distractors, rng, encode, spans) for c in clips]
    width = max(len(ids) for ids, _, _ in rows)
    pad = lambda t, v: torch.cat([t, torch.full((width - len(t),), v, dtype=t.dtype)])  # noqa: E731
    ids = torch.stack([pad(i, 0) for i, _, _ in rows])  # padding sits after each row's last label: causal attention never sees it
    labels = torch.stack([pad(lab, IGNORE_INDEX) for _, lab, _ in rows])
    return ids, labels, torch.cat([e for _, _, e in rows])


class WordReads:
    """Reads asked by the event's name: one onset token of a training clip's event alone, the question
    "When does the <its class> start?", answered with that token's time, and the two word-grounding
    looks supervised (the name's last token at the audio token, the answer at the name). Cheap samples
    for the path the whole-clip answers need: read the time from the name after the name found it."""

    def __init__(self, model: AFNext, proc: Processor):
        audio_id = model.config.audio_token_id
        self.model = model
        self.rows, self.words = {}, {}
        for label, noun in NOUN.items():
            r = TimeReads(proc, audio_id, question=ONSET_QUESTIONS[0].format(x=noun))
            self.rows[label] = r
            self.words[label] = word_span(r.prefix, proc.tokenizer.encode(" " + noun), len(r.prefix))
            self.audio_pos = int((r.prefix == audio_id).nonzero()[0])

    def batch(self, clips: list[Clip], n: int, rng: random.Random):
        """One packed row of n reads: (input_ids, labels, position_ids, cu_seqlens, embeds, to_onset, to_word)."""
        ids, labels, pos, embeds, to_onset, to_word, cu = [], [], [], [], [], [], [0]
        for _ in range(n):
            clip = rng.choice(clips)
            e = rng.choice(clip.events)
            span = grounding_span(clip.input_ids, self.model.config.audio_token_id, e["onset_s"])
            if span is None:
                continue
            first = int((clip.input_ids == self.model.config.audio_token_id).nonzero()[0])
            token = rng.randrange(span[0], span[1]) - first
            r_ids, r_labels = self.rows[e["label"]].batch([token * TOKEN_SECONDS])
            r_ids, r_labels = r_ids[0], r_labels[0]
            s = cu[-1]
            word = self.words[e["label"]]
            answer = (r_labels != IGNORE_INDEX).nonzero().flatten()
            to_onset.append((torch.tensor([s + word[1] - 1]), s + self.audio_pos, s + self.audio_pos + 1, s))
            to_word.append((answer - 1 + s, s + word[0], s + word[1], s))
            ids.append(r_ids)
            labels.append(r_labels)
            pos.append(torch.arange(len(r_ids)))
            embeds.append(clip.placed(self.model)[token])
            cu.append(s + len(r_ids))
        return (torch.cat(ids)[None], torch.cat(labels)[None], torch.cat(pos)[None], torch.tensor(cu, dtype=torch.int32),
                self.model.adapter(torch.stack(embeds)), to_onset, to_word)


def median_error(model: AFNext, proc: Processor, items: list[tuple[Clip, float]],
                 drill: int | None = None, spans: bool = False, events: int = 0) -> tuple[float, list[str], float]:
    """Median onset error of greedy answers on the held-out clips, or (``drill`` = distractor count) on
    their drills, whose distractors are drawn the same way at every evaluation; and the share of answers
    that read another event's onset (within 1 s of it): a wrong pick rather than a wrong reading."""
    model.eval()
    errors, answers, other_event = [], [], 0
    for k, (clip, truth) in enumerate(items):
        if drill is None:
            ids, labels, embeds = clip.input_ids, clip.labels, clip.audio_embeds(model)
        else:
            kept = clip.events
            if events:  # the asked event first, then others of the clip
                kept = sorted(clip.events, key=lambda e: abs(e["onset_s"] - truth) > 1e-6)[:events]
            ids, labels, embeds = clip.drill(model, kept, drill, random.Random(k), spans=spans)
        prompt_end = int((labels != IGNORE_INDEX).nonzero()[0])
        ids, out_ids = ids[:prompt_end], []
        for _ in range(ANSWER_TOKENS):
            nxt = greedy_next(model, ids, embeds)
            if nxt == proc.tokenizer.eos_token_id:
                break
            out_ids.append(nxt)
            ids = torch.cat([ids, torch.tensor([nxt])])
        text = proc.decode(out_ids)
        guess = predicted_onset(text)
        answers.append(text)
        errors.append(abs((guess if guess is not None else 0.0) - truth))
        if guess is not None and clip.events:
            nearest = min(clip.events, key=lambda e: abs(e["onset_s"] - guess))
            other_event += abs(nearest["onset_s"] - truth) > 1e-6 and abs(nearest["onset_s"] - guess) <= 1.0
    model.train()
    return statistics.median(errors), answers, other_event / len(items)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="examples/nano-afnext")
    ap.add_argument("--data", default="runs/speedrun/data", type=Path)
    ap.add_argument("--train-clips", type=int, default=800)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8, help="whole clips per optimizer step (0: drills only)")
    ap.add_argument("--drill-batch", type=int, default=0,
                    help="drills per optimizer step: a clip cut down to its events' onset tokens and a few others")
    ap.add_argument("--drill-distractors", type=int, default=8, help="tokens kept in a drill besides the onsets")
    ap.add_argument("--drill-spans", action="store_true",
                    help="keep each event's whole span (onset to offset) in a drill, not just its onset tokens")
    ap.add_argument("--drill-events", type=int, default=0,
                    help="keep and ask about only this many of each drill's events (0: all; 1: finding without choosing)")
    ap.add_argument("--drill-shift", action="store_true", help="move each drill's tokens to a random time (RoTE re-applied)")
    ap.add_argument("--read-batch", type=int, default=0,
                    help="single-token reads per optimizer step: one audio token, asked its time")
    ap.add_argument("--word-reads", type=int, default=0,
                    help="reads per step asked by the event's name, with word grounding (WordReads)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--grounding-weight", type=float, default=0.0)
    ap.add_argument("--grounding-layer", type=int, default=1)
    ap.add_argument("--word-grounding", action="store_true",
                    help="teach the question's event word to look at the onset (layer L - 1) and the answer to look "
                         "at that word (layer L): the time then sits at a text position, one look-up from the answer")
    ap.add_argument("--ground-also", type=int, nargs="*", default=[],
                    help="later layers whose --grounding-heads are taught to look at the onset too")
    ap.add_argument("--grounding-heads", default="0",
                    help="heads of --grounding-layer taught to look at the onset: comma-separated, or 'all'")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the curve here")
    ap.add_argument("--save", type=Path, help="save the trained model here (a checkpoint directory, for --model)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = AFNext.from_pretrained(args.model).float()
    proc = Processor.from_pretrained(args.model)
    t0 = time.perf_counter()
    train = [training_clip(model, proc, r, args.data, rng)
             for r in read_rows(args.data / "train.jsonl", "event_onset")[: args.train_clips]]
    held_out = []
    for r in read_rows(args.data / "eval.jsonl", "event_onset"):
        sample = encode_sample(proc, r["conversations"], [load_audio(args.data / r["sound"])], CAPS)
        held_out.append((Clip(model, sample, events=r["labels"]["events"]), float(r["labels"]["onset_s"])))
    print(f"encoded {len(train)} training and {len(held_out)} held-out clips ({time.perf_counter() - t0:.0f} s)", flush=True)

    curve = []
    reads = Reads(model, proc)

    def evaluate(step: int, loss: float | None, ground: float | None) -> None:
        err, answers, other = median_error(model, proc, held_out)
        row = {"step": step, "clips_seen": step * args.batch, "drills_seen": step * args.drill_batch,
               "train_loss": loss, "ground": ground, "median_onset_error_s": err, "answers": answers[:5]}
        row["other_event_share"] = other
        line = f"step {step}: held-out median onset error {err:.2f} s ({other:.0%} at another event's onset)"
        if args.drill_batch:
            row["drill_median_onset_error_s"], drill_answers, row["drill_other_event_share"] = median_error(model, proc, held_out, args.drill_distractors, args.drill_spans, args.drill_events)
            line += (f" (on their drills {row['drill_median_onset_error_s']:.2f} s, "
                     f"{row['drill_other_event_share']:.0%} at another event's onset, answers {drill_answers[:5]})")
        if args.read_batch:
            row["read_median_error_s"] = reads.median_error(proc, [c for c, _ in held_out])
            line += f" (single-token reads {row['read_median_error_s']:.2f} s)"
        curve.append(row)
        print(f"{line}; answers {answers[:5]}", flush=True)

    evaluate(0, None, None)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    layers = model.llm.layers
    n_heads = layers[args.grounding_layer].self_attn.heads
    onset_heads = list(range(n_heads)) if args.grounding_heads == "all" else [int(h) for h in args.grounding_heads.split(",")]
    parts = args.batch + bool(args.drill_batch) + bool(args.read_batch) + bool(args.word_reads)  # each weighs the same
    losses, grounds, drill_losses, read_losses, word_losses = [], [], [], [], []
    word_reads = WordReads(model, proc) if args.word_reads else None
    for step in range(1, args.steps + 1):
        warm = min(1.0, step / max(1, args.steps // 20))
        for g in opt.param_groups:  # warmup, then cosine to 10 %
            g["lr"] = args.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps)))
        opt.zero_grad()
        step_loss = 0.0
        for _ in range(args.batch):
            clip = rng.choice(train)
            if args.word_grounding:  # the event word finds the onset (layer L - 1), the answer finds the word (layer L)
                onset_probe = GroundingProbe(onset_heads, clip.name_targets)
                name_probe = GroundingProbe(onset_heads, clip.word_targets)
            else:
                onset_probe, name_probe = GroundingProbe(onset_heads, clip.targets), GroundingProbe([0], clip.name_targets)
            later = [GroundingProbe(onset_heads, clip.targets) for _ in args.ground_also]
            with contextlib.ExitStack() as hooks:
                hooks.enter_context(probe_attention(layers[args.grounding_layer].self_attn, onset_probe))
                hooks.enter_context(probe_attention(layers[args.grounding_layer - 1].self_attn, name_probe))
                for layer, probe in zip(args.ground_also, later):
                    hooks.enter_context(probe_attention(layers[layer].self_attn, probe))
                out = model(input_ids=clip.input_ids[None], audio_embeds=clip.audio_embeds(model), labels=clip.labels[None])
            loss = out.loss
            for probe in later:
                if probe.losses and args.grounding_weight:
                    loss = loss + args.grounding_weight * torch.stack(probe.losses).mean()
            if onset_probe.losses:
                ground = torch.stack(onset_probe.losses).mean()
                grounds.append(float(ground.detach()))
                if args.grounding_weight:
                    names = torch.stack(name_probe.losses).mean() if name_probe.losses else 0.0
                    loss = loss + args.grounding_weight * (ground + names)
            (loss / parts).backward()
            step_loss += float(out.loss.detach()) / args.batch
        if args.drill_batch:
            ids, labels, embeds = drill_batch(model, rng.sample(train, args.drill_batch), args.drill_distractors, rng,
                                              proc.tokenizer.encode if args.drill_shift else None, args.drill_spans,
                                              args.drill_events)
            out = model(input_ids=ids, audio_embeds=embeds, labels=labels)
            (out.loss / parts).backward()
            drill_losses.append(float(out.loss.detach()))
        if args.read_batch:
            ids, labels, embeds = reads.batch(train, args.read_batch, rng)
            out = model(input_ids=ids, audio_embeds=embeds, labels=labels)
            (out.loss / parts).backward()
            read_losses.append(float(out.loss.detach()))
        if word_reads is not None:
            ids, labels, pos, cu, embeds, to_onset, to_word = word_reads.batch(train, args.word_reads, rng)
            onset_probe, name_probe = GroundingProbe(onset_heads, to_onset), GroundingProbe(onset_heads, to_word)
            with contextlib.ExitStack() as hooks:
                hooks.enter_context(probe_attention(layers[args.grounding_layer - 1].self_attn, onset_probe))
                hooks.enter_context(probe_attention(layers[args.grounding_layer].self_attn, name_probe))
                out = model(input_ids=ids, audio_embeds=embeds, labels=labels, position_ids=pos, cu_seqlens=cu)
            loss = out.loss + args.grounding_weight * (torch.stack(onset_probe.losses).mean() + torch.stack(name_probe.losses).mean())
            (loss / parts).backward()
            word_losses.append(float(out.loss.detach()))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(step_loss)
        if step % 25 == 0:
            line = f"step {step}:"
            if args.batch:
                line += (f" answer loss {statistics.mean(losses[-25:]):.3f} nats/token, -log attention mass on the "
                         f"onset {statistics.mean(grounds[-25 * args.batch:]):.2f}")
            if args.drill_batch:
                line += f" drill loss {statistics.mean(drill_losses[-25:]):.3f}"
            if args.read_batch:
                line += f" read loss {statistics.mean(read_losses[-25:]):.3f}"
            if args.word_reads:
                line += f" word-read loss {statistics.mean(word_losses[-25:]):.3f}"
            print(f"{line} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step, statistics.mean((losses if args.batch else drill_losses or read_losses or word_losses)[-25:]),
                     statistics.mean(grounds[-25 * args.batch:]) if args.batch else None)
    if args.save:
        model.save_pretrained(args.save)
        for f in Path(args.model).iterdir():  # tokenizer, chat template, preprocessor: unchanged
            if f.is_file() and f.name not in ("speedrun.json", "training.json") and not (args.save / f.name).exists():
                shutil.copy(f, args.save / f.name)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "curve": curve}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
