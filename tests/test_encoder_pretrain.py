"""Stage 0a (encoder pre-training): the targets it derives from the corpus labels."""

from __future__ import annotations

import math

import pytest
import torch

from afnext.train.config import TrainConfig, TrainConfigError
from afnext.train.encoder_pretrain import (EncoderHeads, clip_tags, ctc_target, frame_tags, pair_target, time_digits,
                                           transcript_words, word_pairs)

EVENT_LABELS = {"events": [{"label": "beep", "onset_s": 1.5, "offset_s": 2.9, "gain_db": 0.0},
                           {"label": "chord", "onset_s": 6.1, "offset_s": 8.3, "timbre": "square"}],
                "class": "beep", "quality": "major", "root": "F#4", "duration_s": 14.0}
SPEECH_LABELS = {"gender": "male", "transcript": "0 6 7",
                 "segments": [{"text": "0 6 7", "language": "en", "gender": "male", "start_s": 0.2, "end_s": 1.95}]}


def test_frame_tags_time_stamp_every_source():
    assert frame_tags(EVENT_LABELS) == [("event:beep", 1.5, 2.9), ("onset:beep", 1.5, 1.62),
                                        ("event:chord", 6.1, 8.3), ("onset:chord", 6.1, 6.22), ("timbre:square", 6.1, 8.3)]
    # an event shorter than the onset span is tagged only while it lasts
    assert frame_tags({"events": [{"label": "knock", "onset_s": 3.0, "offset_s": 3.05}]})[1] == ("onset:knock", 3.0, 3.05)
    assert frame_tags(SPEECH_LABELS) == [("speech:male", 0.2, 1.95), ("language:en", 0.2, 1.95), ("speech", 0.2, 1.95)]
    assert frame_tags({}) == []


def test_clip_tags_take_scalar_string_labels_only():
    assert clip_tags(EVENT_LABELS) == ["class:beep", "quality:major", "root:F#4"]  # duration_s is a number
    assert clip_tags(SPEECH_LABELS) == ["gender:male"]


def test_ctc_targets_are_word_units_after_the_blank():
    vocab = {w: i + 1 for i, w in enumerate(["0", "6", "7", "apple", "pie"])}
    assert ctc_target(SPEECH_LABELS, vocab) == [1, 2, 3]
    assert transcript_words({"transcript": "Apple, pie!"}) == ["apple", "pie"]
    assert ctc_target({"transcript": "Apple, pie!"}, vocab) == [4, 5]
    assert ctc_target({"transcript": "unknown words"}, vocab) is None
    assert ctc_target({"transcript": "  "}, vocab) is None and ctc_target({}, vocab) is None


def test_word_pairs_frame_the_transcript():
    assert word_pairs(["3", "3", "5"]) == [("<s>", "3"), ("3", "3"), ("3", "5"), ("5", "</s>")]
    assert word_pairs([]) == []
    index = {p: i + 1 for i, p in enumerate(sorted(word_pairs(["0", "6", "7"])))}
    assert pair_target(SPEECH_LABELS, index) == [index[("<s>", "0")], index[("0", "6")], index[("6", "7")], index[("7", "</s>")]]
    assert pair_target({"transcript": "no words we know"}, index) is None and pair_target({}, index) is None


def test_time_digits_are_the_answer_digits_of_each_token_start():
    d = time_digits(1501)  # one 30-s window and the first token of the next
    assert d[0].tolist() == [0, 0, 0]
    assert d[2].tolist() == [0, 0, 0] and d[3].tolist() == [0, 0, 1]  # 80 ms, then 120 ms
    assert d[25].tolist() == [0, 1, 0]  # exactly 1.0 s: no float rounding below the boundary
    assert d[585].tolist() == [2, 3, 4]  # 23.4 s, written "23.4s"
    assert d[1500].tolist() == [6, 0, 0]


