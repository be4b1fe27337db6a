"""`afnext eval` CLI: --variant and generation overrides for `eval run`, and `eval synthetic` end to end on a
micro synthetic corpus with a tiny random checkpoint (CPU)."""

import json
import statistics

import pytest
import torch
import typer
from typer.testing import CliRunner

from afnext.eval.cli import generation_settings, register
from afnext.eval.synthetic import format_headline
from tests.conftest import write_wav

# Families kept from the micro corpus: one of each headline kind, all with short clips (the corpus's
# 10-minute clips would take a minute on CPU even with a tiny model).
SHORT_FAMILIES = ("speaker_gender", "sound_class", "asr_digits", "asr_words", "event_onset")


def _cli():
    app = typer.Typer()

    @app.callback()
    def _root():  # a group needs a callback to keep sub-commands as sub-commands
        pass

    register(app)
    return app


def test_generation_settings_resolution():
    plain = generation_settings(None)
    assert plain == {"max_new_tokens": 512, "repetition_penalty": None, "do_sample": False, "temperature": None,
                     "top_p": None, "top_k": None, "seed": None}
    think = generation_settings("think")
    assert think["max_new_tokens"] == 4096 and think["repetition_penalty"] == 1.2
    assert generation_settings("instruct")["max_new_tokens"] == 1024
    cap = generation_settings("captioner")  # the card gives no settings: eval defaults
    assert cap["max_new_tokens"] == 512 and cap["repetition_penalty"] is None
    over = generation_settings("think", max_new_tokens=8, repetition_penalty=1.0, sample=True, temperature=0.7, seed=3)
    assert (over["max_new_tokens"], over["repetition_penalty"], over["do_sample"], over["temperature"], over["seed"]) == \
        (8, 1.0, True, 0.7, 3)


