"""LibriSpeech reader (original layout and parquet) and corpus-WER scorer, checked against jiwer."""

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("whisper_normalizer", reason="LibriSpeech scoring needs whisper-normalizer")

from afnext.data.sounds import write_flac  # noqa: E402
from afnext.eval.benchmarks import BENCHMARKS, get_benchmark  # noqa: E402
from afnext.eval.benchmarks.librispeech import PROMPT, strip_framing  # noqa: E402
from afnext.eval.metrics import edit_distance  # noqa: E402
from afnext.eval.normalizers import english_normalizer  # noqa: E402
from afnext.eval.runner import run_benchmark  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "librispeech"
REFS = {
    "1089-134686-0000": "HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS AND BRUISED POTATOES AND FAT "
                        "MUTTON PIECES TO BE LADLED OUT IN THICK PEPPERED FLOUR FATTENED SAUCE",
    "1089-134686-0001": "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM",
    "121-121726-0000": "ALSO A POPULAR CONTRIVANCE WHEREBY LOVE MAKING MAY BE SUSPENDED BUT NOT STOPPED DURING THE "
                       "PICNIC SEASON",
}


@pytest.fixture
def bench():
    return get_benchmark("librispeech-test-clean")


@pytest.fixture
def with_audio(tmp_path):
    """The transcript fixture copied with a short synthetic FLAC per utterance (the reader needs none)."""
    root = tmp_path / "ls"
    shutil.copytree(FIXTURE, root)
    for uid in REFS:
        spk, chap, _ = uid.split("-")
        write_flac(root / "test-clean" / spk / chap / f"{uid}.flac", 0.1 * np.sin(np.arange(1600) / 5.0, dtype=np.float32))
    return root


def test_registered():
    assert {"librispeech-test-clean", "librispeech-test-other"} <= set(BENCHMARKS)


def test_load_original_layout(bench):
    items = bench.load(FIXTURE)
    # Sorted by transcript path: speaker "1089" sorts before "121".
    assert [it.id for it in items] == ["1089-134686-0000", "1089-134686-0001", "121-121726-0000"]
    assert all(it.prompt == PROMPT == "Transcribe the input speech." for it in items)
    assert {it.id: it.reference["text"] for it in items} == REFS
    assert [it.reference["speaker"] for it in items] == ["1089", "1089", "121"]
    assert items[2].audio == (FIXTURE / "test-clean" / "121" / "121726" / "121-121726-0000.flac",)
    # The split directory itself, and a limit, work too.
    assert [it.id for it in bench.load(FIXTURE / "test-clean", limit=2)] == [it.id for it in items[:2]]


def test_load_tarball_layout_and_errors(tmp_path, bench):
    shutil.copytree(FIXTURE, tmp_path / "LibriSpeech")
    assert len(bench.load(tmp_path)) == 3
    with pytest.raises(FileNotFoundError, match="test-other"):
        get_benchmark("librispeech-test-other").load(FIXTURE)


def test_audio_written_and_found(with_audio, bench):
    items = bench.load(with_audio)
    assert all(p.is_file() for it in items for p in it.audio)


def test_strip_framing():
    assert strip_framing('The spoken content of the audio is "stuff it into you".') == "stuff it into you"
    assert strip_framing('the spoken content of the audio is \u201cHello.\u201d') == "Hello."
    assert strip_framing("<think>speech, male</think>The spoken content of the audio is \"a b\"") == "a b"
    assert strip_framing("stuff it into you") == "stuff it into you"  # unframed: as written
    assert strip_framing('He said "the spoken content of the audio is" twice') == \
        'He said "the spoken content of the audio is" twice'


def _wer(bench, items, preds):
    return bench.score(items, preds)["headline"]["wer"]


def test_perfect_and_normalised(bench):
    items = bench.load(FIXTURE)
    # Case, punctuation, British spelling ("counselled" vs "counseled") and framing do not count.
    preds = {uid: f'The spoken content of the audio is "{t.capitalize()}."' for uid, t in REFS.items()}
    preds["1089-134686-0001"] = 'The spoken content of the audio is "Stuff it into you, his belly counseled him."'
    h = _wer(bench, items, preds)
    assert h["value"] == 0.0 and h["errors"] == 0 and h["words"] == 28 + 8 + 17