def test_pair_logits_sum_a_previous_and_a_current_word_score():
    import torch

    words = ["0", "6", "7"]
    pairs = sorted(word_pairs(words))
    heads = EncoderHeads(8, ["event:beep"], [], words, pairs, llm_dim=12)
    x = torch.randn(5, 12)
    logits = heads.pair_logits(x)
    assert logits.shape == (5, 1 + len(pairs))
    prev, cur = heads.pair_prev(x), heads.pair_cur(x)
    # "<s>" and "</s>" share index 0, each on its own side
    for j, (p, c) in enumerate(pairs):
        want = prev[:, heads.word_index.get(p, 0)] + cur[:, heads.word_index.get(c, 0)]
        torch.testing.assert_close(logits[:, 1 + j], want)
    torch.testing.assert_close(logits[:, 0], heads.pair_blank(x)[:, 0])


def test_objective_is_validated():
    with pytest.raises(TrainConfigError, match="run.objective must be 'lm' or 'encoder', got 'ctc'"):
        TrainConfig.from_dict({"run": {"objective": "ctc"}, "data": {"registry": "r.toml"}})


def test_uniform_attention_init_zeroes_only_the_llm_queries():
    """With zero queries every LLM layer attends uniformly over its causal prefix at step 0; the keys stay
    random so the queries receive gradient (a zero key as well would leave both stuck at zero)."""
    import torch

    from afnext.model.afnext import AFNext
    from afnext.testing import tiny_config
    from afnext.train.loop import init_weights

    ids = {"<|endoftext|>": 1, "<|im_end|>": 2, "<sound>": 3, "<|sound_bos|>": 4, "<|sound_eos|>": 5}
    from afnext.tokenizer_files import EOS_TOKEN, PAD_TOKEN

    ids.update({EOS_TOKEN: 2, PAD_TOKEN: 1})
    model = AFNext(tiny_config("afnext", 64, ids))
    init_weights(model, 0.1, uniform_attention=True)
    for name, p in model.named_parameters():
        if name.startswith("llm.") and ".self_attn.q_proj." in name:
            assert torch.count_nonzero(p) == 0, name
        elif name.startswith("llm.") and ".self_attn.k_proj.weight" in name:
            assert p.std() > 0.05, name
    enc_q = [p for n, p in model.named_parameters() if n.startswith("encoder.") and "q_proj.weight" in n]
    assert enc_q and all(p.std() > 0.05 for p in enc_q)  # the encoder keeps its random queries
    init_weights(model, 0.1)
    assert all(torch.count_nonzero(p) > 0 for n, p in model.named_parameters() if ".self_attn.q_proj.weight" in n)


def test_length_groups_keep_short_windows_away_from_full_ones():
    import torch

    from afnext.train.encoder_pretrain import length_groups

    groups = length_groups(torch.tensor([750, 50, 60, 750, 300, 700, 40, 749]), 3)
    assert [g.tolist() for g in groups] == [[0, 3, 7], [5], [4], [2, 1, 6]]
    assert sorted(i for g in groups for i in g.tolist()) == list(range(8))  # every window exactly once
    assert [g.tolist() for g in length_groups(torch.tensor([5, 5, 5]), 0)] == [[0], [1], [2]]


def test_event_classes_mark_each_events_tokens_and_weigh_events_as_much_as_the_rest():
    from afnext.train.encoder_pretrain import event_class_loss, event_classes

    times = torch.arange(10) * 0.04
    cls = event_classes([{"label": "bell", "onset_s": 0.05, "offset_s": 0.12}, {"label": "beep", "onset_s": 0.30, "offset_s": 0.5}],
                        times, {"beep": 0, "bell": 1})
    assert cls.tolist() == [2, 1, 1, 2, 2, 2, 2, 0, 0, 0]  # token 1 (0.04-0.08 s) overlaps the bell from 0.05 s
    logits = torch.zeros(10, 3)
    logits[cls == 2, 2] = 10.0  # every "none" token right, every event token at chance
    # the event half alone carries the loss: 0.5 x log 3, however few the event tokens are
    assert float(event_class_loss(logits, cls)) == pytest.approx(0.5 * math.log(3), abs=1e-3)
