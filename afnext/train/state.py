"""Training checkpoints that are never half-visible, and exact resume.

Layout of a run directory:

    run/config.json             the resolved stage configuration
    run/metrics.jsonl           one line per step
    run/checkpoints/step-000050/  model.safetensors, optimizer.pt, trainer.json, rank-<r>.pt,
                                export/ (config and tokenizer for `afnext export`, afnext.train.export)
    run/checkpoints/LATEST      name of the newest complete checkpoint
    run/final/                  HF-format export (config, weights, tokenizer, chat template)

Atomicity: a checkpoint is written into `checkpoints/.tmp-step-N/`, every file is fsynced, the
directory is renamed to `step-N` (atomic on POSIX), the parent directory is fsynced, and only then is
`LATEST` replaced (write temp + fsync + os.replace). A kill -9 at any point leaves `LATEST` naming the
previous complete checkpoint; stale temp directories are removed on the next start.

Contents: full (unsharded) model and optimizer state gathered on rank 0, plus, per rank, the RNG
states and the data loader's cursor, and on rank 0 the step and metric offsets. The model and
optimizer parts do not depend on the world size; the per-rank loader cursors do, so a run resumes on
the number of ranks it was saved with.
(For 7B-scale runs a sharded torch.distributed.checkpoint save would avoid gathering on one rank; the
atomic-directory protocol stays the same.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

LATEST = "LATEST"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = run_dir / "checkpoints"
    marker = ckpts / LATEST
    if not marker.is_file():
        return None
    name = marker.read_text().strip()
    path = ckpts / name
    if not (path / "trainer.json").is_file():
        raise RuntimeError(f"{marker} names {name}, which is not a complete checkpoint")
    return path


def clean_stale(run_dir: Path) -> None:
    for tmp in (run_dir / "checkpoints").glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _test_save_delay() -> None:
    """Test-only hook: AFNEXT_TEST_SAVE_DELAY_S=<seconds> sleeps between the files of a checkpoint, so a
    test can kill -9 the process while `.tmp-step-*` exists (tests/test_train.py). Unset in real runs."""
    delay = os.environ.get("AFNEXT_TEST_SAVE_DELAY_S")
    if delay:
        import time

        time.sleep(float(delay))


def save_checkpoint(run_dir: Path, step: int, *, model_state: dict | None, optim_state: dict | None,
                    trainer_state: dict, rank_state: dict, keep: int = 2, extra=None) -> Path:
    """Collective: every rank calls it. model/optim state only on rank 0 (full, on CPU). ``extra``: called
    on rank 0 with the temporary directory, to add files that must appear with the checkpoint."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    ckpts = run_dir / "checkpoints"
    name = f"step-{step:06d}"
    tmp = ckpts / f".tmp-{name}"
    if rank == 0:
        ckpts.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    torch.save(rank_state, tmp / f"rank-{rank}.pt")
    _test_save_delay()
    if rank == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        _test_save_delay()
        torch.save(optim_state, tmp / "optimizer.pt")
        _test_save_delay()
        if extra is not None:
            extra(tmp)
        (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=2))
    _barrier()
    final = ckpts / name
    if rank == 0:
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(ckpts)
        write_text_atomic(ckpts / LATEST, name + "\n")
        old = sorted(p for p in ckpts.glob("step-*") if p.is_dir())
        for p in old[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: Path) -> tuple[dict, dict, dict, dict]:
    """(model_state, optim_state, trainer_state, this rank's state)."""
    from safetensors.torch import load_file

    rank = dist.get_rank() if dist.is_initialized() else 0
    rank_file = path / f"rank-{rank}.pt"
    if not rank_file.is_file():
        raise RuntimeError(f"{path} has no state for rank {rank}: resume with the world size it was saved with")
    model_state = load_file(str(path / "model.safetensors"))
    optim_state = torch.load(path / "optimizer.pt", weights_only=False)
    trainer_state = json.loads((path / "trainer.json").read_text())
    return model_state, optim_state, trainer_state, torch.load(rank_file, weights_only=False)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
