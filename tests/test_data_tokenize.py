"""Training-sample construction: labels cover exactly the assistant answers, placeholders and audio agree,
caps drop or truncate as configured, and the prompt is the one inference builds."""

import numpy as np
import pytest
import torch

from afnext import audio as A
from afnext.data.tokenize import (AUDIO_TOO_LONG, BAD_AUDIO, BAD_CONVERSATION, NO_ANSWER, PLACEHOLDER_MISMATCH,
                                  TOO_MANY_TOKENS, DropCounter, Dropped, StageCaps, TrainSample, encode_sample)
from afnext.model.afnext import IGNORE_INDEX
from afnext.processor import Processor
from conftest import tone_mix

CAPS = StageCaps(max_audio_s=600, max_tokens=100_000)
KINDS = ("afnext", "af3")


@pytest.fixture(scope="module")
def procs(tiny_dirs):
    return {kind: Processor.from_pretrained(tiny_dirs[kind]) for kind in KINDS}


@pytest.fixture(scope="module")
def clips():
    return {s: tone_mix(s, seed=int(s)) for s in (3.0, 5.0, 40.0, 65.0)}


def labelled_spans(sample: TrainSample) -> list[list[int]]:
    """Contiguous runs of labelled ids (labels equal the ids they sit on)."""
    spans, cur = [], []
    for tok, lab in zip(sample.input_ids.tolist(), sample.labels.tolist()):
        if lab == IGNORE_INDEX:
            if cur:
                spans.append(cur)
            cur = []
        else:
            assert lab == tok
            cur.append(tok)
    return spans + ([cur] if cur else [])


def decoded_answers(proc, sample):
    return [proc.tokenizer.decode(s, skip_special_tokens=False) for s in labelled_spans(sample)]


def conv(*turns):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


@pytest.mark.parametrize("kind", KINDS)
def test_single_turn_labels_are_the_answer(procs, clips, kind):
    proc = procs[kind]
    s = encode_sample(proc, conv("<sound>\nWhat do you hear?", "A chirp, then bursts of a high tone."),
                      [clips[5.0]], CAPS, sample_id="x1", family="aqa")
    assert isinstance(s, TrainSample) and (s.id, s.family) == ("x1", "aqa")
    assert decoded_answers(proc, s) == ["A chirp, then bursts of a high tone.<|im_end|>"]
    assert s.input_ids.dtype == s.labels.dtype == torch.long and s.input_ids.ndim == 1
    assert s.input_features.shape == (1, 128, 3000) and s.input_features_mask.shape == (1, 3000)
    assert s.audio_seconds == [5.0] and not s.truncated


@pytest.mark.parametrize("kind", KINDS)
def test_multi_turn_labels_every_answer(procs, clips, kind):
    proc = procs[kind]
    answers = ["Two sounds.", "The second one is louder,\nby far."]
    s = encode_sample(proc, conv("<sound>\nHow many sounds?", answers[0], "Which is louder?", answers[1]),
                      [clips[3.0]], CAPS)
    assert decoded_answers(proc, s) == [a + "<|im_end|>" for a in answers]
    assert s.n_label_tokens == sum(len(x) for x in labelled_spans(s))
    # Nothing after each closing tag (the template's newline) and nothing of the user turns is a target.
    text = proc.tokenizer.decode(s.input_ids[s.labels == IGNORE_INDEX].tolist(), skip_special_tokens=False)
    assert "How many sounds?" in text and "Which is louder?" in text and "Two sounds." not in text


@pytest.mark.parametrize("kind", KINDS)
def test_system_prompt_present_or_absent(procs, clips, kind):
    proc = procs[kind]
    turns = conv("<sound>\nDescribe.", "Tones.")
    plain = encode_sample(proc, turns, [clips[3.0]], CAPS)
    custom = encode_sample(proc, turns, [clips[3.0]], CAPS, system="Answer tersely.")
    in_data = encode_sample(proc, [{"from": "system", "value": "Answer tersely."}] + turns, [clips[3.0]], CAPS)
    dec = lambda s: proc.tokenizer.decode(s.input_ids.tolist(), skip_special_tokens=False)  # noqa: E731
    assert proc.default_system_prompt in dec(plain)
    assert "Answer tersely." in dec(custom) and proc.default_system_prompt not in dec(custom)
    assert torch.equal(custom.input_ids, in_data.input_ids) and torch.equal(custom.labels, in_data.labels)
    for s in (plain, custom):
        assert decoded_answers(proc, s) == ["Tones.<|im_end|>"]


