"""The eval runner: resumable predictions (kill -9 simulation), sharding + merge, reports, and the CLI."""

import json

import pytest
import typer
from typer.testing import CliRunner

from afnext.eval.benchmarks import get_benchmark
from afnext.eval.runner import (PredictionsError, merge_and_score, merge_predictions, predictions_path,
                                read_predictions, run_benchmark)
from tests.conftest import write_wav

GEN = dict(batch_size=2, max_new_tokens=3)


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    """A hand-written synthetic eval set: 3 multiple-choice and 3 ASR items, one WAV each."""
    d = tmp_path_factory.mktemp("synth")
    rows = []
    for k in range(3):
        write_wav(d / f"mc{k}.wav", 0.5 + 0.1 * k, seed=k)
        ans = ["Man", "Woman"][k % 2]
        rows.append({"id": f"mc{k}", "sound": f"mc{k}.wav", "family": "speaker_gender", "choices": ["Man", "Woman"],
                     "answer": ans, "conversations": [{"from": "human", "value": "<sound>\nWho speaks? (A) Man (B) Woman"},
                                                      {"from": "gpt", "value": ans}]})
        write_wav(d / f"asr{k}.wav", 0.4 + 0.1 * k, seed=10 + k)
        rows.append({"id": f"asr{k}", "sound": f"asr{k}.wav", "family": "asr_digits",
                     "conversations": [{"from": "human", "value": "<sound>\nTranscribe the digits."},
                                       {"from": "gpt", "value": f"{k} {k + 1}"}]})
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_dirs, eval_dir):
    out = tmp_path_factory.mktemp("full")
    res = run_benchmark("synthetic", tiny_dirs["afnext"], eval_dir, out, **GEN)
    return out, res


def _comparable(report):
    return {k: report[k] for k in ("headline", "breakdowns", "missing", "n")}


def test_full_run_writes_everything(full_run, tiny_dirs):
    out, res = full_run
    assert res["generated"] == 6 and res["skipped"] == 0
    lines = predictions_path(out).read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == sorted(json.loads(x)["id"] for x in lines)
    assert all(set(json.loads(x)) == {"id", "prediction", "seconds"} for x in lines)
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["model"] == str(tiny_dirs["afnext"])
    assert rep["config"]["generation"]["max_new_tokens"] == 3 and rep["config"]["generation"]["do_sample"] is False
    assert rep["config"]["afnext_version"] and rep["n"] == 6
    assert set(rep["headline"]) == {"mc_accuracy", "asr_wer"}
    assert "| mc_accuracy |" in (out / "report.md").read_text()
    # a rerun finds everything done and rewrites the same report without loading the model
    again = run_benchmark("synthetic", "/nonexistent", res["report"]["config"]["data_dir"], out, **GEN)
    assert again["generated"] == 0 and _comparable(again["report"]) == _comparable(rep)


