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
(configs/nano/stage0_onset.toml, weight 0.2); the default speedrun stages leave them off.

The audio embeddings keep their graph, so the reads' gradient reaches the adapter and the encoder too.
A token's time is its index within its audio's run of placeholders times 40 ms: every window but an
audio's last is full, so the runs are contiguous in time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from afnext.audio import TOKEN_SECONDS
from afnext.data.tokenize import StageCaps, encode_sample
from afnext.model.afnext import IGNORE_INDEX
from afnext.processor import Processor

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


class TimeReads:
    """Builds read samples for one processor (its chat template around a one-token audio)."""

    def __init__(self, processor: Processor, audio_id: int, question: str = QUESTION):
        sample = encode_sample(processor, [{"from": "human", "value": "<sound>\n" + question},
                                           {"from": "gpt", "value": "0.0s"}],
                               [np.zeros(ONE_TOKEN_SAMPLES, np.float32)], StageCaps(max_audio_s=1.0, max_tokens=4096))
        if int((sample.input_ids == audio_id).sum()) != 1:
            raise ValueError("a 40-ms audio did not give exactly one audio token: time reads need it to")
        start = int((sample.labels != IGNORE_INDEX).nonzero()[0])
        answer_len = len(processor.tokenizer.encode("0.0s"))
        self.prefix = sample.input_ids[:start]
        self.close = sample.input_ids[start + answer_len:]  # the end-of-turn tokens, labelled like any answer's
        self.close_labels = sample.labels[start + answer_len:]
        self.encode, self.pad_id = processor.tokenizer.encode, processor.pad_token_id

    def batch(self, times: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (input_ids, labels) of one read per time; each row holds one audio placeholder."""
        rows = []
        for t in times:
            answer = torch.tensor(self.encode(f"{t:.1f}s"))
            rows.append((torch.cat([self.prefix, answer, self.close]),
                         torch.cat([torch.full_like(self.prefix, IGNORE_INDEX), answer, self.close_labels])))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, (r_ids, r_labels) in enumerate(rows):
            ids[i, : len(r_ids)], labels[i, : len(r_labels)] = r_ids, r_labels
        return ids, labels

    def loss(self, model, input_ids: torch.Tensor, audio_embeds: torch.Tensor, n: int,
             generator: torch.Generator) -> torch.Tensor | None:
        """Mean answer NLL (per labelled token) of ``n`` reads drawn from the audio tokens of a batch whose
        placeholders are ``input_ids`` and whose spliced audio embeddings are ``audio_embeds``; None when
        the batch has no audio."""
        times = token_times(input_ids.cpu(), model.config.audio_token_id)
        if times.numel() == 0 or audio_embeds is None or audio_embeds.shape[0] != times.numel():
            return None
        pick = torch.randint(0, times.numel(), (n,), generator=generator)
        ids, labels = self.batch(times[pick].tolist())
        ids, labels = ids.to(model.device), labels.to(model.device)
        # padding sits after each row's last label: causal attention never lets a label see it
        out = model(input_ids=ids, audio_embeds=audio_embeds[pick.to(audio_embeds.device)])
        return F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
