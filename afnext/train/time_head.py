"""Time-digit head: an auxiliary objective that keeps every audio token's time *linearly* readable where
the LLM reads it (``optim.time_head_weight``; 0, the default, turns it off).

Why. An onset answer carries the asked event's time from its first audio token to the answer through two
attention hops (the event word looks at the onset token, the answer at the word; see
``afnext.train.grounding``), and an attention hop moves a *linear* projection of the token it looks at.
So the answer can only be as precise as a linear read of the token's time. Stage 0a trains exactly that
read (``afnext.train.encoder_pretrain``, its time-digit head), but the LLM stages then let it decay:
a linear probe of the time digits on 120 held-out onset clips (``experiments/time_probe.py``, 2026-12-07)
reads 0.16 s median / 1.24 s mean after stage 0a, 0.48 / 4.44 s after stage 0b and 0.48 / 4.64 s after
midtrain2, and the onset post-training spends ~1,000 steps bringing it back (0.12 / 0.44 s after 2,400
steps) while its onset answers stay at guessing. The look-up itself is not what fails: in that
post-trained model the word puts 99.9 % of its layer-0 attention on the single onset token even for the
answers more than 1 s off.

The head is a linear layer on the adapter output (the tokens the main forward already computed, RoTE
included), scored by cross-entropy on the tens, units and tenths of each token's start time; it has its
own AdamW and follows the trainer's learning-rate schedule. It is discarded at export; checkpoints keep
it (with its optimizer) so that ``--resume`` stays exact.

Measured 2026-12-07 (configs/nano/posttrain.toml from the same midtrain2 export, one 600-step cycle at
lr 2e-3, the same data order, 2 cores): with the head (weight 1) the held-out onset error is 2.20 s
against 4.95 s without (18 against 8 of 50 answers within 1 s), the onset answer loss leaves guessing
sooner (0.92 nats/token over steps 501-600 against 1.05, a level lr 2e-3 alone reaches after ~1,150
steps), the time reads' loss is 0.42 against 0.62, and the linear probe reads 0.06 s / 0.35 s (median / mean) against
0.24 / 1.62 s. Multiple choice 89.3 against 91.3 %, WER 23.1 against 16.7 % (n = 100; a 1,200-step run
at lr 2e-3 without the head also ended at 23.5 %, and 600 steps at 1e-3 at 15.5 %).

The word time head (``optim.word_time_weight``) is the same head at the next hop: on the hidden state
after the word grounding's look-up layer, at the asked event's word, trained on that event's onset
digits. It supervises what the look-up carries to the word, not only where it looks. Measured the same
way (600 steps, lr 1e-3, both heads against the time head alone): held-out onset error 0.60 s against
2.60 s, MC 92.0 against 95.3 %, WER 12.7 against 15.7 %; the onset answer loss 0.74 nats/token over
steps 551-600 against 1.00. Both heads in every stage from stage 0b on (the time head only; the word
head needs onset items) kept the linear time code (its loss 0.15 against 0.77 over post-training steps
301-350) but cost the recipe 9 points of multiple choice (78.7 against 88.0 %; sound class 72 against
96 %) and did not speed the post-training's onset answers (1.08 against 1.06 nats/token at steps
301-350): the heads stay in the post-training only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from afnext.audio import TOKEN_SECONDS
from afnext.train.encoder_pretrain import TIME_PLACES as PLACES, index_time_digits
from afnext.train.reads import token_times


def audio_token_index(input_ids: torch.Tensor, audio_id: int) -> torch.Tensor:
    """(audio tokens,) each audio placeholder's index within its own audio, in splice order."""
    return torch.round(token_times(input_ids, audio_id) / TOKEN_SECONDS).long()


def time_digit_targets(input_ids: torch.Tensor, audio_id: int) -> torch.Tensor:
    """(audio tokens, 3): tens, units and tenths of each audio placeholder's start time, in splice order
    (the digits stage 0a's time head learns)."""
    return index_time_digits(audio_token_index(input_ids, audio_id))


class TimeHead:
    """The linear head, its optimizer and its loss. The trainer also uses one at the asked event's word
    after the word grounding's look-up layer (``optim.word_time_weight``): there it reads the onset time
    the look-up brought to the word, the value the answer has to copy."""

    def __init__(self, dim: int, *, lr: float, betas: tuple[float, float], weight_decay: float):
        self.linear = nn.Linear(dim, 10 * len(PLACES))
        with torch.no_grad():  # zeros: every digit starts at ln 10 (the head passes no gradient on its first step)
            self.linear.weight.zero_()
            self.linear.bias.zero_()
        self.optimizer = torch.optim.AdamW(self.linear.parameters(), lr=lr, betas=betas, weight_decay=weight_decay,
                                           foreach=False)
        for g in self.optimizer.param_groups:
            g["initial_lr"] = lr

    def loss(self, input_ids: torch.Tensor, audio_embeds: torch.Tensor, audio_id: int) -> torch.Tensor | None:
        """Mean cross-entropy per digit over the micro-batch's audio tokens; None when it has none."""
        if audio_embeds is None or audio_embeds.shape[0] == 0:
            return None
        index = audio_token_index(input_ids.cpu(), audio_id)
        if index.shape[0] != audio_embeds.shape[0]:
            raise ValueError(f"time head: {index.shape[0]} audio placeholders but {audio_embeds.shape[0]} audio embeddings")
        return self.loss_at(audio_embeds, index)

    def loss_at(self, features: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy per digit of the times of audio tokens ``token_index`` (within their audio),
        read from ``features`` (one row per token asked)."""
        target = index_time_digits(token_index.cpu()).to(features.device)
        logits = self.linear(features.float()).unflatten(-1, (len(PLACES), 10))
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())

    def step(self, lr_factor: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * lr_factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"linear": self.linear.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.linear.load_state_dict(state["linear"])
        self.optimizer.load_state_dict(state["optimizer"])
