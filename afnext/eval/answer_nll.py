"""Teacher-forced answer loss: how likely a checkpoint finds the reference answers, per family.

Generation scores say how often a model is right; the answer loss says how far it is from the
references, and, measured on training items beside held-out ones, whether it has learnt the task or
memorised its clips. (The nano speedrun's command-word clips were memorised that way: 0.19 nats per
answer token on training clips against 1.07 held out, while WER alone only said "35 %".)

Each record becomes a sample exactly as the trainer builds it (``encode_sample``: the checkpoint's chat
template and its default system turn, labels on the assistant's answer through its end-of-turn
token), and the loss is the mean next-token NLL over those labels: the per-sample value the trainer
logs as ``family_loss`` with ``optim.loss_norm = "sample"``. Families report the mean over their records.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

from afnext.audio import load_audio
from afnext.data.tokenize import Dropped, StageCaps, encode_sample
from afnext.model.afnext import IGNORE_INDEX

# Evaluation takes every record whole: AF-Next's own limits (30 min of audio, 128K tokens).
EVAL_CAPS = StageCaps(max_audio_s=1800.0, max_tokens=131_072)


@torch.no_grad()
def answer_nll(model, processor, records) -> list[float]:
    """Per record (manifest ``Record``), the mean NLL (nats) of its reference answer tokens."""
    out = []
    for r in records:
        sample = encode_sample(processor, r.conversations, [load_audio(p) for p in r.sounds], EVAL_CAPS,
                               sample_id=r.id, family=r.extra.get("family"))
        if isinstance(sample, Dropped):
            raise ValueError(f"{r.id}: cannot score its answer: {sample.reason}: {sample.detail}")
        ids = sample.input_ids[None].to(model.device)
        labels = sample.labels.to(model.device)
        targets = torch.nonzero(labels[1:] != IGNORE_INDEX).flatten()  # logits at p predict token p + 1
        result = model(input_ids=ids, input_features=sample.input_features, input_features_mask=sample.input_features_mask,
                       logits_index=targets)
        out.append(float(F.cross_entropy(result.logits.float(), labels[targets + 1])))
    return out


def nll_by_family(records, losses: list[float]) -> dict[str, float]:
    """Mean of ``losses`` per ``family`` of ``records``."""
    groups: dict[str, list[float]] = defaultdict(list)
    for r, v in zip(records, losses):
        groups[r.extra.get("family", "unknown")].append(v)
    return {fam: sum(v) / len(v) for fam, v in sorted(groups.items())}
