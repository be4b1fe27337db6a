"""CoVoST2 reader and corpus-BLEU scorer on tiny TSV fixtures (no audio needed)."""

import builtins
from pathlib import Path

import pytest

sacrebleu = pytest.importorskip("sacrebleu")

from afnext.eval.benchmarks import BENCHMARKS, covost2
from afnext.eval.benchmarks.covost2 import CoVoST2, tokenizer_for

FIX = Path(__file__).parent / "fixtures" / "covost2"


def _has_mecab() -> bool:
    try:
        import ipadic  # noqa: F401
        import MeCab  # noqa: F401
    except ImportError:
        return False
    return True


def _ref_bleu(hyps, refs, tokenize):
    return sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score


def test_tokenizer_per_target():
    assert tokenizer_for("zh-CN") == "zh"
    assert tokenizer_for("ja") == "ja-mecab"
    for lang in ("de", "ar", "en", "fa", "ta", "sv-SE", "cy"):
        assert tokenizer_for(lang) == "13a"
    assert CoVoST2("en_zh-CN").tokenize == "zh"
    assert CoVoST2("en_ja").tokenize == "ja-mecab"
    assert CoVoST2("fr_en").tokenize == "13a"
    assert CoVoST2("en_ar").paper_key == "covost2-en-ar"


def test_registry_and_pairs():
    assert len(covost2.PAIRS) == 36
    assert {"covost2-en_ar", "covost2-en_zh-CN", "covost2-en_ja", "covost2-fr_en", "covost2-en_de"} <= set(BENCHMARKS)
    with pytest.raises(ValueError, match="bad CoVoST2 pair"):
        CoVoST2("en-de")
    with pytest.raises(ValueError, match="bad CoVoST2 pair"):
        CoVoST2("en_xx")


def test_load_tsv():
    bench = CoVoST2("en_de")
    items = bench.load(FIX)
    assert [it.id for it in items] == [f"common_voice_en_10{i}" for i in range(4)]
    assert items[0].audio == (FIX / "clips" / "common_voice_en_100.mp3",)
    assert items[0].prompt == "Translate the speech into German."
    # Unquoted TSV: the double quotes are part of the text.
    assert items[1].reference["translation"] == 'Sie sagte "hallo" zu allen.'
    assert items[1].reference["client_id"] == "c2"
    assert [it.id for it in bench.load(FIX / "covost_v2.en_de.test.tsv", limit=2)] == [it.id for it in items[:2]]
    assert CoVoST2("en_zh-CN").load(FIX)[0].prompt == "Translate the speech into Chinese."


def test_full_tsv_filtered_to_test_split():
    items = CoVoST2("fr_en").load(FIX)
    assert [it.id for it in items] == ["common_voice_fr_1", "common_voice_fr_3"]
    assert items[0].prompt == "Translate the speech into English."


def test_missing_tsv():
    with pytest.raises(FileNotFoundError, match="covost_v2.en_ar"):
        CoVoST2("en_ar").load(FIX)


def _check(pair, hyps_by_index):
    bench = CoVoST2(pair)
    items = bench.load(FIX)
    preds = {it.id: h for it, h in zip(items, hyps_by_index)}
    report = bench.score(items, preds)
    refs = [it.reference["translation"] for it in items]
    expected = _ref_bleu(list(hyps_by_index), refs, bench.tokenize)
    assert report["headline"]["bleu"]["value"] == pytest.approx(expected, abs=1e-9)
    assert report["headline"]["bleu"]["tokenize"] == bench.tokenize
    assert f"tok:{bench.tokenize}" in report["headline"]["bleu"]["signature"]
    return report, expected


def test_bleu_en_de_13a():
    hyps = ["Die Katze saß auf der Matte.", 'Sie sagte "hallo" zu jedem.', "Das Wetter ist schön heute.",
            "Ich möchte eine Tasse Kaffee."]
    report, expected = _check("en_de", hyps)
    assert 0 < expected < 100
    assert report["n"] == 4 and report["missing"] == []


def test_bleu_en_zh_zh():
    _, expected = _check("en_zh-CN", ["今天天气很好。", "我爱读书。", "火车站在什么地方？"])
    assert 0 < expected < 100
    # The zh tokenizer splits characters; 13a would see each sentence as one token and score differently.
    items = CoVoST2("en_zh-CN").load(FIX)
    assert expected != pytest.approx(_ref_bleu(["今天天气很好。", "我爱读书。", "火车站在什么地方？"],
                                               [it.reference["translation"] for it in items], "13a"))


@pytest.mark.skipif(not _has_mecab(), reason='ja-mecab needs pip install "sacrebleu[ja]"')
def test_bleu_en_ja_mecab():
    _, expected = _check("en_ja", ["今日は天気が良いです。", "私は本を読むことが好きです。", "駅はどこですか。"])
    assert 0 < expected < 100


def test_ja_without_mecab_names_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name in ("MeCab", "ipadic"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    bench = CoVoST2("en_ja")
    items = bench.load(FIX)
    with pytest.raises(ImportError, match=r"sacrebleu\[ja\]"):
        bench.score(items, {})


def test_empty_and_missing_predictions_are_empty_hypotheses():
    bench = CoVoST2("en_de")
    items = bench.load(FIX)
    good = ["Die Katze saß auf der Matte.", 'Sie sagte "hallo" zu allen.', "Das Wetter ist heute schön.",
            "Ich hätte gern eine Tasse Kaffee."]
    # item 1 empty, item 3 missing, item 2 only reasoning: all three are empty hypotheses, still counted.
    preds = {items[0].id: good[0], items[1].id: "", items[2].id: "<think>hmm</think>  "}
    report = bench.score(items, preds)
    expected = _ref_bleu([good[0], "", "", ""], [it.reference["translation"] for it in items], "13a")
    assert report["headline"]["bleu"]["value"] == pytest.approx(expected)
    assert report["n"] == 4
    assert report["missing"] == [items[3].id]
    assert report["breakdowns"]["empty_hypotheses"]["all"]["n"] == 3
    # Dropping the empties instead would give a perfect score: make sure we do not.
    assert report["headline"]["bleu"]["value"] < 50
    assert bench.score(items, dict(zip([it.id for it in items], good)))["headline"]["bleu"]["value"] == pytest.approx(100)


def test_reasoning_stripped():
    bench = CoVoST2("en_de")
    items = bench.load(FIX)[:1]
    report = bench.score(items, {items[0].id: "<think>Katze = cat</think>\nDie Katze saß auf der Matte."})
    assert report["headline"]["bleu"]["value"] == pytest.approx(100)


def test_empty_item_list():
    report = CoVoST2("en_de").score([], {})
    assert report["n"] == 0 and report["headline"]["bleu"]["value"] == 0.0
