import pytest

from afnext.think import (
    Evidence,
    ThinkOutput,
    extract_evidence,
    parse_think_output,
    parse_timestamp,
    split_reasoning,
)


def spans(text, duration_s=None):
    return [(e.start_s, e.end_s) for e in extract_evidence(text, duration_s)]


# ------------------------------------------------------------------ split_reasoning

@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>a dog barks at 3s</think> A dog.", ("a dog barks at 3s", "A dog.")),
        ("\n <think>\n reason \n</think>\n\n answer \n", ("reason", "answer")),
        ("<THINK>r</Think>a", ("r", "a")),
        ("< think >r< / think >a", ("r", "a")),
        ("mid-reasoning text </think> The answer.", ("mid-reasoning text", "The answer.")),
        ("<think>hit max tokens at 1:05 and", ("hit max tokens at 1:05 and", "")),
        ("<think>a</think> x <think>b</think> y", ("a\nb", "x\ny")),
        ("<think>a</think><think>b</think>ans", ("a\nb", "ans")),
        ("  plain answer, no tags  ", (None, "plain answer, no tags")),
        ("<think></think> ans", ("", "ans")),
        ("<think>  </think>", ("", "")),
        ("", (None, "")),
        # a redundant open tag inside a block is dropped, not kept as text
        ("<think>a <think>b</think>c", ("a b", "c")),
    ],
)
def test_split_reasoning(text, expected):
    assert split_reasoning(text) == expected


# ------------------------------------------------------------------ parse_timestamp

@pytest.mark.parametrize(
    "s, expected",
    [
        ("12.3s", 12.3),
        ("12.3 s", 12.3),
        ("12 sec", 12.0),
        ("12 secs", 12.0),
        ("12 seconds", 12.0),
        ("1 second", 1.0),
        ("12S", 12.0),
        ("1:05", 65.0),
        ("00:45", 45.0),
        ("01:02:03", 3723.0),
        ("1:02:03.5", 3723.5),
        ("1:05.25", 65.25),
        ("65.2", 65.2),
        ("  7 ", 7.0),
        ("-2s", -2.0),
    ],
)
def test_parse_timestamp(s, expected):
    assert parse_timestamp(s) == pytest.approx(expected)


@pytest.mark.parametrize(
    "s", ["", "abc", "12 Hz", "1:75", "1:5", "1:02:75", "1.5:30", "12..3", "1:2:3:4", "s", "12 ms"]
)
def test_parse_timestamp_junk(s):
    with pytest.raises(ValueError):
        parse_timestamp(s)


# ------------------------------------------------------------------ extract_evidence

@pytest.mark.parametrize(
    "text, expected",
    [
        ("The horn sounds at 12.3s.", [(12.3, 12.3)]),
        ("The horn sounds at 12.3 s.", [(12.3, 12.3)]),
        ("About 12 sec in.", [(12.0, 12.0)]),
        ("After 12 seconds a bell rings.", [(12.0, 12.0)]),
        ("A cough at 1:05.", [(65.0, 65.0)]),
        ("A cough at 01:02:03.", [(3723.0, 3723.0)]),
        ("A cough at 1:02:03.5.", [(3723.5, 3723.5)]),
        ("Speech [11.0 - 14.0] is calm.", [(11.0, 14.0)]),
        ("Speech [11.0s-14.0s] is calm.", [(11.0, 14.0)]),
        ("Speech [11.0, 14.0] is calm.", [(11.0, 14.0)]),
        ("The solo (1:00\u20131:30) is loud.", [(60.0, 90.0)]),
        ("The solo (1:00 to 1:30) is loud.", [(60.0, 90.0)]),
        ("The solo runs from 1:00 to 1:30.", [(60.0, 90.0)]),
        ("Rain falls between 10.7 s and 16.9 s.", [(10.7, 16.9)]),
        ("Rain falls 10.7-16.9 seconds in.", [(10.7, 16.9)]),
        ("Rain falls 10.7\u201416.9s in.", [(10.7, 16.9)]),
        ("Rain falls 1:00-1:30.", [(60.0, 90.0)]),
        ("Rain from 0:10 until 0:20.", [(10.0, 20.0)]),
        ("A door slams at 00:45.", [(45.0, 45.0)]),
        ("A door slams <t=12.5> here.", [(12.5, 12.5)]),
        # two points joined by "and" without "between" stay two points
        ("Claps at 1:00 and 1:30.", [(60.0, 60.0), (90.0, 90.0)]),
        # reversed range normalised to start <= end
        ("Speech [14.0 - 11.0].", [(11.0, 14.0)]),
        # "covered" means textually: a separate mention inside the interval is kept
        ("From 2 s to 5 s, peaking at 3 s.", [(2.0, 5.0), (3.0, 3.0)]),
        # the same range twice in one clause is a duplicate
        ("between 1:00 and 1:30 (1:00-1:30)", [(60.0, 90.0)]),
    ],
)
def test_extract_formats(text, expected):
    assert spans(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "There are 3 dogs.",
        "The tempo is 120 BPM.",
        "A 440 Hz tone.",
        "Recorded in 2024.",
        "This is version 1.5 of the song.",
        "The answer is 4.",
        "Music of the 1980s.",
        "Classic '80s synths.",
        "The count goes from 3 to 5 dogs.",
        "Between 2020 and 2024 it was popular.",
        "Pages 10-12.",
        "An aspect ratio of 3:2.",
        "Five songs, 5 songs.",
        "A 500 ms click.",
        "A 500ms click.",
        "Bar x-3s.",
        "",
    ],
)
def test_extract_negative(text):
    assert extract_evidence(text) == []