@pytest.mark.parametrize("kind", KINDS)
def test_audio_placeholders_masked_and_counted(procs, clips, kind):
    proc = procs[kind]
    s = encode_sample(proc, conv("<sound>\nTranscribe.", "Nothing to transcribe."), [clips[65.0]], CAPS)
    # 65 s = two full windows + 5 s: 750 + 750 + 125 tokens.
    assert s.input_features.shape[0] == 3 and s.n_audio_tokens == 1625
    is_audio = torch.isin(s.input_ids, torch.tensor(proc.audio_token_ids))
    assert int((s.input_ids == proc.audio_token_id).sum()) == 1625
    assert int(is_audio.sum()) == 1625 + (2 if kind == "afnext" else 0)
    assert bool((s.labels[is_audio] == IGNORE_INDEX).all())
    frames = s.input_features_mask.sum(-1).tolist()
    assert sum(A.num_tokens_from_frames(int(f)) for f in frames) == 1625


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_is_what_inference_builds(procs, clips, kind):
    """Everything before the first answer equals the processor's own chat-template prompt, audio included."""
    proc = procs[kind]
    s = encode_sample(proc, conv("<sound>What is this?", "A test tone."), [clips[40.0]], CAPS)
    ref = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "audio", "audio": clips[40.0]}, {"type": "text", "text": "What is this?"}]}])
    prompt = ref["input_ids"][0]
    assert torch.equal(s.input_ids[: len(prompt)], prompt)
    assert bool((s.labels[: len(prompt)] == IGNORE_INDEX).all()) and s.labels[len(prompt)] != IGNORE_INDEX
    torch.testing.assert_close(s.input_features, ref["input_features"])
    assert torch.equal(s.input_features_mask, ref["input_features_mask"])


@pytest.mark.parametrize("kind", KINDS)
def test_numbered_placeholders_bind_in_order_of_appearance(procs, clips, kind):
    proc = procs[kind]
    waves = [clips[3.0], clips[40.0]]  # manifest order; the text names the second one first
    s = encode_sample(proc, conv("Compare <sound-2> with <sound-1>.", "The first is longer."), waves, CAPS)
    assert isinstance(s, TrainSample)
    # Windows follow the placeholders: audio 2 (40 s: 750 + 250 tokens), then audio 1 (3 s: 75).
    assert s.input_features.shape[0] == 3
    tokens = [A.num_tokens_from_frames(int(f)) for f in s.input_features_mask.sum(-1)]
    assert tokens == [750, 250, 75] and s.audio_seconds == [40.0, 3.0]
    ids = s.input_ids.tolist()
    runs, n = [], 0
    for t in ids + [-1]:
        if t == proc.audio_token_id:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    assert runs == [1000, 75]  # (AF3 has no bos/eos; the text between keeps the runs apart there)
    expected = proc("x<sound>y<sound>", audio=[clips[40.0], clips[3.0]])
    torch.testing.assert_close(s.input_features, expected["input_features"])
    assert decoded_answers(proc, s) == ["The first is longer.<|im_end|>"]
    # Placeholders bind across turns: a later human turn may bring the next audio.
    s2 = encode_sample(proc, conv("<sound-2> first", "ok", "then <sound-1>?", "yes"), waves, CAPS)
    assert s2.audio_seconds == [40.0, 3.0] and s2.n_audio_tokens == 1000 + 75
    assert decoded_answers(proc, s2) == ["ok<|im_end|>", "yes<|im_end|>"]


@pytest.mark.parametrize("turns, n_waves", [
    (("<sound-3> and <sound-1>", "a"), 2),    # names a missing audio
    (("only <sound-1>", "a"), 2),             # audio 2 unused
    (("<sound> and <sound-2>", "a"), 2),      # mixed styles
    (("<sound>", "a"), 0),                    # placeholder without audio
    (("no placeholder", "a"), 1),             # audio without placeholder
    (("<sound>", "it is <sound>"), 1),        # placeholder inside an answer
    (("<sound-1>", "a", "<sound-1>", "b"), 1),  # the same audio named twice (the manifest rule)
])
def test_placeholder_mismatch_drops(procs, clips, turns, n_waves):
    out = encode_sample(procs["afnext"], conv(*turns), [clips[3.0]] * n_waves, CAPS)
    assert isinstance(out, Dropped) and out.reason == PLACEHOLDER_MISMATCH


