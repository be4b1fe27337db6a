"""The MMAU reader and scorer on the real test-mini metadata (1000 records, no audio needed)."""

from pathlib import Path

import pytest

from afnext.eval.benchmarks import BENCHMARKS, get_benchmark
from afnext.eval.benchmarks.mmau import format_prompt
from afnext.eval.metrics import tokens

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mmau" / "mmau-test-mini.json"
pytestmark = pytest.mark.skipif(not FIXTURE.is_file(), reason=f"MMAU test-mini metadata not found at {FIXTURE}")


@pytest.fixture(scope="module")
def items():
    return get_benchmark("mmau").load(FIXTURE.parent)


def _acc(items, preds):
    return get_benchmark("mmau").score(items, preds)["headline"]["accuracy"]["value"]


def test_registry():
    assert {"mmau", "synthetic"} <= set(BENCHMARKS)
    with pytest.raises(KeyError, match="known: .*mmau"):
        get_benchmark("nope")


def test_load_real_file(items):
    assert len(items) == 1000
    assert len({it.id for it in items}) == 1000
    it = items[0]
    assert it.audio == (FIXTURE.parent / "test-mini-audios" / f"{it.id}.wav",)
    assert "(A) " + it.reference["choices"][0] in it.prompt and "(B) " + it.reference["choices"][1] in it.prompt
    assert all(isinstance(i.reference["category"], list) for i in items)
    assert get_benchmark("mmau").load(FIXTURE, limit=7)[6].id == items[6].id  # file path works too; limit keeps file order


def test_prompt_layout():
    assert format_prompt(" Q? ", ["x", "y"]).splitlines()[:3] == ["Q?", "(A) x", "(B) y"]


def test_verbatim_answers_score_100(items):
    assert _acc(items, {it.id: it.reference["answer"] for it in items}) == 1.0


def test_wrong_choice_scores_0(items):
    # A wrong choice whose tokens all occur in the answer ("twenty" vs "twenty-three") passes MMAU's
    # rule, so pick one with a token of its own. One real item has none: its choices are permutations
    # of the same four labels, and the official rule scores any of them correct.
    preds, unavoidable = {}, []
    for it in items:
        wrong = [c for c in it.reference["choices"] if c != it.reference["answer"]]
        own = [c for c in wrong if tokens(c) - tokens(it.reference["answer"])]
        preds[it.id] = (own or wrong)[0]
        if not own:
            unavoidable.append(it.id)
    assert len(unavoidable) == 1
    rep = get_benchmark("mmau").score(items, preds)
    assert rep["headline"]["accuracy"]["correct"] == len(unavoidable)
    rep = get_benchmark("mmau").score(items, {k: v for k, v in preds.items() if k not in unavoidable})
    assert rep["headline"]["accuracy"]["value"] == 0.0


def test_prediction_forms(items):
    bench = get_benchmark("mmau")
    it = next(i for i in items if i.reference["answer"] == "Man" and "Woman" in i.reference["choices"])
    wrong = next(c for c in it.reference["choices"] if c != "Man")
    cases = {
        "(A) Man": True,
        f"Man or {wrong}": False,               # contains a wrong choice too
        f"<think>maybe {wrong}</think>Man": True,  # reasoning stripped first
        "": False,
    }
    for pred, expected in cases.items():
        rep = bench.score([it], {it.id: pred})
        assert rep["headline"]["accuracy"]["value"] == float(expected), pred
    rep = bench.score([it], {})  # no prediction: wrong and listed
    assert rep["headline"]["accuracy"]["value"] == 0.0 and rep["missing"] == [it.id]


def test_breakdowns(items):
    rep = get_benchmark("mmau").score(items, {it.id: it.reference["answer"] for it in items})
    b = rep["breakdowns"]
    assert sum(g["n"] for g in b["task"].values()) == 1000
    assert set(b["task"]) == {"sound", "music", "speech"}
    assert sum(g["n"] for g in b["difficulty"].values()) == 1000
    # list categories count once per category
    expected = sum(max(1, len(it.reference["category"])) for it in items)
    assert sum(g["n"] for g in b["category"].values()) == expected
    assert all(g["accuracy"] == 1.0 for g in b["category"].values())
