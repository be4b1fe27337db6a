"""Stage 0a (encoder pre-training): the targets it derives from the corpus labels."""

from __future__ import annotations

import pytest

from afnext.train.config import TrainConfig, TrainConfigError
from afnext.train.encoder_pretrain import clip_tags, ctc_target, frame_tags, transcript_words

EVENT_LABELS = {"events": [{"label": "beep", "onset_s": 1.5, "offset_s": 2.9, "gain_db": 0.0},
                           {"label": "chord", "onset_s": 6.1, "offset_s": 8.3, "timbre": "square"}],
                "class": "beep", "quality": "major", "root": "F#4", "duration_s": 14.0}
SPEECH_LABELS = {"gender": "male", "transcript": "0 6 7",
                 "segments": [{"text": "0 6 7", "language": "en", "gender": "male", "start_s": 0.2, "end_s": 1.95}]}


def test_frame_tags_time_stamp_every_source():
    assert frame_tags(EVENT_LABELS) == [("event:beep", 1.5, 2.9), ("event:chord", 6.1, 8.3), ("timbre:square", 6.1, 8.3)]
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