def test_bare_range_needs_cue_on_end():
    # "3 s - 5 dogs" is a point followed by a count, not a range
    assert spans("A bark at 3 s - 5 dogs join.") == [(3.0, 3.0)]


def test_clause_text_order_and_dedup():
    text = "Dog at 3.0s. Cat at 5.0s; bird at 3.0s!\nDog again at 3.0s, and at 3.0s."
    ev = extract_evidence(text)
    assert [(e.start_s, e.text) for e in ev] == [
        (3.0, "Dog at 3.0s."),
        (5.0, "Cat at 5.0s;"),
        (3.0, "bird at 3.0s!"),
        (3.0, "Dog again at 3.0s, and at 3.0s."),  # duplicate in same clause dropped
    ]


def test_clause_does_not_split_on_decimal_point():
    (e,) = extract_evidence("First a hum. Then a beep at 12.5 s and silence. End.")
    assert e.text == "Then a beep at 12.5 s and silence."


def test_out_of_range():
    text = "A at 9 s. B at 10.04 s. C at 10.2 s. D [8.0 - 12.0]. E at -1 s."
    assert [e.out_of_range for e in extract_evidence(text, duration_s=10.0)] == [
        False, False, True, True, True,
    ]
    # without a duration only negatives are flagged
    assert [e.out_of_range for e in extract_evidence(text)] == [False, False, False, False, True]
    # tolerance is 50 ms
    assert extract_evidence("at 10.05 s", 10.0)[0].out_of_range is False
    assert extract_evidence("at 10.06 s", 10.0)[0].out_of_range is True


def test_evidence_to_dict():
    (e,) = extract_evidence("The siren wails (1:00\u20131:30) loudly.", duration_s=80.0)
    assert e.to_dict() == {
        "start_s": 60.0,
        "end_s": 90.0,
        "text": "The siren wails (1:00\u20131:30) loudly.",
        "out_of_range": True,
    }
    assert Evidence(1.0, 1.0, "x").to_dict() == {
        "start_s": 1.0, "end_s": 1.0, "text": "x", "out_of_range": False,
    }


# ------------------------------------------------------------------ parse_think_output

def test_parse_think_output():
    text = (
        "<think>\nA dog barks at 2.5s. Then rain [4.0 - 9.0]. 3 dogs total.\n</think>\n"
        "Rain starts at 4.0 s, after a bark."
    )
    out = parse_think_output(text, duration_s=8.0)
    assert isinstance(out, ThinkOutput)
    assert out.reasoning == "A dog barks at 2.5s. Then rain [4.0 - 9.0]. 3 dogs total."
    assert out.answer == "Rain starts at 4.0 s, after a bark."
    assert out.to_dict() == {
        "reasoning": "A dog barks at 2.5s. Then rain [4.0 - 9.0]. 3 dogs total.",
        "answer": "Rain starts at 4.0 s, after a bark.",
        "evidence": [
            {"start_s": 2.5, "end_s": 2.5, "text": "A dog barks at 2.5s.", "out_of_range": False},
            {"start_s": 4.0, "end_s": 9.0, "text": "Then rain [4.0 - 9.0].", "out_of_range": True},
            {"start_s": 4.0, "end_s": 4.0, "text": "Rain starts at 4.0 s, after a bark.",
             "out_of_range": False},
        ],
    }


def test_parse_think_output_no_tags_and_dedup_across_parts():
    out = parse_think_output("A bell at 1:05.")
    assert out.reasoning is None and out.answer == "A bell at 1:05."
    assert [(e.start_s, e.text) for e in out.evidence] == [(65.0, "A bell at 1:05.")]
    # answer repeating a reasoning clause verbatim yields one evidence item
    out = parse_think_output("<think>A bell at 1:05.</think>A bell at 1:05.")
    assert len(out.evidence) == 1


def test_parse_think_output_unterminated():
    out = parse_think_output("<think>Speech between 1 s and 2 s, then", duration_s=5)
    assert out.answer == ""
    assert [(e.start_s, e.end_s) for e in out.evidence] == [(1.0, 2.0)]
