"""Time reads: an auxiliary objective that teaches the LLM to read a time out of one audio token.

An opt-in training aid (``optim.read_batch``; 0, the default, turns it off). An onset answer ("12.4s")
needs two things of the LLM: finding the asked event's first audio tokens among up to 1,500, and
writing their time as digits. The grounding loss (``afnext.train.grounding``) supervises the finding;
this objective supervises the reading, apart from any finding. Each micro-batch, ``read_batch`` audio
tokens are drawn from the audio the batch has just encoded, and each becomes a tiny extra sample: a
prompt holding that one audio embedding (with its own RoTE time, since it is the adapter output the main
forward computed), the question ``QUESTION`` and, as the label, the token's start time ("23.4s"). The
LLM sees nothing else, so only the time code can answer it.

What it does and does not do, measured with ``experiments/onset_readout.py`` (the same reads, on a
frozen encoder): from a nano model whose LLM is still random, 100 steps of 64 reads make it write a
held-out token's time within 0.47 s (median), 200 steps within 0.20 s. Kept going beside the grounding
loss on 10-60-s onset clips, the reads stay at 0.24-0.5 s while the grounded head puts ~95 % of its
attention on the asked onset, yet the onset answers themselves stay near guessing: reading a lone
token does not by itself teach the answer to read the tokens the grounded head found. Beside word
grounding (``optim.grounding_mode = "word"``) they are part of the nano onset stage
(experiments/stage0_onset.toml, weight 0.2); the default speedrun stages leave them off.

``optim.read_event_words`` asks each read one of the onset questions about a named event instead, and
runs the word-grounding probes on it (the word's last token looks at the read's audio token in the
label layer, the answer at the word in the grounding layer): the circuit the grounded onset answers
use, with the finding made trivial, so that the cheap reads would train that circuit's reading. It did
not pay, measured 2026-12-07 with experiments/posttrain_onset.toml from the same midtrain2 export (600
steps, 32 reads a step): onset answer loss 1.03 against 1.05 at steps 401-500, held-out onset error
7.70 s against 8.75 s (5-15-s clips 1.25 against 1.55 s; n = 50 each, within run-to-run spread), MC
91.3 against 90.0 %, WER 12.0 against 10.0 %. Its read probes fall below 0.1 nats within 50 steps
while the clips' own word -> onset look-up stays at -log mass ~1.8: on the clips the look-up spreads
over the event's first tokens (a per-class linear pointer over the same frozen adapter outputs gets
no better, ~1.8 held out), so what a one-token read trains is not what the clips' answers read.

The audio embeddings keep their graph, so the reads' gradient reaches the adapter and the encoder too.
A token's time is its index within its audio's run of placeholders times 40 ms: every window but an
audio's last is full, so the runs are contiguous in time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from afnext.audio import TOKEN_SECONDS
from afnext.data.tokenize import StageCaps, encode_sample
from afnext.model.afnext import IGNORE_INDEX
from afnext.processor import Processor
from afnext.train.grounding import GroundingProbe, answer_spans, probe_attention, word_span

QUESTION = "When does the sound start?"
ONE_TOKEN_SAMPLES = 640  # 40 ms at 16 kHz: exactly one audio token


def token_times(input_ids: torch.Tensor, audio_id: int) -> torch.Tensor:
    """Start time (s) of each audio placeholder of ``input_ids`` (any shape, read in row-major order,
    the order audio embeddings are spliced in): its index within its run of placeholders x 40 ms."""
    flat = (input_ids.reshape(-1) == audio_id).long()
    if not int(flat.sum()):
        return torch.zeros(0)
    run_start = torch.cat([flat[:1], (flat[1:] - flat[:-1]).clamp(min=0)])  # 1 where a run begins
    run_id = torch.cumsum(run_start, 0)[flat.bool()] - 1  # 0 for the first run
    pos = torch.arange(flat.numel())[flat.bool()]
    first = run_start.nonzero().flatten()  # where each run begins
    return (pos - first[run_id]).double() * TOKEN_SECONDS


@dataclass(frozen=True)
class ReadGrounding:
    """The word-grounding probes run on event-word reads (``optim.read_event_words``): the event word's
    last token looks at the read's audio token in ``label_attn`` and the answer looks at that word in
    ``ground_attn``, the circuit the onset answers are grounded through (afnext.train.grounding)."""
    label_attn: torch.nn.Module
    ground_attn: torch.nn.Module
    heads: list[int]


@dataclass(frozen=True)
class _Prompt:
    prefix: torch.Tensor  # the read's tokens before its answer, one audio placeholder among them
    audio: int  # the placeholder's position
    word: tuple[int, int] | None  # [lo, hi) of the event word, for event-word reads
    close: torch.Tensor  # the end-of-turn tokens after the answer, labelled like any answer's
    close_labels: torch.Tensor


class TimeReads:
    """Builds read samples for one processor (its chat template around a one-token audio).

    ``event_words``: each read asks one of the onset questions about a named event (drawn per read)
    instead of ``question``, so that, with ``ReadGrounding``, a read exercises the same look-up an onset
    answer does (question word -> audio token -> answer) with the finding made trivial."""

    def __init__(self, processor: Processor, audio_id: int, question: str = QUESTION, *, event_words: bool = False):
        from afnext.data.families.sound import NOUN, ONSET_QUESTIONS

        self.encode, self.pad_id, self.audio_id = processor.tokenizer.encode, processor.pad_token_id, audio_id
        self.event_words = event_words
        asks = [(q.format(x=noun), noun) for q in ONSET_QUESTIONS for noun in sorted(set(NOUN.values()))] \
            if event_words else [(question, None)]
        self.prompts = [self._prompt(processor, q, noun) for q, noun in asks]

    def _prompt(self, processor: Processor, question: str, noun: str | None) -> _Prompt:
        sample = encode_sample(processor, [{"from": "human", "value": "<sound>\n" + question},
                                           {"from": "gpt", "value": "0.0s"}],
                               [np.zeros(ONE_TOKEN_SAMPLES, np.float32)], StageCaps(max_audio_s=1.0, max_tokens=4096))
        if int((sample.input_ids == self.audio_id).sum()) != 1:
            raise ValueError("a 40-ms audio did not give exactly one audio token: time reads need it to")
        start = int((sample.labels != IGNORE_INDEX).nonzero()[0])
        end = start + len(self.encode("0.0s"))
        prefix = sample.input_ids[:start]
        word = word_span(prefix, self.encode(" " + noun), start) if noun else None
        if noun and word is None:
            raise ValueError(f"the event word {noun!r} is not found in its read question {question!r}")
        return _Prompt(prefix, int((prefix == self.audio_id).nonzero()[0]), word, sample.input_ids[end:], sample.labels[end:])

    @property
    def prefix(self) -> torch.Tensor:
        return self.prompts[0].prefix

    def batch(self, times: list[float], prompts: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (input_ids, labels) of one read per time (``prompts``: which of ``self.prompts``
        each asks; the first by default); each row holds one audio placeholder."""
        rows = []
        for t, k in zip(times, prompts or [0] * len(times)):
            p = self.prompts[k]
            answer = torch.tensor(self.encode(f"{t:.1f}s"))
            rows.append((torch.cat([p.prefix, answer, p.close]),
                         torch.cat([torch.full_like(p.prefix, IGNORE_INDEX), answer, p.close_labels])))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, (r_ids, r_labels) in enumerate(rows):
            ids[i, : len(r_ids)], labels[i, : len(r_labels)] = r_ids, r_labels
        return ids, labels

    def probes(self, labels: torch.Tensor, prompts: list[int], grounding: ReadGrounding) -> list:
        """(attention module, GroundingProbe) pairs for a batch of event-word reads: per row, the word's
        last token looks at the audio token, and the answer's positions (the logits that predict its
        labelled tokens) look at the word."""
        to_audio, to_word = [], []
        for row, k in enumerate(prompts):
            p = self.prompts[k]
            lo, hi = answer_spans(labels[row])[0]
            to_audio.append((torch.tensor([p.word[1] - 1]), p.audio, p.audio + 1, 0, row))
            to_word.append((torch.arange(lo - 1, hi - 1), p.word[0], p.word[1], 0, row))
        return [(grounding.label_attn, GroundingProbe(grounding.heads, to_audio)),
                (grounding.ground_attn, GroundingProbe(grounding.heads, to_word))]

    def loss(self, model, input_ids: torch.Tensor, audio_embeds: torch.Tensor, n: int,
             generator: torch.Generator, grounding: ReadGrounding | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean answer NLL per labelled token, grounding loss or 0) of ``n`` reads drawn from the
        audio tokens of a batch whose placeholders are ``input_ids`` and whose spliced audio embeddings
        are ``audio_embeds``; None when the batch has no audio. The grounding loss is the two probes' mean
        -log attention mass over the reads, summed (unweighted: the trainer applies ``grounding_weight``)."""
        times = token_times(input_ids.cpu(), model.config.audio_token_id)
        if times.numel() == 0 or audio_embeds is None or audio_embeds.shape[0] != times.numel():
            return None
        pick = torch.randint(0, times.numel(), (n,), generator=generator)
        prompts = torch.randint(0, len(self.prompts), (n,), generator=generator).tolist()
        ids, labels = self.batch(times[pick].tolist(), prompts)
        probes = self.probes(labels, prompts, grounding) if grounding is not None and self.event_words else []
        ids, labels = ids.to(model.device), labels.to(model.device)
        with contextlib.ExitStack() as hooks:
            for attn, probe in probes:
                hooks.enter_context(probe_attention(attn, probe))
            # padding sits after each row's last label: causal attention never lets a label see it
            out = model(input_ids=ids, audio_embeds=audio_embeds[pick.to(audio_embeds.device)])
        nll = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        ground = sum((torch.stack(p.losses).mean() for _, p in probes if p.losses), torch.zeros((), device=nll.device))
        return nll, ground
