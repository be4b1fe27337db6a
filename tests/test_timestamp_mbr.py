"""afnext.eval.timestamp_mbr: candidate timestamps scored over one KV cache equal full teacher-forced
forwards, the probabilities of a complete answer set sum to one, and the MBR answer is the median."""

from __future__ import annotations

import pytest
import torch

from conftest import tone_mix
from afnext.eval.timestamp_mbr import median_timestamp, onset_candidates, sequence_logprobs, weighted_median


@pytest.fixture(scope="module")
def model_and_inputs(tiny_dirs):
    from afnext import AFNext, Processor

    model = AFNext.from_pretrained(tiny_dirs["afnext"], dtype=torch.float32).eval()
    proc = Processor.from_pretrained(tiny_dirs["afnext"])
    text = proc.apply_chat_template([{"role": "user", "content": "<sound>\nWhen does the beep start?"}], tokenize=False)
    return model, proc, proc([text], audio=[tone_mix(4.0, seed=5)])


def _teacher_forced(model, inputs, seq):
    ids = torch.cat([inputs["input_ids"], torch.tensor([seq])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=inputs["input_features"],
                       input_features_mask=inputs["input_features_mask"]).logits[0].float().log_softmax(-1)
    t = inputs["input_ids"].shape[1]
    return sum(float(logits[t - 1 + i, tok]) for i, tok in enumerate(seq))


def test_candidates_cover_the_grid():
    c = onset_candidates(60.0)
    assert len(c) == 601 and c[0] == (0.0, "0.0") and c[234] == (23.4, "23.4") and c[-1] == (60.0, "60.0")
    assert onset_candidates(2.0, 0.5) == [(0.0, "0.0"), (0.5, "0.5"), (1.0, "1.0"), (1.5, "1.5"), (2.0, "2.0")]
    assert [v for v, _ in onset_candidates(3.0, 1.0)] == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="need max_s >= 0 and grid_s > 0"):
        onset_candidates(float("nan"))


def test_trie_scores_equal_full_forwards(model_and_inputs):
    model, proc, inputs = model_and_inputs
    tok = proc.tokenizer
    seqs = [tok.encode(t) for _, t in onset_candidates(12.0)][::7]  # mixed lengths and shared prefixes
    got = sequence_logprobs(model, inputs, seqs)
    want = [_teacher_forced(model, inputs, s) for s in seqs]
    assert got.tolist() == pytest.approx(want, abs=1e-4)


def test_a_complete_answer_set_sums_to_one(model_and_inputs):
    """Every one-token answer, or every two-token answer: a partition of what the model can say next."""
    model, _, inputs = model_and_inputs
    vocab = model.config.llm.vocab_size
    one = sequence_logprobs(model, inputs, [[i] for i in range(vocab)])
    assert float(one.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    two = sequence_logprobs(model, inputs, [[7, j] for j in range(vocab)] + [[i] for i in range(vocab) if i != 7])
    assert float(two.exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_bad_sequence_sets_are_refused(model_and_inputs):
    model, _, inputs = model_and_inputs
    with pytest.raises(ValueError, match=r"not prefix-free \(e.g. \[5\]\)"):
        sequence_logprobs(model, inputs, [[5], [5, 6]])
    with pytest.raises(ValueError, match="not prefix-free"):
        sequence_logprobs(model, inputs, [[5, 6], [5, 6]])
    with pytest.raises(ValueError, match="at least one token"):
        sequence_logprobs(model, inputs, [[]])


def test_weighted_median_minimises_expected_absolute_error():
    values = [3.0, 1.0, 2.0, 10.0]
    lp = torch.tensor([0.2, 0.3, 0.4, 0.1]).log()
    assert weighted_median(values, lp) == 2.0
    risk = {v: sum(p * abs(v - w) for p, w in zip([0.2, 0.3, 0.4, 0.1], values)) for v in values}
    assert min(risk, key=risk.get) == 2.0
    assert weighted_median([0.0, 50.0], torch.tensor([0.0, -20.0])) == 0.0  # unnormalised log-probs are fine


def test_median_timestamp_is_a_candidate_and_the_median(model_and_inputs):
    model, proc, inputs = model_and_inputs
    m = median_timestamp(model, proc.tokenizer, inputs, 4.0)
    cands = onset_candidates(4.0)
    lp = sequence_logprobs(model, inputs, [proc.tokenizer.encode(t) for _, t in cands])
    p = lp.softmax(0)
    below = float(sum(pi for (v, _), pi in zip(cands, p) if v < m))
    upto = float(sum(pi for (v, _), pi in zip(cands, p) if v <= m))
    assert m in [v for v, _ in cands] and below < 0.5 <= upto
