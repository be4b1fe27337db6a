"""The time-digit head (afnext.train.time_head): exact digit targets across packed audios, its gradient
reaches the adapter and encoder but not the LLM, it is reported, and `--resume` restores it exactly."""

from __future__ import annotations

import math

import pytest
import torch

import train_helpers as th


def test_digit_targets_follow_each_audio_and_cross_windows():
    from afnext.train.time_head import time_digit_targets

    a = 7
    ids = torch.tensor([[1] + [a] * 1300 + [2, 3] + [a] * 30 + [4]])
    digits = time_digit_targets(ids, a)
    assert digits.shape == (1330, 3)
    assert digits[0].tolist() == [0, 0, 0]
    assert digits[25].tolist() == [0, 1, 0]  # 1.00 s
    assert digits[24].tolist() == [0, 0, 9]  # 0.96 s
    assert digits[750].tolist() == [3, 0, 0]  # 30.00 s: the second window's first token
    assert digits[1249].tolist() == [4, 9, 9]  # 49.96 s
    assert digits[1300].tolist() == [0, 0, 0] and digits[1329].tolist() == [0, 1, 1]  # the second audio: 1.16 s
    assert time_digit_targets(torch.tensor([1, 2, 3]), a).shape == (0, 3)


def test_trainer_trains_the_audio_path_through_the_head_and_reports_it(tmp_path, tiny_dirs):
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    registry = th.make_corpus(tmp_path / "data")
    cfg = th.write_config(tmp_path / "t.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "run", max_steps=3)
    trainer = Trainer(TrainConfig.load(cfg, ["optim.time_head_weight=1.0"]), progress=False)
    audio_id = trainer.model.config.audio_token_id
    samples = [s for s in trainer._next_samples(8) if (s.input_ids == audio_id).any()]
    batch = trainer._micro_batches(samples)[0]
    # a zero head passes no gradient back on its first use; one trained step later it does
    first = trainer.train_step()
    assert first["loss_time"] == pytest.approx(math.log(10), rel=1e-6)  # zero logits: uniform over 10 digits
    diff = th.grad_change(trainer, batch, "time_head_weight", 0.0)
    assert max(v for n, v in diff.items() if n.startswith("adapter.")) > 1e-7
    assert max(v for n, v in diff.items() if n.startswith("encoder.")) > 1e-9
    assert all(v == 0.0 for n, v in diff.items() if n.startswith("llm.") or n.startswith("lm_head"))
    later = [trainer.train_step()["loss_time"] for _ in range(2)]
    assert later[-1] < first["loss_time"]
    plain = Trainer(TrainConfig.load(cfg, [f"run.out_dir=\"{tmp_path / 'plain'}\""]), progress=False).train_step()
    assert "loss_time" not in plain


def test_resume_restores_the_head_exactly(tmp_path, tiny_dirs):
    """4 steps straight against 2 steps, a checkpoint, and 2 more in a new Trainer: the same losses, the
    same head and the same model."""
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    registry = th.make_corpus(tmp_path / "data")

    def run(name: str, steps: list[int]):
        cfg = th.write_config(tmp_path / f"{name}.toml", registry=registry, processor=tiny_dirs["afnext"],
                              out_dir=tmp_path / name, max_steps=4)
        records, trainer = [], None
        for i, stop in enumerate(steps):
            trainer = Trainer(TrainConfig.load(cfg, ["optim.time_head_weight=0.5"]), resume=i > 0, progress=False)
            while trainer.step < stop:
                records.append(trainer.train_step())
            trainer.save()
        return records, trainer

    straight, a = run("straight", [4])
    resumed, b = run("resumed", [2, 4])
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert [r["loss_time"] for r in resumed] == [r["loss_time"] for r in straight]
    assert torch.equal(a._time_head.linear.weight, b._time_head.linear.weight)
    assert th.max_weight_diff(a.model.state_dict(), b.model.state_dict()) == 0.0
    # a checkpoint saved without the head cannot silently resume with a fresh one
    cfg = th.write_config(tmp_path / "nohead.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "nohead", max_steps=2)
    t = Trainer(TrainConfig.load(cfg), progress=False)
    t.train_step()
    t.save()
    from afnext.train.loop import TrainError

    with pytest.raises(TrainError, match="was saved without optim.time_head_weight; its head cannot be restored"):
        Trainer(TrainConfig.load(cfg, ["optim.time_head_weight=1.0"]), resume=True, progress=False)


def test_time_head_options_are_validated(tmp_path, tiny_dirs):
    from afnext.train.config import TrainConfig, TrainConfigError

    registry = th.make_corpus(tmp_path / "data")
    cfg = th.write_config(tmp_path / "v.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "run", max_steps=1)
    with pytest.raises(TrainConfigError, match=r"optim.time_head_weight must be a finite number >= 0, got -1.0"):
        TrainConfig.load(cfg, ["optim.time_head_weight=-1.0"])
    with pytest.raises(TrainConfigError, match="optim.time_head_weight is not supported with sequence parallelism"):
        TrainConfig.load(cfg, ["optim.time_head_weight=1.0", "system.sp_ulysses=2"])
