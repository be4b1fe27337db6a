"""The synthetic benchmark: held-out items of the generated corpus (afnext.data.synth), scored exactly.

Three headline figures, each printed beside a chance baseline measured on the same items:
- multiple-choice accuracy over every item with `choices` (MMAU's string-match rule); chance is the
  mean of 1 / number of choices;
- ASR word error rate on the `asr_digits`, `asr_words` and `asr_commands` families (corpus WER); chance is the WER of
  answering each clip with another clip's transcript (same family, fixed derangement);
- median event-onset error in seconds on `event_onset` clips (10-60 s); chance is the error of
  answering with another clip's onset (same derangement).
Per-family figures are reported too. Generation is greedy, batched by family.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from afnext.data.manifest import conversations_to_sound_tokens, read_manifest
from afnext.engine import Engine, GenerationConfig
from afnext.eval.metrics import corpus_wer, mmau_is_correct, strip_reasoning
from afnext.think import extract_evidence

ASR_FAMILIES = ("asr_digits", "asr_words", "asr_commands")
ONSET_FAMILY = "event_onset"  # the headline onset figure (10-60 s clips)
ONSET_FAMILIES = (ONSET_FAMILY, "event_onset_short", "event_onset_dense")  # scored by onset error


def predicted_onset(text: str) -> float | None:
    """The first timestamp the answer mentions (any format afnext.think understands), else a bare number."""
    answer = strip_reasoning(text)
    ev = extract_evidence(answer)
    if ev:
        return ev[0].start_s
    import re

    m = re.search(r"-?\d+(?:\.\d+)?", answer)
    return float(m.group()) if m else None


def _derangement(n: int) -> list[int]:
    """A fixed shift: item i is compared with item i+1's reference (no item with itself when n > 1)."""
    return [(i + 1) % n for i in range(n)]


def load_items(manifest: str | Path, *, limit_per_family: int | None = None) -> list:
    records = read_manifest(manifest)
    by_family: dict[str, list] = defaultdict(list)
    for r in records:
        fam = r.extra.get("family", "unknown")
        if limit_per_family is None or len(by_family[fam]) < limit_per_family:
            by_family[fam].append(r)
    return [r for fam in sorted(by_family) for r in by_family[fam]]


def _prompt(processor, record) -> tuple[str, list]:
    """A held-out item's question as the model sees it (chat template applied) and its decoded audio."""
    from afnext.audio import load_audio

    turns, order = conversations_to_sound_tokens(record.conversations, len(record.sounds))
    text = processor.apply_chat_template([{"role": "user", "content": turns[0]["value"]}], tokenize=False)
    return text, [load_audio(record.sounds[i]) for i in order]


def generate_answers(model, processor, records, *, batch_size: int = 16, max_new_tokens: int = 48) -> list[str]:
    engine = Engine(model, processor.tokenizer)
    cfg = GenerationConfig.from_model(model, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.0)
    out: list[str] = []
    for lo in range(0, len(records), batch_size):
        texts, waves = [], []
        for r in records[lo: lo + batch_size]:
            text, audio = _prompt(processor, r)
            texts.append(text)
            waves += audio
        inputs = processor(texts, audio=waves or None)
        out += [res.text or "" for res in engine.generate(inputs, cfg)]
    return out


def mbr_onsets(model, processor, records) -> list[float]:
    """Each onset question's MBR answer: the median of the model's distribution over 0.1-s timestamps
    from 0 to the clip's length (``afnext.eval.timestamp_mbr``)."""
    from afnext.audio import SAMPLE_RATE
    from afnext.eval.timestamp_mbr import median_timestamp

    out = []
    for r in records:
        text, waves = _prompt(processor, r)
        inputs = processor([text], audio=waves)
        out.append(median_timestamp(model, processor.tokenizer, inputs, sum(len(w) for w in waves) / SAMPLE_RATE))
    return out


def score(records, predictions) -> dict:
    fams: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        fams[r.extra.get("family", "unknown")].append(i)
    report: dict = {"families": {}}
    mc_hits, mc_chance = [], []
    for fam, idx in sorted(fams.items()):
        recs = [records[i] for i in idx]
        preds = [predictions[i] for i in idx]
        refs = [r.conversations[-1]["value"] for r in recs]
        entry: dict = {"n": len(idx)}
        if all("choices" in r.extra for r in recs):
            hits = [mmau_is_correct(p, r.extra["answer"], r.extra["choices"]) for p, r in zip(preds, recs)]
            entry["accuracy"] = float(np.mean(hits))
            entry["chance"] = float(np.mean([1 / len(r.extra["choices"]) for r in recs]))
            mc_hits += hits
            mc_chance += [1 / len(r.extra["choices"]) for r in recs]
        elif fam in ASR_FAMILIES:
            entry["wer"] = corpus_wer(zip(refs, preds))
            perm = _derangement(len(refs))
            entry["chance_wer"] = corpus_wer((refs[i], refs[perm[i]]) for i in range(len(refs)))
        elif fam in ONSET_FAMILIES:
            truth = [float(r.extra["labels"]["onset_s"]) for r in recs]
            guesses = [predicted_onset(p) for p in preds]
            durations = [float(r.total_duration or 0) for r in recs]
            errors = [abs(g - t) if g is not None else d for g, t, d in zip(guesses, truth, durations)]
            perm = _derangement(len(truth))
            entry["median_onset_error_s"] = float(statistics.median(errors))
            entry["chance_median_onset_error_s"] = float(statistics.median(abs(truth[perm[i]] - truth[i]) for i in range(len(truth))))
            entry["unparsable"] = sum(g is None for g in guesses)
        else:
            entry["exact_match"] = float(np.mean([p.strip().lower() == r.strip().lower() for p, r in zip(preds, refs)]))
        report["families"][fam] = entry
    asr = [(records[i].conversations[-1]["value"], predictions[i]) for f in ASR_FAMILIES for i in fams.get(f, [])]
    headline = {}
    if mc_hits:
        headline["mc_accuracy"] = {"value": float(np.mean(mc_hits)), "chance": float(np.mean(mc_chance)), "n": len(mc_hits)}
    if asr:
        refs = [a for a, _ in asr]
        perm = _derangement(len(refs))
        headline["asr_wer"] = {"value": corpus_wer(asr), "chance": corpus_wer((refs[i], refs[perm[i]]) for i in range(len(refs))),
                               "n": len(asr)}
    if ONSET_FAMILY in report["families"]:
        e = report["families"][ONSET_FAMILY]
        headline["onset_median_error_s"] = {"value": e["median_onset_error_s"], "chance": e["chance_median_onset_error_s"],
                                            "n": e["n"]}
    report["headline"] = headline
    return report


