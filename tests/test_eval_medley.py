"""Medley-Solos-DB reader and label-matching scorer on a tiny CSV + WAV fixture."""

import shutil
from pathlib import Path

import pytest

from afnext.eval.benchmarks import BENCHMARKS, get_benchmark
from afnext.eval.benchmarks.medley_solos import CLASSES, OTHER, PROMPT, is_correct, named_classes, predicted_label
from afnext.eval.runner import check_audio, run_benchmark

FIXTURE = Path(__file__).parent / "fixtures" / "medley_solos"


@pytest.fixture
def bench():
    return get_benchmark("medley-solos-db")


@pytest.fixture
def items(bench):
    return bench.load(FIXTURE)


def test_registered():
    assert "medley-solos-db" in BENCHMARKS


def test_load_test_subset(bench, items):
    assert len(items) == 9  # test rows only, in file order
    assert [it.reference["instrument"] for it in items] == list(CLASSES) + ["piano"]
    it = items[1]
    assert it.id == "f7c1bd87-4da5-4709-9471-3d60c8a70639"
    assert it.audio == (FIXTURE / "audio" / f"Medley-solos-DB_test-1_{it.id}.wav",)
    assert it.prompt == PROMPT and all(c in PROMPT for c in CLASSES)
    check_audio(items)  # every test clip of the fixture exists
    assert [i.id for i in bench.load(FIXTURE / "Medley-solos-DB_metadata.csv", limit=3)] == [i.id for i in items[:3]]


def test_load_flat_layout_and_errors(tmp_path, bench):
    shutil.copy(FIXTURE / "Medley-solos-DB_metadata.csv", tmp_path / "meta.csv")
    assert bench.load(tmp_path)[0].audio[0].parent == tmp_path  # no audio/ folder: clips next to the CSV
    (tmp_path / "bad.csv").write_text("subset,instrument,instrument_id,uuid4\ntest,cello,8,x\n")
    with pytest.raises(FileNotFoundError):
        bench.load(tmp_path)  # two CSVs, none with the default name
    with pytest.raises(ValueError, match="cello"):
        bench.load(tmp_path / "bad.csv")


@pytest.mark.parametrize("pred,ref,ok", [
    ("piano", "piano", True),
    ("Piano.", "piano", True),
    ("The instrument playing is a PIANO!", "piano", True),
    ("<think>sustained reed tone</think>Tenor saxophone", "tenor saxophone", True),
    ("sax", "tenor saxophone", True),
    ("a saxophone solo", "tenor saxophone", True),
    ("electric guitar", "distorted electric guitar", True),
    ("Distorted-electric guitar", "distorted electric guitar", True),
    ("guitar", "distorted electric guitar", False),  # plain guitar is not accepted
    ("acoustic guitar", "distorted electric guitar", False),
    ("a female voice singing", "female singer", True),
    ("vocals", "female singer", True),
    ("male singer", "female singer", False),  # a non-class, not the female-singer class
    ("violins", "violin", True),
    ("fiddle", "violin", True),
    ("piano or violin", "piano", False),  # two classes named
    ("not the piano, it is a violin", "violin", False),
    ("clarinet", "flute", False),
    ("", "flute", False),
    ("I cannot tell", "flute", False),
])
def test_label_matching(pred, ref, ok):
    assert is_correct(pred, ref) is ok


def test_named_classes():
    assert named_classes("tenor sax and trumpet") == {"tenor saxophone", "trumpet"}
    assert named_classes("a male voice") == {OTHER}
    assert predicted_label("flute") == "flute"
    assert predicted_label("hmm") == "<none>" and predicted_label("flute, piano") == "<multiple>"


def test_score(bench, items):
    preds = {it.id: it.reference["instrument"] for it in items}
    report = bench.score(items, preds)
    assert report["headline"]["accuracy"] == {"value": 1.0, "n": 9, "correct": 9}
    ids = {it.reference["instrument"]: it.id for it in items}  # last piano wins
    preds[ids["piano"]] = "violin"
    preds[ids["tenor saxophone"]] = "Sax."
    preds[ids["flute"]] = "flute or clarinet"
    del preds[ids["trumpet"]]
    report = bench.score(items, preds)
    assert report["missing"] == [ids["trumpet"]]
    assert report["headline"]["accuracy"]["correct"] == 6
    assert report["headline"]["accuracy"]["value"] == pytest.approx(6 / 9)
    inst = report["breakdowns"]["instrument"]
    assert list(inst) == list(CLASSES)
    assert inst["piano"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert inst["tenor saxophone"]["accuracy"] == 1.0
    assert inst["flute"]["accuracy"] == inst["trumpet"]["accuracy"] == 0.0
    assert sum(g["n"] for g in inst.values()) == 9
    pred = report["breakdowns"]["predicted"]
    assert pred["<multiple>"] == {"n": 1} and pred["<missing>"] == {"n": 1} and pred["violin"] == {"n": 2}


def test_runner_end_to_end(tmp_path, bench):
    result = run_benchmark(bench, "unused", FIXTURE, tmp_path / "out",
                           predictor=lambda batch: [f"It is a {it.reference['instrument']}." for it in batch])
    assert result["report"]["headline"]["accuracy"]["value"] == 1.0
