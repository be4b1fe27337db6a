"""Shared-prefix packing (afnext.train.prefix_sharing): the row holds the common system turn once and
computes exactly what the unshared row computes: same logits, same gradients, same training run."""

from __future__ import annotations

import pytest
import torch

import train_helpers as th
from afnext.data.packing import collate_packed
from afnext.data.tokenize import TrainSample
from afnext.model.afnext import IGNORE_INDEX
from afnext.train.prefix_sharing import shared_prefix_length

AUDIO = 99


def _sample(ids, first_label):
    ids = torch.tensor(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[first_label:] = ids[first_label:]
    return TrainSample(input_ids=ids, labels=labels, input_features=torch.zeros(0, 128, 3000),
                       input_features_mask=torch.zeros(0, 3000, dtype=torch.int32), n_audio_tokens=0)


def test_the_shared_run_stops_at_the_first_difference_audio_or_target():
    a = _sample([1, 2, 3, 4, 5, 6, 7], 6)
    b = _sample([1, 2, 3, 4, 8, 9, 7], 6)
    assert shared_prefix_length([a, b], AUDIO) == 4  # ids differ at 4
    assert shared_prefix_length([a], AUDIO) == 0  # nothing to share with
    c = _sample([1, 2, AUDIO, 4, 5, 6, 7], 6)
    assert shared_prefix_length([a, c], AUDIO) == 2  # an audio placeholder's embedding is the sample's own
    d = _sample([1, 2, 3, 4, 5, 6, 7], 3)
    # label 3 is predicted by the logit at 2, which must stay in the sample's own tokens
    assert shared_prefix_length([a, d], AUDIO) == 2
    e = _sample([1, 2, 3], 2)
    f = _sample([1, 2, 3, 4], 3)
    assert shared_prefix_length([e, f], AUDIO) == 1  # e keeps tokens of its own past the run
    assert shared_prefix_length([_sample([5, 2], 1), a], AUDIO) == 0


def test_collate_holds_the_run_once_and_numbers_each_sample_as_alone():
    a = _sample([1, 2, 3, 4, 5, 6], 4)
    b = _sample([1, 2, 3, 7, 8], 4)
    batch = collate_packed([a, b], 16, pad_id=0, shared_prefix=3)
    assert batch["input_ids"][0, :8].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert batch["position_ids"][0, :8].tolist() == [0, 1, 2, 3, 4, 5, 3, 4]
    assert batch["cu_seqlens"].tolist() == [0, 3, 6, 8, 16]
    assert batch["labels"][0, :8].tolist() == [IGNORE_INDEX] * 4 + [5, 6, IGNORE_INDEX, 8]
    assert batch["shared_prefix"] == 3
    assert "shared_prefix" not in collate_packed([a, b], 16, pad_id=0)
    with pytest.raises(ValueError, match="do not all start with the same 4 tokens"):
        collate_packed([a, b], 16, pad_id=0, shared_prefix=4)
    with pytest.raises(ValueError, match="more than the budget 7"):
        collate_packed([a, b], 7, pad_id=0, shared_prefix=3)


def _trainer(tmp_path, tiny_dirs, *sets):
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    registry = th.make_corpus(tmp_path / "data")
    cfg = th.write_config(tmp_path / f"c{len(sets)}.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / f"run{len(sets)}", max_steps=3)
    return Trainer(TrainConfig.load(cfg, list(sets)), progress=False)


def test_shared_row_gives_the_unshared_rows_logits_and_gradients(tmp_path, tiny_dirs):
    trainer = _trainer(tmp_path, tiny_dirs)
    samples = trainer._next_samples(8)
    group = sorted((s for s in samples if s.n_audio_tokens), key=len)[:3]
    audio_id = trainer.model.config.audio_token_id
    shared = shared_prefix_length(group, audio_id)
    first_audio = int((group[0].input_ids == audio_id).nonzero()[0])
    assert 0 < shared <= first_audio  # the system turn and the user turn's opening, never the audio
    results = []
    for n in (0, shared):
        batch = collate_packed(group, 2048, trainer.processor.pad_token_id, shared_prefix=n)
        trainer.model.zero_grad(set_to_none=True)
        nll, count = trainer._micro_step(batch, 1.0)
        grads = {k: p.grad.clone() for k, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((nll, count, grads))
    (nll0, n0, g0), (nll1, n1, g1) = results
    assert n0 == n1 > 0
    assert nll1 == pytest.approx(nll0, rel=1e-5)
    assert g0.keys() == g1.keys()
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=k)


def test_training_with_and_without_sharing_and_cache_is_the_same_run(tmp_path, tiny_dirs):
    on = _trainer(tmp_path, tiny_dirs)
    assert on._share_prefix and any(b.get("shared_prefix") for b in on._micro_batches(on._next_samples(8)))
    from afnext.data.audio_cache import AudioCache

    runs = []
    # the plain run also decodes every clip afresh: neither speed-up may change the run
    for i, sets in enumerate([(), ("data.share_prefix=false", "data.audio_cache_gb=0")]):
        trainer = _trainer(tmp_path / str(i), tiny_dirs, *sets)
        assert isinstance(trainer.loader.dataset.audio_cache, AudioCache) == (i == 0)
        runs.append([trainer.train_step() for _ in range(3)])
    for a, b in zip(*runs):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["family_loss"] == pytest.approx(b["family_loss"], abs=1e-4)