def test_resume_after_kill(full_run, tiny_dirs, eval_dir, tmp_path):
    out, res = full_run
    lines = predictions_path(out).read_text().splitlines(keepends=True)
    # Two complete lines (the first batch) + the batch in flight cut mid-line, as a kill -9 leaves it.
    predictions_path(tmp_path).write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    res2 = run_benchmark("synthetic", tiny_dirs["afnext"], eval_dir, tmp_path, **GEN)
    assert res2["skipped"] == 2 and res2["generated"] == 4
    ids = [json.loads(x)["id"] for x in predictions_path(tmp_path).read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 6
    assert _comparable(res2["report"]) == _comparable(res["report"])
    a = {k: v["prediction"] for k, v in read_predictions(predictions_path(out)).items()}
    b = {k: v["prediction"] for k, v in read_predictions(predictions_path(tmp_path)).items()}
    assert a == b


def test_shards_merge_to_unsharded(full_run, tiny_dirs, eval_dir, tmp_path):
    out, res = full_run
    for i in range(2):
        r = run_benchmark("synthetic", tiny_dirs["afnext"], eval_dir, tmp_path, shard=(i, 2), **GEN)
        assert r["report"] is None and r["items"] == 3
    merged, report = merge_and_score(tmp_path, "synthetic")
    assert merged.missing == []
    full = {k: v["prediction"] for k, v in read_predictions(predictions_path(out)).items()}
    assert merged.predictions == full
    assert _comparable(report) == _comparable(res["report"])
    assert (tmp_path / "report.md").exists()


def _stub(items):
    return [f"pred-{it.id}" for it in items]


def test_corrupt_middle_line_and_merge_conflicts(eval_dir, tmp_path):
    p = predictions_path(tmp_path)
    p.write_text('{"id": "a", "prediction": "x"}\nnot json\n{"id": "b", "prediction": "y"}\n')
    with pytest.raises(PredictionsError, match=r"predictions.jsonl:2:"):
        read_predictions(p)
    p.unlink()
    for i in range(2):
        run_benchmark("synthetic", None, eval_dir, tmp_path, shard=(i, 2), predictor=_stub, batch_size=4)
    assert merge_predictions(tmp_path, get_benchmark("synthetic").load(eval_dir)).missing == []
    # the same id answered differently by two shard files is an error
    predictions_path(tmp_path, (1, 2)).open("a").write('{"id": "asr0", "prediction": "other"}\n')
    with pytest.raises(PredictionsError, match="asr0"):
        merge_predictions(tmp_path)
    # an id with no prediction is reported missing
    q = tmp_path / "m"
    run_benchmark("synthetic", None, eval_dir, q, shard=(0, 2), predictor=_stub)
    merged, rep = merge_and_score(q, "synthetic")
    assert len(merged.missing) == 3 and rep["missing"] == merged.missing


def test_missing_audio_fails_before_inference(eval_dir, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "eval.jsonl").write_text((eval_dir / "eval.jsonl").read_text())
    with pytest.raises(FileNotFoundError, match="audio file"):
        run_benchmark("synthetic", None, d, tmp_path / "o", predictor=_stub)


def _cli():
    from afnext.eval.cli import register

    app = typer.Typer()

    @app.callback()
    def _root():  # a group needs a callback to keep sub-commands as sub-commands
        pass

    register(app)
    return app


def test_cli_score_and_errors(eval_dir, tmp_path):
    app, runner = _cli(), CliRunner()
    items = get_benchmark("synthetic").load(eval_dir)
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"id": it.id, "prediction": it.reference["record"].conversations[-1]["value"]}) + "\n"
                             for it in items))
    r = runner.invoke(app, ["eval", "score", "synthetic", "--predictions", str(preds), "--data", str(eval_dir),
                            "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["headline"]["mc_accuracy"]["value"] == 1.0 and rep["headline"]["asr_wer"]["value"] == 0.0
    assert (tmp_path / "rep" / "report.png").exists()

    r = runner.invoke(app, ["eval", "score", "nope", "--predictions", str(preds), "--data", str(eval_dir)])
    assert r.exit_code == 2 and "error: unknown benchmark 'nope'" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "mc0", "prediction": "Man"}\n{"id": "mc1"}\n')
    r = runner.invoke(app, ["eval", "score", "synthetic", "--predictions", str(bad), "--data", str(eval_dir)])
    assert r.exit_code == 2 and "bad.jsonl:2:" in r.output
    r = runner.invoke(app, ["eval", "run", "synthetic", "--model", "x", "--data", str(eval_dir), "--out",
                            str(tmp_path / "o"), "--shard", "3/2"])
    assert r.exit_code == 2 and "error:" in r.output


def test_cli_run_and_merge(tiny_dirs, eval_dir, tmp_path):
    app, runner = _cli(), CliRunner()
    out = tmp_path / "o"
    for i in range(2):
        r = runner.invoke(app, ["eval", "run", "synthetic", "--model", str(tiny_dirs["afnext"]), "--data", str(eval_dir),
                                "--out", str(out), "--shard", f"{i}/2", "--max-new-tokens", "2", "--limit", "1"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "merge", str(out), "synthetic"])
    assert r.exit_code == 0, r.output
    assert "merged 2 prediction(s)" in r.output and (out / "report.md").exists()
