"""experiments/onset_readout.py's building blocks on the shipped nano model and a synthesised onset clip:
single-token reads are asked exactly one token's time; span drills keep each event's whole span."""
from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest
import torch

from afnext.audio import TOKEN_SECONDS
from afnext.data.families import FAMILIES, item_seed
from afnext.data.tokenize import encode_sample
from afnext.eval.synthetic import predicted_onset
from afnext.model.afnext import IGNORE_INDEX, AFNext
from afnext.processor import Processor

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "nano-afnext"
sys.path.insert(0, str(ROOT / "experiments"))
onset_readout = pytest.importorskip("onset_readout")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = AFNext.from_pretrained(MODEL).float().eval()
    proc = Processor.from_pretrained(MODEL)
    item = FAMILIES["event_onset_short"].fn(item_seed(3, "test", "event_onset_short", 0), 0)
    sample = encode_sample(proc, item.conversations, item.audios, onset_readout.CAPS)
    clip = onset_readout.Clip(model, sample, events=item.extra["labels"]["events"])
    return model, proc, clip


def test_a_read_asks_one_token_its_time(setup):
    model, proc, clip = setup
    reads = onset_readout.Reads(model, proc)
    ids, labels, embeds = reads.batch([clip], 6, random.Random(5))
    picks = [reads.pick([clip], r)[1] for r in [random.Random(5)] for _ in range(6)]
    assert embeds.shape == (6, model.config.llm.hidden_size)
    for row, token in enumerate(picks):
        assert int((ids[row] == model.config.audio_token_id).sum()) == 1
        answer = labels[row][labels[row] != IGNORE_INDEX][:-1]  # the closing token left out
        assert predicted_onset(proc.decode(answer.tolist())) == pytest.approx(round(token * TOKEN_SECONDS, 1))
        with torch.no_grad():
            expected = model.adapter(clip.placed(model)[token])
        torch.testing.assert_close(embeds[row].detach(), expected)
    err = reads.median_error(proc, [clip], n=3)
    assert 0.0 <= err < 60.0


def test_span_drills_keep_whole_events(setup):
    model, proc, clip = setup
    n_audio = lambda ids: int((ids == model.config.audio_token_id).sum())  # noqa: E731
    onsets, _, _ = clip.drill(model, clip.events, 0, random.Random(0))
    spans, _, _ = clip.drill(model, clip.events, 0, random.Random(0), spans=True)
    whole = sum(math.ceil(e["offset_s"] / TOKEN_SECONDS - 1e-6) - math.floor(e["onset_s"] / TOKEN_SECONDS + 1e-6)
                for e in clip.events)
    assert len(clip.events) <= n_audio(onsets) <= 4 * len(clip.events)  # 120 ms from each onset: 3-4 tokens
    assert n_audio(spans) == whole  # events do not overlap in these scenes


def test_a_one_event_drill_asks_one_event_among_noise(setup):
    model, proc, _ = setup
    item = FAMILIES["event_onset_short"].fn(item_seed(3, "test", "event_onset_short", 0), 0)
    events = item.extra["labels"]["events"][::-1]  # asked in an order that is not time order
    conv = []
    for k, e in enumerate(events):
        conv += [{"from": "human", "value": ("<sound>\n" if k == 0 else "") + f"When does the {onset_readout.NOUN[e['label']]} start?"},
                 {"from": "gpt", "value": f"{e['onset_s']:.1f}s"}]
    sample = encode_sample(proc, conv, item.audios, onset_readout.CAPS)
    clip = onset_readout.Clip(model, sample, events=events)
    assert len(clip.events) >= 2  # otherwise the test could not tell kept events from dropped ones
    asked = clip.events[0]
    ids, labels, embeds = clip.drill(model, [asked], 12, random.Random(1))
    runs = onset_readout.answer_runs(labels)
    assert len(runs) == 1  # the conversation ends after the asked event's answer
    answer = labels[runs[0]][:-1]
    assert predicted_onset(proc.decode(answer.tolist())) == pytest.approx(asked["onset_s"], abs=0.05)
    # find each kept token in the whole clip by its embedding
    with torch.no_grad():
        full = clip.audio_embeds(model)
    kept = [int((full - row).abs().sum(-1).argmin()) for row in embeds.detach()]
    inside = lambda t, e: e["onset_s"] - 1e-6 <= t * TOKEN_SECONDS < e["offset_s"]  # noqa: E731
    onset_tokens = [t for t in kept if abs(t * TOKEN_SECONDS - asked["onset_s"]) < onset_readout.SPAN_S + TOKEN_SECONDS]
    assert onset_tokens, "the asked event's onset tokens are kept"
    others = [t for t in kept if t not in onset_tokens]
    assert len(others) == 12
    assert not any(inside(t, e) for t in others for e in clip.events)  # no distractor inside any event


def test_word_reads_pack_one_named_onset_token_per_read(setup):
    """Each word read holds one audio token at one of its event's onset tokens, asks for that event by
    name and is answered with the token's time; the grounding targets point at the name and the token."""
    from afnext.data.families.sound import NOUN

    model, proc, clip = setup
    reads = onset_readout.WordReads(model, proc)
    ids, labels, pos, cu, embeds, to_onset, to_word = reads.batch([clip], 5, random.Random(2))
    audio_id = model.config.audio_token_id
    assert ids.shape[0] == 1 and cu[0] == 0 and int(cu[-1]) == ids.shape[1] and len(cu) == 6
    assert embeds.shape == (5, model.config.llm.hidden_size) and int((ids == audio_id).sum()) == 5
    onsets = {round(e["onset_s"], 2): e["label"] for e in clip.events}
    for k in range(5):
        lo, hi = int(cu[k]), int(cu[k + 1])
        row, row_labels = ids[0, lo:hi], labels[0, lo:hi]
        assert pos[0, lo:hi].tolist() == list(range(hi - lo))
        (q, a_lo, a_hi, start), (qw, w_lo, w_hi, w_start) = to_onset[k], to_word[k]
        assert start == w_start == lo and a_hi == a_lo + 1 and ids[0, a_lo] == audio_id
        time = predicted_onset(proc.decode(row_labels[row_labels != IGNORE_INDEX][:-1].tolist()))
        label = min(onsets.items(), key=lambda kv: abs(kv[0] - time))[1]  # the event whose onset it is
        assert abs(time - min(onsets, key=lambda o: abs(o - time))) <= 0.2
        assert proc.decode(ids[0, w_lo:w_hi].tolist()).strip() == NOUN[label] and q.tolist() == [w_hi - 1]
        assert int(qw.min()) > w_hi and all(row_labels[int(p) - lo + 1] != IGNORE_INDEX for p in qw)