@pytest.fixture(scope="module")
def mc_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mc")
    rows = []
    for k in range(2):
        write_wav(d / f"mc{k}.wav", 0.5, seed=k)
        rows.append({"id": f"mc{k}", "sound": f"mc{k}.wav", "family": "speaker_gender", "choices": ["Man", "Woman"],
                     "answer": "Man", "conversations": [{"from": "human", "value": "<sound>\nWho speaks?"},
                                                        {"from": "gpt", "value": "Man"}]})
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_run_with_variant_records_its_settings(tiny_dirs, mc_dir, tmp_path):
    out = tmp_path / "o"
    r = CliRunner().invoke(_cli(), ["eval", "run", "synthetic", "--model", str(tiny_dirs["afnext"]), "--variant", "think",
                                    "--data", str(mc_dir), "--out", str(out), "--max-new-tokens", "2"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["variant"] == "think"
    # the variant's repetition penalty, the explicit --max-new-tokens, greedy
    assert cfg["generation"]["repetition_penalty"] == 1.2 and cfg["generation"]["max_new_tokens"] == 2
    assert cfg["generation"]["do_sample"] is False
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["variant"] == "think" and rep["n"] == 2


@pytest.mark.parametrize("args, message", [
    ([], "give --model (a checkpoint) or --variant"),
    (["--variant", "tiny"], "unknown variant 'tiny'"),
    (["--model", "x", "--temperature", "0.5"], "--temperature/--top-p/--top-k only apply with --sample"),
    (["--model", "x", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
])
def test_run_argument_errors(mc_dir, tmp_path, args, message):
    r = CliRunner().invoke(_cli(), ["eval", "run", "synthetic", "--data", str(mc_dir), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2 and f"error: {message}" in r.output, r.output


@pytest.fixture(scope="module")
def micro_eval(tmp_path_factory):
    """The micro synthetic corpus's eval split, cut to SHORT_FAMILIES (one item each)."""
    from afnext.data import synth as sy

    root = tmp_path_factory.mktemp("synth")
    rep = sy.synthesize(root / "micro", preset="micro", seed=3, workers=1, progress=False)
    lines = (rep.out_dir / "eval.jsonl").read_text().splitlines()
    kept = [x for x in lines if json.loads(x)["family"] in SHORT_FAMILIES]
    manifest = rep.out_dir / "eval_short.jsonl"  # beside eval.jsonl: the relative audio paths still resolve
    manifest.write_text("\n".join(kept) + "\n")
    return manifest


def test_eval_synthetic_cli(tiny_dirs, micro_eval, tmp_path):
    out_json, out_preds = tmp_path / "rep" / "synthetic.json", tmp_path / "preds.jsonl"
    r = CliRunner().invoke(_cli(), ["eval", "synthetic", "--model", str(tiny_dirs["afnext"]), "--data", str(micro_eval),
                                    "--limit-per-family", "1", "--max-new-tokens", "4", "--device", "cpu",
                                    "--json", str(out_json), "--predictions", str(out_preds)])
    assert r.exit_code == 0, r.output
    report = json.loads(out_json.read_text())
    assert set(report["families"]) == set(SHORT_FAMILIES) and report["items"] == len(SHORT_FAMILIES)
    assert set(report["headline"]) == {"mc_accuracy", "asr_wer", "onset_median_error_s"}
    assert report["headline"]["mc_accuracy"]["n"] == 2 and report["headline"]["asr_wer"]["n"] == 2
    for entry in report["headline"].values():
        assert {"value", "chance", "n"} <= set(entry)
    # the printed headline is format_headline's, with the report's own figures
    headline = format_headline(report)
    assert headline.count("\n") == 2 and headline in r.output
    assert f"{report['headline']['mc_accuracy']['value']:.1%}" in r.output
    assert f"{report['headline']['onset_median_error_s']['value']:.2f} s" in r.output
    for family in SHORT_FAMILIES:
        assert f"  {family}" in r.output
    preds = [json.loads(x) for x in out_preds.read_text().splitlines()]
    assert sorted(p["family"] for p in preds) == sorted(SHORT_FAMILIES)


def test_answer_nll_is_the_training_loss(tiny_dirs, micro_eval):
    from afnext.data.manifest import read_manifest
    from afnext.data.tokenize import encode_sample
    from afnext.eval.answer_nll import EVAL_CAPS, answer_nll, nll_by_family
    from afnext.model.afnext import AFNext
    from afnext.processor import Processor
    from afnext.audio import load_audio

    model, proc = AFNext.from_pretrained(tiny_dirs["afnext"]).eval(), Processor.from_pretrained(tiny_dirs["afnext"])
    records = read_manifest(micro_eval)[:3]
    got = answer_nll(model, proc, records)
    for r, v in zip(records, got):  # the full-logits loss of the training sample, computed independently
        s = encode_sample(proc, r.conversations, [load_audio(p) for p in r.sounds], EVAL_CAPS)
        with torch.no_grad():
            ref = model(input_ids=s.input_ids[None], input_features=s.input_features,
                        input_features_mask=s.input_features_mask, labels=s.labels[None]).loss
        assert v == pytest.approx(float(ref), rel=1e-5) and v > 0
    fams = nll_by_family(records, got)
    assert set(fams) == {r.extra["family"] for r in records}


def test_eval_synthetic_cli_answer_nll(tiny_dirs, micro_eval, tmp_path):
    out_json = tmp_path / "rep.json"
    r = CliRunner().invoke(_cli(), ["eval", "synthetic", "--model", str(tiny_dirs["afnext"]), "--data", str(micro_eval),
                                    "--limit-per-family", "1", "--max-new-tokens", "2", "--device", "cpu",
                                    "--nll-train", "1", "--json", str(out_json)])
    assert r.exit_code == 0, r.output
    report = json.loads(out_json.read_text())
    for family, entry in report["families"].items():
        assert entry["answer_nll"] > 0 and entry["answer_nll_train"] > 0, family
        assert f"answer NLL {entry['answer_nll']:.3f} (training items {entry['answer_nll_train']:.3f})" in r.output
    assert report["nll_train_manifest"].endswith("train.jsonl")


def test_eval_synthetic_reports_the_mbr_reading(tiny_dirs, micro_eval, tmp_path):
    out_json, preds = tmp_path / "rep.json", tmp_path / "preds.jsonl"
    r = CliRunner().invoke(_cli(), ["eval", "synthetic", "--model", str(tiny_dirs["afnext"]), "--data", str(micro_eval),
                                    "--limit-per-family", "2", "--max-new-tokens", "4", "--device", "cpu", "--onset-mbr",
                                    "--json", str(out_json), "--predictions", str(preds)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out_json.read_text())
    h = rep["headline"]["onset_median_error_s_mbr"]
    assert h["chance"] == rep["headline"]["onset_median_error_s"]["chance"]
    assert f"the same, MBR reading    {h['value']:.2f} s" in r.output
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    onset = [x for x in rows if x["family"] == "event_onset"]
    assert len(onset) == h["n"] >= 1 and all("mbr_onset_s" in x for x in onset)
    assert not any("mbr_onset_s" in x for x in rows if x["family"] != "event_onset")
    errors = [abs(x["mbr_onset_s"] - float(x["reference"].rstrip("s"))) for x in onset]
    assert h["value"] == pytest.approx(statistics.median(errors))


def test_eval_synthetic_cli_errors(tiny_dirs, tmp_path):
    runner, app = CliRunner(), _cli()
    r = runner.invoke(app, ["eval", "synthetic", "--model", str(tmp_path / "none"), "--data", str(tmp_path)])
    assert r.exit_code == 2 and "not a checkpoint directory" in r.output
    r = runner.invoke(app, ["eval", "synthetic", "--model", str(tiny_dirs["afnext"]), "--data", str(tmp_path)])
    assert r.exit_code == 2 and "no eval.jsonl" in r.output
    r = runner.invoke(app, ["eval", "synthetic", "--model", str(tiny_dirs["afnext"]), "--data", str(tmp_path),
                            "--limit-per-family", "0"])
    assert r.exit_code == 2 and "--limit-per-family must be >= 1" in r.output
    (tmp_path / "eval.jsonl").write_text("")
    r = runner.invoke(app, ["eval", "synthetic", "--model", str(tiny_dirs["afnext"]), "--data", str(tmp_path),
                            "--nll-train", "0"])
    assert r.exit_code == 2 and "--nll-train must be >= 1" in r.output
    r = runner.invoke(app, ["eval", "synthetic", "--model", str(tiny_dirs["afnext"]), "--data", str(tmp_path),
                            "--nll-train", "2"])
    assert r.exit_code == 2 and f"--nll-train: {tmp_path / 'train.jsonl'} not found" in r.output
