"""MMAU's string-match rule, corpus WER, and the synthetic benchmark's scoring on hand-made predictions."""

import json

import pytest

from afnext.data.manifest import read_manifest
from afnext.eval.metrics import corpus_wer, edit_distance, mmau_is_correct
from afnext.eval.synthetic import predicted_onset, score

CHOICES = ["Man", "Woman", "Child", "Old man"]


@pytest.mark.parametrize("prediction,answer,expected", [
    ("Man", "Man", True),
    ("(A) Man", "Man", True),                       # the letter is not a token of any choice
    ("A", "Man", False),                            # a bare letter does not contain the answer
    ("The speaker is a man.", "Man", True),
    ("old man", "Man", False),                      # contains "old", a token of the wrong choice "Old man"
    ("Old man", "Old man", True),                   # "man" is shared with the answer, so it is excused
    ("man or woman", "Man", False),
    ("", "Man", False),
    ("<think>Could be a woman or a child.</think>Man", "Man", True),   # reasoning stripped first
    ("<think>It is a man.</think>", "Man", False),  # nothing left after the reasoning
    ("MAN", "Man", True),
])
def test_mmau_rule(prediction, answer, expected):
    assert mmau_is_correct(prediction, answer, CHOICES) is expected


def test_wer_is_corpus_level():
    assert edit_distance("a b c".split(), "a x c d".split()) == 2
    # 1 error in 1 word + 0 errors in 9 words = 10 %, not the 50 % mean of per-utterance WERs
    assert corpus_wer([("one", "two"), ("a b c d e f g h i", "a b c d e f g h i")]) == pytest.approx(0.1)
    assert corpus_wer([("Hello, world!", "hello world")]) == 0.0


def test_predicted_onset_formats():
    assert predicted_onset("12.4s") == 12.4
    assert predicted_onset("It starts at 1:05.") == 65.0
    assert predicted_onset("<think>The knock is at 3.0s.</think>7.5") == 7.5
    assert predicted_onset("no idea") is None


def test_score_headline_on_handmade_predictions(tmp_path):
    rows = [
        {"id": "m1", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "Man"}],
         "family": "speaker_gender", "choices": ["Man", "Woman"], "answer": "Man"},
        {"id": "m2", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "Woman"}],
         "family": "speaker_gender", "choices": ["Man", "Woman"], "answer": "Woman"},
        {"id": "a1", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "1 2 3"}], "family": "asr_digits"},
        {"id": "a2", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "4 5 6"}], "family": "asr_digits"},
        {"id": "o1", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "10.0s"}],
         "family": "event_onset", "labels": {"onset_s": 10.0}},
        {"id": "o2", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "30.0s"}],
         "family": "event_onset", "labels": {"onset_s": 30.0}},
    ]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = read_manifest(path)
    report = score(records, ["Man", "Man", "1 2 3", "4 5", "10.5s", "no answer"])
    h = report["headline"]
    assert h["mc_accuracy"]["value"] == 0.5 and h["mc_accuracy"]["chance"] == 0.5
    assert h["asr_wer"]["value"] == pytest.approx(1 / 6)
    assert h["asr_wer"]["chance"] == 1.0
    # errors: 0.5 s, and the unparsable answer costs the clip's duration (0 here: no audio)
    assert report["families"]["event_onset"]["unparsable"] == 1
    assert h["onset_median_error_s"]["chance"] == 20.0
