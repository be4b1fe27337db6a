"""Encoder pre-training from scratch (``run.objective = "encoder"``): the nano stand-in for AF-Whisper's
own pre-training, which the released AF-Next starts from and which no nano model has.

Why a separate objective. Trained only through the LLM from random weights, the audio path starts
uninformative and the LLM learns the answers' text priors long before it learns to read the audio
(measured at init std 0.02: the loss with the audio replaced by silence equals the loss with the real
audio to 1e-6 after 1,500 steps). Two things move that: init std 0.1 with zero LLM queries (uniform
attention at step 0, ``ModelConfig.init_uniform_attention``), and features that already separate the
answers. Transcription needs the second most: through the LLM alone, digit transcripts stay at chance
for 400 steps, while after 200 steps of this stage's word CTC the LLM gets the first digit right
within 300 steps. This stage therefore trains the encoder (and the adapter) directly, with light
heads on their output tokens (25 per second), built from the exact labels the synthetic corpus
records. On the encoder output:

- frame tags (binary cross-entropy per token): which sources are active at that token's time - each
  event's class (``labels.events[*].label``, plus its ``timbre``/``note`` when given), the first
  ``ONSET_SPAN_S`` of each event (``onset:<class>``: the tokens an onset question must find, not the
  whole event), and each speech segment's speaker gender and language (``labels.segments``);
- clip tags (binary cross-entropy on the mean of the clip's tokens): the clip's scalar string labels
  (``class``, ``quality``, ``root``, ``note``, ``timbre``, ``gender``, ``language_name``);
- transcripts (CTC over *words*): ``labels.transcript`` for spoken digits and words. Characters do not
  fit: at 25 tokens/s a fast-read word of 6-7 letters spans ~9 tokens, too few for CTC's letters plus
  the blanks between repeats (measured: character CTC stalls at ~3 nats/char), while one unit per word
  leaves ~9 tokens per unit (on spoken digits, where characters are words, CTC falls from 2.6 to 0.8
  nats per symbol in 200 steps of batch 16).

On the adapter output (after RoTE when it is on), which is what the LLM reads, three read-outs that
the LLM otherwise has to discover through its answers alone:

- event class (cross-entropy per token, event tokens and the rest weighing half each): which of the
  corpus's event classes the token lies in, or none. An onset question names a class, and the LLM must
  find that class's tokens by a dot product with them. Without this head the frame tags alone left the
  class poorly readable where the LLM reads (a linear probe on held-out `event_onset` tokens: 58 %
  inside events, 46 % on each event's first three tokens, chance 1/9; `experiments/time_probe.py
  --probes class`); with it, 85 % and 81 % after the same 500 steps.
- time digits (cross-entropy per token): the tens, units and tenths of the token's start time, the
  digits an onset answer ("23.4s") is written with. Self-supervised: a token's time is its index. With
  RoTE the window index is in the features; without it, tokens 30 s apart look alike.
- word-pair CTC: one symbol per (previous word, word) of the transcript, from ("<s>", first) to
  (last, "</s>"), scored as a previous-word term plus a current-word term. An LLM writing a transcript
  can then find the next word with one lookup keyed by the word it just wrote, instead of first
  learning to track its place in the audio.

The heads are discarded; the export is the whole AF-Next (encoder and adapter trained, the LLM still
at its initialisation), and the next stage (``run.init`` = this run) trains everything through the LLM.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from afnext.checkpoint import save_model
from afnext.data.loader import ManifestDataset
from afnext.data.mixture import Registry, build_mixture
from afnext.model.afnext import AFNext
from afnext.model.encoder import tokens_from_mel_frames
from afnext.processor import Processor
from afnext.tokenizer import TextTokenizer
from afnext.tokenizer_files import write_tokenizer_files
from afnext.train.config import TrainConfig
from afnext.train.groups import lr_factor, set_lr
from afnext.train.metrics import MetricsLogger

CLIP_KEYS = ("class", "quality", "root", "note", "timbre", "gender", "language_name")
EVENT_KEYS = ("timbre", "note")
TOKEN_STEP_S = 0.04  # encoder output hop: 10-ms mel frames x conv stride 2 x avg-pool 2
TOKEN_STEP_MS = 40  # the same hop in integer ms, for exact time digits
WINDOW_S = 30.0
ONSET_SPAN_S = 0.12  # seconds after an event's onset tagged "onset:<label>" (its first three tokens)
TIME_PLACES = (100, 10, 1)  # tenths of a second per digit: tens, units and tenths of seconds
BOUNDARY = 0  # word-pair index of "<s>" (as the previous word) and "</s>" (as the current one)


def frame_tags(labels: dict) -> list[tuple[str, float, float]]:
    """(tag, start_s, end_s) for every source the labels time-stamp."""
    out = []
    for ev in labels.get("events", []) or []:
        span = (float(ev["onset_s"]), float(ev["offset_s"]))
        out.append((f"event:{ev['label']}", *span))
        out.append((f"onset:{ev['label']}", span[0], min(span[1], span[0] + ONSET_SPAN_S)))
        out += [(f"{k}:{ev[k]}", *span) for k in EVENT_KEYS if isinstance(ev.get(k), str)]
    for seg in labels.get("segments", []) or []:
        span = (float(seg["start_s"]), float(seg["end_s"]))
        out += [(f"speech:{seg['gender']}", *span), (f"language:{seg['language']}", *span), ("speech", *span)]
    return out


def clip_tags(labels: dict) -> list[str]:
    return [f"{k}:{labels[k]}" for k in CLIP_KEYS if isinstance(labels.get(k), str)]


def transcript_words(labels: dict) -> list[str]:
    """The transcript as lower-case words, punctuation dropped ("Apple, pie!" -> ["apple", "pie"])."""
    text = labels.get("transcript")
    if not isinstance(text, str):
        return []
    return "".join(c if c.isalnum() or c == "'" else " " for c in text.lower()).split()


def ctc_target(labels: dict, word_index: dict[str, int]) -> list[int] | None:
    """Word-unit CTC target: each word's ``word_index`` entry (1-based: index 0 is the CTC blank)."""
    ids = [word_index[w] for w in transcript_words(labels) if w in word_index]
    return ids or None