@pytest.mark.parametrize("kind", KINDS)
def test_audio_cap_drop_vs_truncate(procs, clips, kind):
    proc = procs[kind]
    turns = conv("<sound>\nWhat happens?", "Tones.")
    dropped = encode_sample(proc, turns, [clips[65.0]], StageCaps(45, 100_000, "drop"))
    assert isinstance(dropped, Dropped) and dropped.reason == AUDIO_TOO_LONG
    s = encode_sample(proc, turns, [clips[65.0]], StageCaps(45, 100_000, "truncate"))
    # Cut to exactly 45 s: one full window + 15 s -> 750 + 375 tokens, and as many placeholders.
    assert s.truncated and s.audio_seconds == [45.0]
    assert s.input_features.shape[0] == 2 and s.n_audio_tokens == 1125
    assert int((s.input_ids == proc.audio_token_id).sum()) == 1125
    assert s.input_features_mask.sum(-1).tolist() == [3000, 1500]
    # A clip within the cap is untouched; the model's own limit bounds a larger cap.
    same = encode_sample(proc, turns, [clips[40.0]], StageCaps(45, 100_000, "truncate"))
    assert not same.truncated and same.audio_seconds == [40.0]
    huge = StageCaps(10_000, 100_000, "drop")
    long = np.zeros(int((proc.max_audio_len + 1) * A.SAMPLE_RATE), np.float32)
    assert encode_sample(proc, turns, [long], huge).reason == AUDIO_TOO_LONG


def test_max_tokens_drop_is_exact(procs, clips):
    proc = procs["afnext"]
    turns = conv("<sound>\nWhat happens?", "Tones.")
    n = len(encode_sample(proc, turns, [clips[5.0]], CAPS))
    assert isinstance(encode_sample(proc, turns, [clips[5.0]], StageCaps(600, n)), TrainSample)
    out = encode_sample(proc, turns, [clips[5.0]], StageCaps(600, n - 1, "truncate"))
    assert isinstance(out, Dropped) and out.reason == TOO_MANY_TOKENS


def test_sub_token_audio_tail_is_trimmed(procs):
    proc = procs["afnext"]
    turns = conv("<sound>\nHi", "Hello.")
    s = encode_sample(proc, turns, [tone_mix(30.01)], CAPS)  # the 160-sample tail would give no token
    assert s.input_features.shape[0] == 1 and s.audio_seconds == [30.0] and s.truncated
    assert encode_sample(proc, turns, [np.zeros(300, np.float32)], CAPS).reason == BAD_AUDIO


def test_conversation_problems_and_drop_counter(procs, clips):
    proc = procs["afnext"]
    counter = DropCounter()
    results = [
        encode_sample(proc, conv("<sound> hi"), [clips[3.0]], CAPS),                         # no answer
        encode_sample(proc, [{"from": "gpt", "value": "x"}], [], CAPS),                      # answer first
        encode_sample(proc, [{"from": "bot", "value": "x"}], [], CAPS),                      # unknown role
        encode_sample(proc, conv("<sound>", "a"), [clips[65.0]], StageCaps(30, 10_000)),      # too long
        encode_sample(proc, conv("<sound>", "a"), [np.full(16000, np.nan, np.float32)], CAPS),  # NaN audio
        encode_sample(proc, conv("hi", "hello", "<sound> bye"), [clips[3.0]], CAPS),          # trailing user turn
    ]
    kept = [counter.keep(r) for r in results]
    assert kept[:5] == [None] * 5 and isinstance(kept[5], TrainSample)
    assert counter.as_dict() == {NO_ANSWER: 1, BAD_CONVERSATION: 2, AUDIO_TOO_LONG: 1, BAD_AUDIO: 1}
    assert counter.total == 5 and counter[BAD_CONVERSATION] == 2
    # The trailing user turn (and its audio) is not part of the sample.
    assert kept[5].n_audio_tokens == 0 and kept[5].input_features.shape == (0, 128, 3000)
    assert decoded_answers(proc, kept[5]) == ["hello<|im_end|>"]


def test_caps_validation():
    with pytest.raises(ValueError):
        StageCaps(30, 8192, "cut")
    with pytest.raises(ValueError):
        StageCaps(0, 8192)
