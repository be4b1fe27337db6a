"""The corpus generator and the data CLI, end to end on the "micro" preset (about two items per family).

Checked: the written manifests pass `check_manifest` with zero problems; 1 and 2 workers write identical
bytes; the report's counts match the manifests; eval_mc.json holds exactly the MC eval items; the
registry resolves; the tokenizer directory loads as a Processor; every train item becomes a training
sample whose `<sound>` count equals its audio token count, with exactly the length `data stats`
predicts; reruns replace stale files; `afnext synth` / `data check` / `data stats` exit codes.
"""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from afnext.audio import load_audio
from afnext.data import synth as sy
from afnext.data.cli import load_processor, manifest_stats, register, sample_lengths
from afnext.data.manifest import check_manifest, read_manifest
from afnext.data.mixture import Registry, build_mixture
from afnext.data.tokenize import StageCaps, TrainSample, encode_sample

SEED = 3


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    one = sy.synthesize(root / "w1", preset="micro", seed=SEED, workers=1, progress=False)
    two = sy.synthesize(root / "w2", preset="micro", seed=SEED, workers=2, progress=False)
    return one, two


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_one_and_two_workers_write_identical_files(corpora):
    one, two = corpora
    a, b = one.out_dir, two.out_dir
    assert _files(a) == _files(b)
    for rel in _files(a):
        if rel != "synth_report.json":  # wall time and worker count differ
            assert filecmp.cmp(a / rel, b / rel, shallow=False), rel
    ra, rb = (json.loads((d / "synth_report.json").read_text()) for d in (a, b))
    for key in ("counts", "totals", "audio_hours", "long_clips", "disk_bytes", "mean_text_tokens", "seed"):
        assert ra[key] == rb[key], key
    assert not [f for f in _files(a) if f.endswith(".tmp")]


def test_manifests_pass_check_and_counts_match(corpora):
    rep = corpora[0]
    out = rep.out_dir
    families = sy.load_families()
    assert rep.families == list(families)  # every registered family, speech ones included
    for split in sy.SPLITS:
        report = check_manifest(out / f"{split}.jsonl", workers=4)
        assert report.ok, report.render()
        recs = read_manifest(out / f"{split}.jsonl")
        per_family = {}
        for r in recs:
            per_family[r.extra["family"]] = per_family.get(r.extra["family"], 0) + 1
            assert r.extra["split"] == split and r.extra["task"] and "labels" in r.extra
            for s in r.sounds:
                assert s.parent == out / "audio" / split / r.extra["family"] and s.name.startswith(r.id + "_")
        assert per_family == {f: n for f, n in rep.counts[split].items() if n}
        expected_min = 2 if split == "train" else 1
        assert all(n >= expected_min for f, n in rep.counts[split].items() if not families[f].long)
    assert [(c["split"], c["duration_s"]) for c in rep.long_clips] == [("train", 600.0), ("eval", 600.0)]
    on_disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "synth_report.json")
    assert 0 < on_disk <= rep.disk_bytes


def test_multi_audio_records_list_their_sounds(corpora):
    recs = read_manifest(corpora[0].out_dir / "train.jsonl")
    multi = [r for r in recs if r.extra["family"] == "multi_audio_compare"]
    assert multi and all(len(r.sounds) >= 2 and isinstance(r.durations, list) for r in multi)
    for r in multi:
        assert all(abs(len(load_audio(s)) / 16000 - d) < 1e-3 for s, d in zip(r.sounds, r.durations))


def test_eval_mc_and_registry(corpora):
    out = corpora[0].out_dir
    mc = json.loads((out / "eval_mc.json").read_text())
    evals = {r.id: r for r in read_manifest(out / "eval.jsonl")}
    assert {m["id"] for m in mc} == {i for i, r in evals.items() if "choices" in r.extra}
    assert len(mc) == corpora[0].mc_eval_items > 0
    for m in mc:
        assert m["choices"].count(m["answer"]) == 1 and m["task"] in ("sound", "music", "speech")
        assert (out / m["audio_id"]).is_file() and m["difficulty"] in ("easy", "medium", "hard")
        assert m["question"] and m["category"] and m["sub-category"]
    reg = Registry.load(out / "registry.toml")
    mix = build_mixture("train+eval", reg)
    assert len(mix) == sum(corpora[0].total(s) for s in sy.SPLITS)


def test_tokenizer_and_every_train_item_encodes(corpora):
    out = corpora[0].out_dir
    proc = load_processor(out / "tokenizer")
    from afnext.processor import Processor
    from afnext.tokenizer import TextTokenizer

    assert Processor(TextTokenizer.from_dir(out / "tokenizer")).audio_token_id == proc.audio_token_id
    assert 300 < proc.tokenizer.vocab_size <= sy.TOKENIZER_VOCAB + 8
    recs = read_manifest(out / "train.jsonl")
    predicted = {row["id"]: row["tokens"] for row in sample_lengths(recs, proc)}
    caps = StageCaps(max_audio_s=1800.0, max_tokens=65_536)
    for r in recs:
        sample = encode_sample(proc, r.conversations, [load_audio(s) for s in r.sounds], caps, sample_id=r.id,
                               family=r.extra["family"])
        assert isinstance(sample, TrainSample), sample
        assert int((sample.input_ids == proc.audio_token_id).sum()) == sample.n_audio_tokens > 0
        assert sample.n_label_tokens > 0
        assert len(sample) == predicted[r.id], r.id  # `data stats` token math is exact