def word_pairs(words: list[str]) -> list[tuple[str, str]]:
    """(previous word, word) for each word, then (last word, "</s>"); the first previous word is "<s>"."""
    seq = ["<s>", *words, "</s>"]
    return list(zip(seq[:-1], seq[1:])) if words else []


def pair_target(labels: dict, pair_index: dict[tuple[str, str], int]) -> list[int] | None:
    """Word-pair CTC target: each (previous word, word) pair's ``pair_index`` entry (1-based; 0 is the blank)."""
    ids = [pair_index[p] for p in word_pairs(transcript_words(labels)) if p in pair_index]
    return ids or None


def time_digits(n_tokens: int) -> torch.Tensor:
    """(n_tokens, 3) tens, units and tenths of each token's start time in seconds (token i starts at 40 i ms),
    exact in integers: the digits an answer like "23.4s" is written with."""
    return index_time_digits(torch.arange(n_tokens))


def index_time_digits(index: torch.Tensor) -> torch.Tensor:
    """(n, 3) the same digits for tokens at positions ``index`` (long) within their audio."""
    tenths = index * TOKEN_STEP_MS // 100
    return torch.stack([tenths // place % 10 for place in TIME_PLACES], dim=-1)


def event_classes(events: list[dict], times: torch.Tensor, event_index: dict[str, int]) -> torch.Tensor:
    """(tokens,) the class index of the event each token (starting at ``times``, 40 ms long) overlaps,
    or ``len(event_index)`` outside every event."""
    cls = torch.full((times.shape[0],), len(event_index))
    for ev in events:
        cls[overlapping(times, float(ev["onset_s"]), float(ev["offset_s"]))] = event_index[ev["label"]]
    return cls


def overlapping(times: torch.Tensor, start_s: float, end_s: float) -> torch.Tensor:
    """Which tokens (each starting at ``times``, 40 ms long) overlap [start_s, end_s)."""
    return (times + TOKEN_STEP_S > start_s) & (times < end_s)


def event_class_loss(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Cross-entropy where a clip's event tokens and its other tokens weigh half each: events are a small
    share of a clip's tokens, and an all-"none" head would otherwise score well."""
    ce = F.cross_entropy(logits, cls, reduction="none")
    inside = cls < logits.shape[-1] - 1
    if not inside.any() or inside.all():
        return ce.mean()
    return 0.5 * ce[inside].mean() + 0.5 * ce[~inside].mean()


def length_groups(lengths: torch.Tensor, max_group: int) -> list[torch.Tensor]:
    """Indices of ``lengths`` in descending-length groups of at most ``max_group``, a new group starting
    where a length falls below half of its group's longest (each group costs its longest times its size)."""
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    groups: list[list[int]] = []
    for i in order:
        if not groups or len(groups[-1]) >= max(1, max_group) or 2 * int(lengths[i]) < int(lengths[groups[-1][0]]):
            groups.append([])
        groups[-1].append(i)
    return [torch.tensor(g) for g in groups]


class EncoderHeads(nn.Module):
    """Light heads, discarded after the stage. On the encoder output: frame tags, clip tags, word CTC.
    On the adapter output, what the LLM reads, two read-outs that the LLM would otherwise have to
    discover through its own answers (see the module docstring): each token's time digits, and word-pair
    CTC, whose (previous, current) symbols are scored as a sum of a previous-word and a current-word
    term, so the two words sit in separate linear codes of the same tokens."""

    def __init__(self, dim: int, frame_vocab: list[str], clip_vocab: list[str], word_vocab: list[str],
                 pair_vocab: list[tuple[str, str]] | None = None, llm_dim: int | None = None):
        super().__init__()
        self.frame_vocab, self.clip_vocab, self.word_vocab = frame_vocab, clip_vocab, word_vocab
        self.word_index = {w: i + 1 for i, w in enumerate(word_vocab)}  # CTC symbol ids; 0 is the blank
        self.frame = nn.Linear(dim, len(frame_vocab))
        self.clip = nn.Linear(dim, max(1, len(clip_vocab)))
        self.ctc = nn.Linear(dim, len(word_vocab) + 1)
        self.pair_vocab = list(pair_vocab or [])
        self.pair_index = {p: i + 1 for i, p in enumerate(self.pair_vocab)}
        out_dim = llm_dim or dim
        self.time = nn.Linear(out_dim, 10 * len(TIME_PLACES))
        # word index BOUNDARY stands for "<s>" on the previous side and "</s>" on the current side
        pairs = [[self.word_index.get(p, BOUNDARY), self.word_index.get(c, BOUNDARY)] for p, c in self.pair_vocab]
        self.register_buffer("pair_words", torch.tensor(pairs, dtype=torch.long).reshape(-1, 2), persistent=False)
        self.pair_prev = nn.Linear(out_dim, len(word_vocab) + 1)
        self.pair_cur = nn.Linear(out_dim, len(word_vocab) + 1)
        self.pair_blank = nn.Linear(out_dim, 1)
        self.event_vocab = sorted(t.split(":", 1)[1] for t in frame_vocab if t.startswith("event:"))
        self.event = nn.Linear(out_dim, len(self.event_vocab) + 1)  # the last index: outside every event

    def pair_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(T, d) -> (T, 1 + pairs): the blank, then prev-word score + current-word score per pair."""
        prev, cur = self.pair_prev(x), self.pair_cur(x)
        return torch.cat([self.pair_blank(x), prev[:, self.pair_words[:, 0]] + cur[:, self.pair_words[:, 1]]], dim=-1)


def build_vocab(dataset: ManifestDataset) -> tuple[list[str], list[str], list[str], list[tuple[str, str]]]:
    """Frame tags, clip tags, transcript words and transcript word pairs seen in the dataset, each sorted."""
    frames, clips, words, pairs = set(), set(), set(), set()
    for i in range(len(dataset)):
        labels = dataset.record(i).extra.get("labels") or {}
        frames.update(t for t, _, _ in frame_tags(labels))
        clips.update(clip_tags(labels))
        ws = transcript_words(labels)
        words.update(ws)
        pairs.update(word_pairs(ws))
    return sorted(frames), sorted(clips), sorted(words), sorted(pairs)


def _ctc_per_symbol(logits: torch.Tensor, target: list[int]) -> torch.Tensor:
    """CTC loss of one clip's (T, symbols) logits (blank = 0) against ``target``, per target symbol."""
    logp = logits.log_softmax(-1)[:, None]
    return F.ctc_loss(logp, torch.tensor([target]), torch.tensor([logits.shape[0]]), torch.tensor([len(target)]),
                      reduction="sum", zero_infinity=True) / len(target)


class EncoderPretrainer:
    def __init__(self, cfg: TrainConfig, *, progress: bool = True):
        from afnext.train.loop import TrainError, apply_process_options, init_weights, scratch_config

        if cfg.run.init != "scratch":
            raise TrainError("run.objective = 'encoder' trains an encoder from scratch: set run.init = 'scratch'")
        if not cfg.data.processor:
            raise TrainError("data.processor is required when run.init = 'scratch' (the corpus tokenizer directory)")
        self.cfg = cfg
        apply_process_options(cfg)
        self.rng = random.Random(cfg.run.seed)
        self.run_dir = Path(cfg.run.out_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tok = TextTokenizer.from_dir(cfg.data.processor)
        self.model = AFNext(scratch_config(cfg, tok))
        init_weights(self.model, cfg.model.init_std, uniform_attention=cfg.model.init_uniform_attention)
        self.model.generation_defaults = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                                          "max_new_tokens": 2048}
        self.processor = Processor(tok, kind="afnext" if self.model.config.rote is not None else "af3")
        if not Path(cfg.data.registry).is_file():
            raise TrainError(f"data.registry {cfg.data.registry!r}: file not found")
        self.dataset = ManifestDataset(build_mixture(cfg.data.mixture, Registry.load(cfg.data.registry), seed=cfg.run.seed))
        if len(self.dataset) == 0:
            raise TrainError(f"mixture {cfg.data.mixture!r} has no readable rows")
        # clips within the stage's audio cap (one pass over the manifest durations, no decoding)
        self.eligible = [i for i in range(len(self.dataset)) if self.dataset.record(i).sounds
                         and 0 < (self.dataset.record(i).total_duration or 0) <= cfg.data.max_audio_s]
        if not self.eligible:
            raise TrainError(f"mixture {cfg.data.mixture!r} has no audio clip of at most data.max_audio_s = "
                             f"{cfg.data.max_audio_s:g} s with a stated duration")
        frame_vocab, clip_vocab, word_vocab, pair_vocab = build_vocab(self.dataset)
        self.heads = EncoderHeads(self.model.config.encoder.hidden_size, frame_vocab, clip_vocab, word_vocab,
                                  pair_vocab, llm_dim=self.model.config.llm.hidden_size)
        lr = cfg.optim.lr.get("encoder", 1e-3)
        params = [*self.model.encoder.parameters(), *self.model.adapter.parameters(), *self.heads.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
        for g in self.optimizer.param_groups:
            g["initial_lr"] = lr
        self.order: list[int] = []
        self.metrics = MetricsLogger(self.run_dir / "metrics.jsonl", enabled=True, total_steps=cfg.optim.max_steps,
                                     progress=progress, stage=cfg.run.stage)
        (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        cfg.save(self.run_dir / "config.json")
        (self.run_dir / "heads.json").write_text(json.dumps({"frame": frame_vocab, "clip": clip_vocab,
                                                             "ctc_words": word_vocab, "ctc_pairs": pair_vocab},
                                                            indent=1) + "\n")

    def _next_items(self, n: int) -> list[dict]:
        items = []
        while len(items) < n:
            if not self.order:
                self.order = list(self.eligible)
                self.rng.shuffle(self.order)
            items.append(self.dataset[self.order.pop()])
        return items

    def _losses(self, items: list[dict]) -> dict[str, torch.Tensor]:
        waves = [it["waves"][0] for it in items]
        feats = self.processor(["<sound>"] * len(items), audio=waves)
        mask = feats["input_features_mask"]
        per_window = tokens_from_mel_frames(mask.sum(-1).long())
        # what the LLM will read: RoTE (when on) and the adapter, each window placed in its own clip
        n_windows = [max(1, math.ceil(len(wv) / (WINDOW_S * 16000))) for wv in waves]
        window_index = torch.cat([torch.arange(n) for n in n_windows])
        hidden: list[torch.Tensor | None] = [None] * len(per_window)
        adapted: list[torch.Tensor | None] = [None] * len(per_window)
        # Windows in sub-batches of similar length, as AFNext.encode does: each is trimmed to its longest
        # window, so the 2-s transcription clips do not pay for the full 30-s windows of the onset clips.
        for rows in length_groups(per_window, int(self.model.encoder_batch_windows)):
            h = self.model.encoder(feats["input_features"][rows], mask[rows])
            if self.model.rote is not None:
                h_placed = self.model.rote(h, window_index[rows], self.model.encoder.tokens_per_window)
            else:
                h_placed = h
            a = self.model.adapter(h_placed)
            for j, row in enumerate(rows.tolist()):
                n = max(1, int(per_window[row]))
                hidden[row], adapted[row] = h[j, :n], a[j, :n]
        frame_index = {t: i for i, t in enumerate(self.heads.frame_vocab)}
        clip_index = {t: i for i, t in enumerate(self.heads.clip_vocab)}
        frame_loss, clip_loss, ctc_loss, pair_loss, time_loss, event_loss = [], [], [], [], [], []
        event_index = {t: i for i, t in enumerate(self.heads.event_vocab)}
        w = 0
        for it, n_win in zip(items, n_windows):
            tokens = torch.cat(hidden[w: w + n_win])
            out_tokens = torch.cat(adapted[w: w + n_win])
            w += n_win
            # every window but the last is full, so token i of the clip starts at 40 i ms
            digits = time_digits(out_tokens.shape[0])
            logits = self.heads.time(out_tokens).unflatten(-1, (len(TIME_PLACES), 10))
            time_loss.append(F.cross_entropy(logits.flatten(0, 1), digits.flatten()))
            labels = (it.get("extra") or {}).get("labels") or {}
            times = torch.arange(tokens.shape[0], dtype=torch.float32) * TOKEN_STEP_S
            target = torch.zeros(tokens.shape[0], len(frame_index))
            for tag, a, b in frame_tags(labels):
                target[overlapping(times, a, b), frame_index[tag]] = 1.0
            frame_loss.append(F.binary_cross_entropy_with_logits(self.heads.frame(tokens), target))
            events = labels.get("events") or []
            if events and event_index:
                event_loss.append(event_class_loss(self.heads.event(out_tokens), event_classes(events, times, event_index)))
            ctags = clip_tags(labels)
            if ctags and clip_index:
                ct = torch.zeros(len(clip_index))
                ct[[clip_index[t] for t in ctags]] = 1.0
                clip_loss.append(F.binary_cross_entropy_with_logits(self.heads.clip(tokens.mean(0)), ct))
            tgt = ctc_target(labels, self.heads.word_index)
            if tgt is not None and len(tgt) <= tokens.shape[0]:
                ctc_loss.append(_ctc_per_symbol(self.heads.ctc(tokens), tgt))
            ptgt = pair_target(labels, self.heads.pair_index)
            if ptgt is not None and len(ptgt) <= out_tokens.shape[0]:
                pair_loss.append(_ctc_per_symbol(self.heads.pair_logits(out_tokens), ptgt))
        out = {"frame": torch.stack(frame_loss).mean(), "time": torch.stack(time_loss).mean()}
        if event_loss:
            out["event"] = torch.stack(event_loss).mean()
        if clip_loss:
            out["clip"] = torch.stack(clip_loss).mean()
        if ctc_loss:
            out["ctc"] = torch.stack(ctc_loss).mean()
        if pair_loss:
            out["pair"] = torch.stack(pair_loss).mean()
        return out

    def fit(self) -> Path:
        cfg = self.cfg
        with self.metrics:
            for step in range(1, cfg.optim.max_steps + 1):
                t0 = time.perf_counter()
                set_lr(self.optimizer, lr_factor(step - 1, cfg.optim.max_steps, cfg.optim.warmup_ratio, cfg.optim.min_lr_ratio))
                items = self._next_items(cfg.data.global_batch)
                losses = self._losses(items)
                loss = sum(losses.values())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
                self.optimizer.step()
                dt = time.perf_counter() - t0
                audio_s = sum(len(it["waves"][0]) for it in items) / 16000
                self.metrics.log({"step": step, "loss": loss.item(), **{f"loss_{k}": round(v.item(), 4) for k, v in losses.items()},
                                  "lr": {"encoder": self.optimizer.param_groups[0]["lr"]}, "grad_norm": float(grad_norm),
                                  "samples": len(items), "tokens": 0, "audio_s": audio_s, "step_s": dt,
                                  "tokens_per_s": 0.0, "audio_hours_per_s": audio_s / 3600 / dt})
        return self.export()

    def export(self) -> Path:
        out = self.run_dir / "final"
        tmp = out.with_name(".final-tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(self.model, tmp)
        write_tokenizer_files(tmp, self.processor.tokenizer.backend, kind="afnext" if self.model.config.rote is not None else "af3")
        (tmp / "training.json").write_text(json.dumps({"stage": self.cfg.run.stage, "step": self.cfg.optim.max_steps,
                                                       "objective": "encoder"}, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
        return out
