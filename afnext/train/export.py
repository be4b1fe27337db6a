"""HF-format export of trained weights, from the live trainer at the end of a stage or from any periodic
checkpoint afterwards (``afnext export``): one function writes both, so the two give the same files.

A checkpoint carries everything its export needs besides the weights in ``export/`` (written into the
checkpoint's temporary directory, so it is as atomic as the rest): config.json, generation_config.json,
the tokenizer and template files, and ``export.json`` (the chat-template kind and the LoRA layout, whose
adapters are merged into the base weights on export). A checkpoint can thus be exported after its run
directory's init checkpoint or corpus tokenizer has gone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer

from afnext.checkpoint import save_model
from afnext.config import AFNextConfig
from afnext.model.afnext import AFNext
from afnext.tokenizer_files import write_tokenizer_files
from afnext.train import state as ckpt
from afnext.train.groups import apply_lora, merge_lora

META_DIR = "export"
META_FILE = "export.json"


class ExportError(RuntimeError):
    pass


def write_meta(dst: Path, config: AFNextConfig, generation_defaults: dict, tokenizer: Tokenizer, *, kind: str,
               lora: dict | None) -> Path:
    """Everything an export needs but the weights, into ``dst/export``. ``lora``: targets, rank and alpha
    when the LLM trains through LoRA adapters (the checkpoint's weights then hold them unmerged)."""
    out = dst / META_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**config.to_hf_dict(), "dtype": "float32"}, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(dict(generation_defaults), indent=2) + "\n")
    write_tokenizer_files(out, tokenizer, kind=kind)
    (out / META_FILE).write_text(json.dumps({"kind": kind, "lora": lora}, indent=2) + "\n")
    return out


def export_state(model_state: dict[str, torch.Tensor], config: AFNextConfig, generation_defaults: dict,
                 tokenizer: Tokenizer, out: Path, *, kind: str, lora: dict | None, info: dict) -> Path:
    """Write ``out`` as an HF-format checkpoint (LoRA merged) that transformers and ``afnext ask`` load.
    Written beside ``out`` and renamed in, so a reader never sees half an export; ``info`` goes to
    training.json (stage, step, where it came from)."""
    plain = AFNext(config)
    if lora is not None:
        apply_lora(plain.llm, lora["targets"], lora["rank"], lora["alpha"])
    plain.load_state_dict(model_state)
    merge_lora(plain)
    plain.generation_defaults = dict(generation_defaults)
    tmp = out.with_name(f".{out.name}-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(plain, tmp)
    write_tokenizer_files(tmp, tokenizer, kind=kind)
    (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def find_checkpoint(source: Path) -> Path:
    """A checkpoint directory as given, or a run directory's latest complete checkpoint."""
    if not source.exists():
        raise ExportError(f"{source} does not exist")
    if (source / "trainer.json").is_file():
        return source
    if (source / "checkpoints").is_dir():
        try:
            latest = ckpt.latest_checkpoint(source)
        except RuntimeError as exc:
            raise ExportError(str(exc)) from None
        if latest is not None:
            return latest
    raise ExportError(f"{source} is neither a checkpoint (no trainer.json) nor a run directory with a complete "
                      f"checkpoint (no checkpoints/{ckpt.LATEST})")


def export_checkpoint(source: Path, out: Path) -> Path:
    """Export the checkpoint ``source`` names (a checkpoint directory, or a run directory: its latest) to ``out``."""
    from safetensors.torch import load_file

    path = find_checkpoint(Path(source))
    meta_dir = path / META_DIR
    if not (meta_dir / META_FILE).is_file():
        raise ExportError(f"{path} has no {META_DIR}/{META_FILE}: it was saved by an afnext without checkpoint "
                          f"export; export the run's final/ or a newer checkpoint")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty; give a new directory")
    if out.resolve().is_relative_to(path.resolve()):
        raise ExportError(f"{out} is inside the checkpoint {path}; give a directory outside it")
    meta = json.loads((meta_dir / META_FILE).read_text())
    trainer_state = json.loads((path / "trainer.json").read_text())
    stage = trainer_state.get("config", {}).get("run", {}).get("stage")
    out.parent.mkdir(parents=True, exist_ok=True)
    return export_state(load_file(str(path / "model.safetensors")), AFNextConfig.from_dir(meta_dir),
                        json.loads((meta_dir / "generation_config.json").read_text()),
                        Tokenizer.from_file(str(meta_dir / "tokenizer.json")), out, kind=meta["kind"],
                        lora=meta["lora"], info={"stage": stage, "step": trainer_state["step"],
                                                 "checkpoint": str(path)})