def test_counts_of_the_real_presets():
    fams = sy.load_families()
    for name, train_min, eval_min, long_min in (("nano", 5000, 500, 20), ("full", 50_000, 5_000, 200)):
        counts = sy.family_counts(sy.PRESETS[name], fams)
        assert sum(counts["train"].values()) >= train_min and sum(counts["eval"].values()) >= eval_min
        n_long = sum(n for s in counts for f, n in counts[s].items() if fams[f].long)
        assert n_long >= long_min and all(counts["eval"][f] for f in fams)


def test_train_per_family_overrides_training_counts_only():
    fams = sy.load_families()
    base = sy.Preset("p", 100, 10, 1, 1, min_train=5, min_eval=2)
    more = sy.Preset("p", 100, 10, 1, 1, min_train=5, min_eval=2, train_per_family=(("asr_digits", 77),))
    a, b = sy.family_counts(base, fams), sy.family_counts(more, fams)
    assert b["train"]["asr_digits"] == 77 != a["train"]["asr_digits"]
    assert b["eval"] == a["eval"]
    assert {f: n for f, n in b["train"].items() if f != "asr_digits"} == {f: n for f, n in a["train"].items() if f != "asr_digits"}
    with pytest.raises(ValueError, match=r"preset 'p': train_per_family names unknown family no_such_family"):
        sy.family_counts(sy.Preset("p", 1, 1, 0, 0, train_per_family=(("no_such_family", 3),)), fams)
    with pytest.raises(ValueError, match=r"train_per_family\['asr_digits'\] must be a count >= 0, got -1"):
        sy.family_counts(sy.Preset("p", 1, 1, 0, 0, train_per_family=(("asr_digits", -1),)), fams)


def test_atomic_flac_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import afnext.data.sounds as S

    def broken(path, wave):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(S, "write_flac", broken)
    with pytest.raises(OSError):
        sy.atomic_write_flac(tmp_path / "x.flac", __import__("numpy").zeros(16000, "float32"))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def cli():
    app = typer.Typer()
    register(app)
    return app, CliRunner()


def test_cli_check(corpora, cli, tmp_path):
    app, runner = cli
    out = corpora[0].out_dir
    res = runner.invoke(app, ["data", "check", str(out / "eval.jsonl"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["problems"] == []
    bad = tmp_path / "bad.jsonl"
    lines = (out / "eval.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["sound"] = str(out / "audio" / "missing.flac")
    bad.write_text("\n".join([json.dumps(row)] + [l.replace('"audio/', f'"{out}/audio/') for l in lines[1:]]) + "\n")
    res = runner.invoke(app, ["data", "check", str(bad)])
    assert res.exit_code == 1 and "missing_audio" in res.stdout
    assert runner.invoke(app, ["data", "check", str(tmp_path / "nope.jsonl")]).exit_code == 2


def test_cli_stats(corpora, cli):
    app, runner = cli
    out = corpora[0].out_dir
    res = runner.invoke(app, ["data", "stats", str(out / "train.jsonl"), "--budget", "8192", "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["text_tokens"] == "exact" and s["records"] == corpora[0].total("train")
    assert s["packing"]["over_budget"] == 1  # the 10-minute clip: 15,000 audio tokens
    assert 0 < s["packing"]["efficiency"] <= 1 and s["families"]["long_event_grounding"]["samples"] == 1
    assert s == manifest_stats(out / "train.jsonl", 8192)
    res = runner.invoke(app, ["data", "stats", str(out / "train.jsonl")])
    assert res.exit_code == 0 and "efficiency" in res.stdout


def test_cli_synth_subset_and_rerun(cli, tmp_path):
    app, runner = cli
    dest = tmp_path / "c"
    stale = dest / "audio" / "train" / "music_pitch" / "music_pitch_train_000099_1.flac"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from an earlier, larger run")
    (stale.parent / ".music_pitch_train_000000_1.flac.123.tmp").write_bytes(b"killed worker")
    args = ["synth", str(dest), "--preset", "micro", "--seed", "1", "--families", "music_pitch,sound_class",
            "--workers", "1", "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(stale.parent)) == ["music_pitch_train_000000_1.flac", "music_pitch_train_000001_1.flac"]
    report = json.loads((dest / "synth_report.json").read_text())
    assert report["families"] == ["sound_class", "music_pitch"] and report["totals"] == {"train": 4, "eval": 2}
    first = (dest / "train.jsonl").read_bytes()
    assert runner.invoke(app, args).exit_code == 0 and (dest / "train.jsonl").read_bytes() == first
    res = runner.invoke(app, ["synth", str(tmp_path / "d"), "--preset", "micro", "--families", "no_such"])
    assert res.exit_code == 2 and "no_such" in res.output
    assert runner.invoke(app, ["synth", str(tmp_path / "d"), "--preset", "huge"]).exit_code == 2