def _jiwer_wer(refs, hyps):
    jiwer = pytest.importorskip("jiwer")  # test-only dependency
    norm = english_normalizer()
    return jiwer.wer([norm(r) for r in refs], [norm(h) for h in hyps])


CASES = {
    "substitution": "stuff it in to you his belly counselled her",
    "deletion": "stuff it you belly",
    "insertion": "well stuff it into you his big belly counselled him again today",
    "empty": "",
    "mixed": "Stuff, it into me; his jelly!",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sentence_wer_matches_jiwer(bench, case):
    items = [it for it in bench.load(FIXTURE) if it.id == "1089-134686-0001"]
    ours = _wer(bench, items, {items[0].id: CASES[case]})["value"]
    assert ours == pytest.approx(_jiwer_wer([REFS[items[0].id]], [CASES[case]]))
    assert ours > 0


def test_corpus_wer_matches_jiwer_not_mean(bench):
    items = bench.load(FIXTURE)
    preds = {"1089-134686-0000": REFS["1089-134686-0000"].lower(),  # 0 errors / 28 words
             "1089-134686-0001": "stuff it you",  # 5 deletions / 8 words
             "121-121726-0000": "also a popular contrivance whereby love making may be suspended but not stopped "
                                "during the picnic season and more"}  # 2 insertions / 17 words
    h = _wer(bench, items, preds)
    refs, hyps = [REFS[it.id] for it in items], [preds[it.id] for it in items]
    assert h["value"] == pytest.approx(_jiwer_wer(refs, hyps))
    assert (h["errors"], h["words"]) == (7, 53) and h["value"] == pytest.approx(7 / 53)
    mean = np.mean([edit_distance(r.lower().split(), p.split()) / len(r.split()) for r, p in zip(refs, hyps)])
    assert abs(h["value"] - mean) > 0.05  # corpus WER, not the mean of sentence WERs


def test_missing_and_breakdown(bench):
    items = bench.load(FIXTURE)
    report = bench.score(items, {"1089-134686-0000": REFS["1089-134686-0000"]})
    assert report["missing"] == ["1089-134686-0001", "121-121726-0000"]
    assert report["headline"]["wer"]["value"] == pytest.approx(25 / 53)  # missing = empty hypothesis
    spk = report["breakdowns"]["speaker"]
    assert spk["1089"] == {"n": 2, "wer": pytest.approx(8 / 36), "errors": 8, "words": 36}
    assert spk["121"]["wer"] == 1.0


def test_runner_end_to_end(tmp_path, with_audio, bench):
    result = run_benchmark(bench, "unused", with_audio, tmp_path / "out",
                           predictor=lambda batch: [f'The spoken content of the audio is "{REFS[it.id]}".' for it in batch])
    assert result["report"]["headline"]["wer"]["value"] == 0.0
    assert result["report"]["paper"] is not None


def test_parquet(tmp_path, bench):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    flac = tmp_path / "x.flac"
    write_flac(flac, 0.1 * np.sin(np.arange(1600) / 3.0, dtype=np.float32))
    data = flac.read_bytes()
    rows = [{"file": f"{uid}.flac", "audio": {"bytes": data, "path": f"{uid}.flac"}, "text": t,
             "speaker_id": int(uid.split("-")[0]), "id": uid} for uid, t in REFS.items()]
    (tmp_path / "clean" / "test").mkdir(parents=True)
    (tmp_path / "other" / "test").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "clean" / "test" / "0000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), tmp_path / "other" / "test" / "0000.parquet")
    items = bench.load(tmp_path)  # picks the "clean" files only
    assert [it.id for it in items] == list(REFS)
    assert all(p.read_bytes() == data for it in items for p in it.audio)
    assert items[0].audio[0].parent.name == "test-clean"
    assert items[0].reference == {"text": REFS[items[0].id], "speaker": "1089"}
    assert len(get_benchmark("librispeech-test-other").load(tmp_path)) == 1
    assert [it.id for it in bench.load(tmp_path / "clean" / "test" / "0000.parquet", limit=2)] == list(REFS)[:2]
    assert bench.score(items, dict(REFS))["headline"]["wer"]["value"] == 0.0