def evaluate_synthetic(model_dir: str | Path, manifest: str | Path, *, limit_per_family: int | None = None,
                       batch_size: int = 16, max_new_tokens: int = 48, device: str = "cpu",
                       predictions_out: str | Path | None = None, nll: bool = False,
                       nll_train: tuple[str | Path, int] | None = None, onset_mbr: bool = False) -> dict:
    """``nll``: also each family's teacher-forced answer loss (``afnext.eval.answer_nll``) as
    ``answer_nll``; ``nll_train`` = (training manifest, N): the same on the first N training items of
    each evaluated family as ``answer_nll_train`` (far below ``answer_nll``: memorised clips).
    ``onset_mbr``: also the headline onset family read as each answer's distribution median
    (``afnext.eval.timestamp_mbr``), as ``median_onset_error_s_mbr`` beside the greedy figure."""
    from afnext.eval.answer_nll import answer_nll, nll_by_family
    from afnext.model.afnext import AFNext
    from afnext.processor import Processor

    t0 = time.perf_counter()
    model = AFNext.from_pretrained(model_dir, device=device)
    processor = Processor.from_pretrained(model_dir)
    records = load_items(manifest, limit_per_family=limit_per_family)
    with torch.no_grad():
        preds = generate_answers(model, processor, records, batch_size=batch_size, max_new_tokens=max_new_tokens)
    report = score(records, preds)
    mbr: dict[str, float] = {}
    if onset_mbr and ONSET_FAMILY in report["families"]:
        onset = [r for r in records if r.extra.get("family") == ONSET_FAMILY]
        medians = mbr_onsets(model, processor, onset)
        truth = [float(r.extra["labels"]["onset_s"]) for r in onset]
        err = float(statistics.median(abs(m - t) for m, t in zip(medians, truth)))
        report["families"][ONSET_FAMILY]["median_onset_error_s_mbr"] = err
        report["headline"]["onset_median_error_s_mbr"] = {**report["headline"]["onset_median_error_s"], "value": err}
        mbr = {r.id: m for r, m in zip(onset, medians)}
    if nll or nll_train:
        for fam, v in nll_by_family(records, answer_nll(model, processor, records)).items():
            report["families"][fam]["answer_nll"] = v
    if nll_train:
        train_manifest, n = nll_train
        families = set(report["families"])
        train = [r for r in load_items(train_manifest, limit_per_family=n) if r.extra.get("family", "unknown") in families]
        for fam, v in nll_by_family(train, answer_nll(model, processor, train)).items():
            report["families"][fam]["answer_nll_train"] = v
        report["nll_train_manifest"] = str(train_manifest)
    report.update(model=str(model_dir), manifest=str(manifest), items=len(records), seconds=time.perf_counter() - t0)
    if predictions_out:
        with open(predictions_out, "w", encoding="utf-8") as fh:
            for r, p in zip(records, preds):
                row = {"id": r.id, "family": r.extra.get("family"), "prediction": p, "reference": r.conversations[-1]["value"]}
                if r.id in mbr:
                    row["mbr_onset_s"] = mbr[r.id]
                fh.write(json.dumps(row) + "\n")
    return report


def format_headline(report: dict) -> str:
    h = report["headline"]
    lines = []
    if "mc_accuracy" in h:
        m = h["mc_accuracy"]
        lines.append(f"multiple-choice accuracy  {m['value']:.1%}   (chance {m['chance']:.1%}, n={m['n']})")
    if "asr_wer" in h:
        m = h["asr_wer"]
        lines.append(f"digit/word ASR WER        {m['value']:.1%}   (chance {m['chance']:.1%}, n={m['n']})")
    if "onset_median_error_s" in h:
        m = h["onset_median_error_s"]
        lines.append(f"median onset error        {m['value']:.2f} s   (chance {m['chance']:.2f} s, n={m['n']})")
    if "onset_median_error_s_mbr" in h:
        m = h["onset_median_error_s_mbr"]
        lines.append(f"  the same, MBR reading    {m['value']:.2f} s   (each answer's distribution median; greedy above)")
    return "\n".join(lines)
