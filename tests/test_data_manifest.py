"""Tests for afnext.data.manifest: reading/writing AF3 manifests, validation reports, placeholder binding.

Manifests are written by hand in NVIDIA's AF3 format, with broken rows among good ones; audio is tiny
WAV written with the stdlib ``wave`` module, corrupt audio is random bytes under audio names.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from afnext.data import manifest as M
from afnext.data.manifest import (
    ManifestError,
    PlaceholderError,
    Record,
    check_manifest,
    check_record,
    conversations_to_sound_tokens,
    detect_format,
    iter_manifest,
    placeholders_to_sound_tokens,
    read_manifest,
    write_manifest,
)

SR = 16_000


from conftest import write_wav  # noqa: E402


def write_garbage(path: Path, seed: int = 1) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return path


def conv(question="<sound>\nWhat is happening?", answer="A dog barks."):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def audio_dir(tmp_path):
    d = tmp_path / "audio"
    d.mkdir()
    write_wav(d / "a.wav", 1.0, seed=1)
    write_wav(d / "b.wav", 0.5, seed=2)
    write_garbage(d / "broken.wav", seed=3)
    write_garbage(d / "broken.flac", seed=4)
    return d


# Each entry: (JSON text of one JSONL line, the problem kinds check_manifest must report for it).
ROWS = [
    ({"id": "ok1", "sound": "audio/a.wav", "duration": 1.0, "conversations": conv(), "task": "AQA",
      "choices": ["dog", "cat"], "answer": "dog"}, set()),
    ({"id": "missing", "sound": "audio/nope.wav", "duration": 1.0, "conversations": conv()}, {"missing_audio"}),
    ({"id": "corrupt_wav", "sound": "audio/broken.wav", "duration": 1.0, "conversations": conv()},
     {"corrupt_audio"}),
    ({"id": "two_placeholders", "sound": "audio/a.wav", "duration": 1.0,
      "conversations": conv("<sound> and <sound>: same?")}, {"placeholder_mismatch"}),
    ({"id": "wrong_duration", "sound": "audio/a.wav", "duration": 3.0, "conversations": conv()},
     {"duration_mismatch"}),
    ({"id": "ok1", "sound": "audio/b.wav", "duration": 0.5, "conversations": conv()}, {"duplicate_id"}),
    ('{"id": "truncated", "sound": "audio/a.wav", "dur', {"bad_json"}),
    ("", None),  # blank line: skipped, but keeps the line numbering
    ({"id": "no_conversations", "sound": "audio/a.wav", "duration": 1.0}, {"missing_field"}),
    ({"id": "multi_ok", "sound": ["audio/a.wav", "audio/b.wav"], "duration": [1.0, 0.5],
      "conversations": conv("Compare <sound-2> with <sound-1>.", "The second is shorter.")}, set()),
    ({"id": "multi_total", "sound": ["audio/a.wav", "audio/b.wav"], "duration": 1.5,
      "conversations": conv("<sound-1> then <sound-2>", "Two clips.")}, set()),
    ({"id": "multi_out_of_range", "sound": ["audio/a.wav", "audio/b.wav"], "duration": [1.0, 0.5],
      "conversations": conv("<sound-1> vs <sound-3>", "x")}, {"placeholder_mismatch"}),
    ({"id": "gpt_first", "sound": "audio/a.wav", "duration": 1.0,
      "conversations": [{"from": "gpt", "value": "<sound> hi"}, {"from": "human", "value": "hello"}]},
     {"bad_roles", "placeholder_mismatch"}),
    ({"id": "empty_answer", "sound": "audio/a.wav", "duration": 1.0, "conversations": conv(answer="  ")},
     {"empty_turn"}),
    ({"id": "corrupt_flac", "sound": "audio/broken.flac", "duration": 1.0, "conversations": conv()},
     {"corrupt_audio"}),
    ({"id": "multi_total_wrong", "sound": ["audio/a.wav", "audio/b.wav"], "duration": 4.0,
      "conversations": conv("<sound><sound>", "x")}, {"duration_mismatch"}),
    ({"id": 7, "sound": "audio/a.wav", "conversations": conv()}, {"bad_field"}),
    ([1, 2, 3], {"bad_row"}),
    ({"id": "ends_with_human", "sound": "audio/a.wav", "duration": 1.0,
      "conversations": conv() + [{"from": "human", "value": "and?"}]}, {"bad_roles"}),
]


def write_jsonl(path: Path, rows) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r, _ in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_by_row(rows):
    return {i: kinds for i, (_, kinds) in enumerate(rows, 1) if kinds}


def test_check_manifest_reports_every_broken_row_with_exact_kinds(tmp_path, audio_dir):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    report = check_manifest(path)
    got = {row: {p.kind for p in ps} for row, ps in report.by_row.items()}
    assert got == expected_by_row(ROWS)
    assert report.rows == len(ROWS) - 1  # the blank line is not a row
    assert report.bad_rows == len(expected_by_row(ROWS))
    assert report.ok_rows == 3  # ok1, multi_ok, multi_total
    assert report.counts["corrupt_audio"] == 2
    assert report.counts["placeholder_mismatch"] == 4  # gpt_first has two: in the gpt turn, none in human
    # Messages carry the useful detail.
    by_id = {p.id: p for p in report.problems}
    assert "already used on row 1" in by_id["ok1"].message
    assert "<sound-3> is outside 1..2" in by_id["multi_out_of_range"].message
    assert "2 placeholder(s) for 1 sound(s)" in by_id["two_placeholders"].message
    assert "stated 3.00 s" in by_id["wrong_duration"].message
    assert "missing 'conversations'" in by_id["no_conversations"].message
    assert str(by_id["missing"]).startswith(f"{path}:2 [missing]: missing_audio")
    bad_json = [p for p in report.problems if p.kind == "bad_json"][0]
    assert bad_json.row == 7 and bad_json.id is None


def test_report_render_and_to_dict(tmp_path, audio_dir):
    report = check_manifest(write_jsonl(tmp_path / "train.jsonl", ROWS), workers=4)
    text = report.render()
    assert "corrupt_wav" in text and "duplicate_id" in text and "missing_audio" in text
    assert "18 rows, 3 ok, 15 with problems" in text.splitlines()[0]
    d = report.to_dict()
    assert d["bad_rows"] == report.bad_rows and d["counts"] == report.counts
    assert json.loads(json.dumps(d)) == d  # serialisable as is
    assert {"row", "id", "kind", "message"} <= set(d["problems"][0])
    assert len(report.render(max_problems=2).split("more problems")) == 2


def test_json_list_rows_are_item_indices(tmp_path, audio_dir):
    rows = [(r, k) for r, k in ROWS if not isinstance(r, str)]  # JSON lists cannot hold broken JSON
    path = tmp_path / "train.json"
    path.write_text(json.dumps([r for r, _ in rows], indent=4))
    assert detect_format(path) == "json"
    got = {row: {p.kind for p in ps} for row, ps in check_manifest(path).by_row.items()}
    assert got == expected_by_row(rows)


def test_broken_json_list_is_one_file_level_problem(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"id": "a", "sound": "x.wav"},\n  {"id": \n]')
    report = check_manifest(path)
    assert [(p.kind, p.row) for p in report.problems] == [("bad_json", None)]
    assert "line 4" in report.problems[0].message  # where the parser met "]" instead of a value
    with pytest.raises(ManifestError, match=r"bad\.json: invalid JSON at line 4"):
        read_manifest(path)


def test_strict_reading_names_file_and_row(tmp_path, audio_dir):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(ManifestError, match=r"train\.jsonl:7: bad_json: invalid JSON"):
        read_manifest(path)
    records = read_manifest(path, strict=False)
    assert len(records) == len(ROWS) - 1 - 4  # minus blank line and 4 unparseable rows
    pairs = list(iter_manifest(path))
    assert [(p.row, p.kind) for _, p in pairs if p] == [(7, "bad_json"), (9, "missing_field"),
                                                          (17, "bad_field"), (18, "bad_row")]


def test_record_fields_paths_and_extra(tmp_path, audio_dir):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    recs = {}
    for r in read_manifest(path, strict=False):
        recs.setdefault(r.id, r)  # "ok1" appears twice; keep row 1
    ok = recs["ok1"]
    assert ok.sounds == [audio_dir / "a.wav"] and ok.sounds[0].is_absolute()
    assert ok.extra == {"task": "AQA", "choices": ["dog", "cat"], "answer": "dog"}
    assert ok.row == 1 and ok.manifest == path
    multi = recs["multi_total"]
    assert multi.durations == 1.5 and multi.total_duration == 1.5 and multi.sound_durations is None
    assert recs["multi_ok"].sound_durations == [1.0, 0.5]
    # Explicit audio_root replaces the manifest's directory.
    other = read_manifest(path, audio_root=tmp_path / "elsewhere", strict=False)
    assert other[0].sounds == [tmp_path / "elsewhere" / "audio" / "a.wav"]


def good_rows():
    return [
        {"id": "r1", "sound": "audio/a.wav", "duration": 1.0, "conversations": conv(), "task": "AQA",
         "choices": ["dog", "cat", "ünïcödé"], "answer": "dog"},
        {"id": "r2", "sound": ["audio/a.wav", "audio/b.wav"], "duration": [1.0, 0.5],
         "conversations": conv("<sound-1> <sound-2>\nsame?", "no") + [
             {"from": "human", "value": "why?"}, {"from": "gpt", "value": "lengths\ndiffer"}]},
        {"id": "r3", "sound": ["audio/b.wav"], "duration": 0.5, "conversations": conv(), "category": "music"},
        {"id": "r4", "conversations": conv("no audio here", "fine")},
    ]


@pytest.mark.parametrize("src_name,dst_name", [("m.json", "out.jsonl"), ("m.jsonl", "out.json")])
def test_round_trip_json_and_jsonl(tmp_path, audio_dir, src_name, dst_name):
    src = tmp_path / src_name
    if src_name.endswith(".json"):
        src.write_text(json.dumps(good_rows(), indent=2, ensure_ascii=False))
    else:
        src.write_text("".join(json.dumps(r) + "\n" for r in good_rows()))
    records = read_manifest(src)
    assert [r.to_dict() for r in records] == good_rows()
    dst = write_manifest(tmp_path / dst_name, records)
    assert detect_format(dst) == ("jsonl" if dst_name.endswith(".jsonl") else "json")
    again = read_manifest(dst)
    assert again == records  # ids, resolved sounds, durations, conversations, extra, rows
    assert [r.to_dict() for r in again] == good_rows()  # relative paths kept as written
    # Writing back over the source is atomic and leaves no temp files behind.
    write_manifest(src, again)
    assert read_manifest(src) == records
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"audio", src_name, dst_name})


def test_writing_elsewhere_keeps_files_resolvable(tmp_path, audio_dir):
    src = tmp_path / "m.json"
    src.write_text(json.dumps(good_rows()))
    records = read_manifest(src)
    (tmp_path / "sub").mkdir()
    moved = read_manifest(write_manifest(tmp_path / "sub" / "m.jsonl", records))
    assert [r.sounds for r in moved] == [r.sounds for r in records]
    assert moved[0].to_dict()["sound"] == str(audio_dir / "a.wav")  # no longer relative-resolvable
    # ...unless the same audio_root is used on both sides.
    write_manifest(tmp_path / "sub" / "m2.jsonl", records, audio_root=tmp_path)
    assert json.loads((tmp_path / "sub" / "m2.jsonl").read_text().splitlines()[0])["sound"] == "audio/a.wav"


def test_format_detected_by_content_not_extension(tmp_path, audio_dir):
    as_list = tmp_path / "list.jsonl"
    as_list.write_text("\ufeff  \n" + json.dumps(good_rows()[:2]))
    as_lines = tmp_path / "lines.json"
    as_lines.write_text("\n".join(json.dumps(r) for r in good_rows()[:2]))
    one_obj = tmp_path / "one.json"
    one_obj.write_text(json.dumps(good_rows()[0], indent=2))
    assert detect_format(as_list) == "json" and detect_format(as_lines) == "jsonl"
    assert [r.id for r in read_manifest(as_list)] == ["r1", "r2"]
    assert [r.id for r in read_manifest(as_lines)] == ["r1", "r2"]
    assert [(r.id, r.row) for r in read_manifest(one_obj)] == [("r1", 1)]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert read_manifest(empty) == []


def test_check_record_duration_limits_and_probe_modes(tmp_path, audio_dir):
    rec = Record.from_dict({"id": "x", "sound": "audio/a.wav", "duration": 1.0, "conversations": conv()},
                           base_dir=tmp_path)
    assert check_record(rec) == []
    assert [p.kind for p in check_record(rec, max_duration_s=0.5)] == ["too_long"]
    assert check_record(rec, max_duration_s=0.5, probe_audio=False)[0].message.startswith("stated length")
    slightly_off = Record.from_dict({"id": "y", "sound": "audio/a.wav", "duration": 1.3, "conversations": conv()},
                                   base_dir=tmp_path)
    assert check_record(slightly_off, duration_tolerance_s=0.5) == []
    assert [p.kind for p in check_record(slightly_off, duration_tolerance_s=0.1)] == ["duration_mismatch"]
    # The header probe reads the WAV header; random bytes under .flac open as FLAC with no stated length,
    # so the header mode falls back to decoding and still reports them.
    assert M.probe_sound(audio_dir / "a.wav", "header").duration_s == pytest.approx(1.0)
    assert M.probe_sound(audio_dir / "broken.flac", "header").kind == "corrupt_audio"
    assert M.probe_sound(audio_dir / "broken.wav", "header").kind == "corrupt_audio"
    assert M.probe_sound(audio_dir / "broken.wav", False).kind is None  # existence only
    assert M.probe_sound(audio_dir, "decode").kind == "missing_audio"  # a directory is not a file


def test_placeholders_to_sound_tokens():
    assert placeholders_to_sound_tokens("<sound-2> vs <sound-1>", 2) == ("<sound> vs <sound>", [1, 0])
    assert placeholders_to_sound_tokens("<sound-1>, <sound-2>, <sound-3>", 3)[1] == [0, 1, 2]
    assert placeholders_to_sound_tokens("<sound>\n<sound>", 2) == ("<sound>\n<sound>", [0, 1])
    assert placeholders_to_sound_tokens("no audio", 0) == ("no audio", [])
    for text, n, msg in [("<sound-1> <sound-1>", 2, "appears more than once"),
                         ("<sound-1> <sound-3>", 2, "outside 1..2"),
                         ("<sound-0>", 1, "outside 1..1"),
                         ("<sound> <sound-2>", 2, "mixes"),
                         ("<sound>", 2, "1 placeholder"),
                         ("text", 1, "0 placeholder")]:
        with pytest.raises(PlaceholderError, match=msg):
            placeholders_to_sound_tokens(text, n)


def test_conversations_bind_placeholders_across_turns():
    turns = [{"from": "human", "value": "<sound-2> first"}, {"from": "gpt", "value": "ok"},
             {"from": "human", "value": "now <sound-1>"}, {"from": "gpt", "value": "done"}]
    new, order = conversations_to_sound_tokens(turns, 2)
    assert order == [1, 0]
    assert [t["value"] for t in new] == ["<sound> first", "ok", "now <sound>", "done"]
    assert turns[0]["value"] == "<sound-2> first"  # input untouched
    with pytest.raises(PlaceholderError, match="turn 2"):
        conversations_to_sound_tokens([{"from": "human", "value": "<sound>"}, {"from": "gpt", "value": "<sound>"}], 1)


def test_record_from_dict_rejects_structural_errors(tmp_path):
    with pytest.raises(ManifestError, match="'duration' lists 1 values for 2 sound"):
        Record.from_dict({"id": "a", "sound": ["x", "y"], "duration": [1.0], "conversations": []})
    with pytest.raises(ManifestError, match="turn 1: 'value' is missing"):
        Record.from_dict({"id": "a", "conversations": [{"from": "human"}]})
    with pytest.raises(ManifestError, match="finite"):
        Record.from_dict({"id": "a", "sound": "x", "duration": -1, "conversations": []})
