"""Checkpoint loading and saving: dtypes, memory, key layouts, and clear errors on broken directories."""

import json
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from afnext import AFNext
from afnext.checkpoint import CheckpointError
from afnext.config import ConfigError
from afnext.hub import ModelNotFoundError, resolve_model_dir


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_loads_in_each_dtype(tiny_dirs, dtype):
    ref = load_file(str(tiny_dirs["afnext"] / "model.safetensors"))
    model = AFNext.from_pretrained(tiny_dirs["afnext"], dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert not any(p.is_meta for p in model.parameters())
    torch.testing.assert_close(model.llm.layers[1].mlp.up_proj.weight,
                               ref["language_model.model.layers.1.mlp.up_proj.weight"].to(dtype), atol=0, rtol=0)
    # non-persistent tables are rebuilt on the real device, in float32
    assert model.rote.inv_freq.device.type == "cpu" and model.rote.inv_freq.dtype == torch.float32


def test_dtype_names_and_errors(tiny_dirs):
    assert AFNext.from_pretrained(tiny_dirs["af3"], dtype="bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        AFNext.from_pretrained(tiny_dirs["af3"], dtype="int8")


def test_accepts_transformers_in_memory_key_layout(tiny_dirs, tmp_path):
    """Checkpoints written with `model.audio_tower.` / `lm_head.` names load the same."""
    d = tmp_path / "renamed"
    shutil.copytree(tiny_dirs["afnext"], d)
    sd = load_file(str(d / "model.safetensors"))
    renamed = {}
    for k, v in sd.items():
        if k.startswith("language_model.lm_head."):
            renamed["lm_head." + k.split(".", 2)[2]] = v
        elif k.startswith("language_model.model."):
            renamed["model.language_model." + k[len("language_model.model."):]] = v
        else:
            renamed["model." + k] = v
    save_file(renamed, str(d / "model.safetensors"))
    a, b = AFNext.from_pretrained(tiny_dirs["afnext"]), AFNext.from_pretrained(d)
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n


def test_bf16_load_never_holds_two_copies(tmp_path):
    """Peak RSS while loading a 270 MB fp32 checkpoint in bf16 stays near the bf16 size (135 MB),
    far below fp32 + bf16 (405 MB); an fp32 load maps the file instead of copying it."""
    script = textwrap.dedent(f"""
        import resource, sys, torch
        from afnext.testing import tiny_config
        from afnext.model.afnext import AFNext
        from afnext.checkpoint import save_model
        ids = {{"<sound>": 1, "<|sound_bos|>": 2, "<|sound_eos|>": 3, "<|im_end|>": 4, "<|endoftext|>": 5}}
        cfg = tiny_config("afnext", 4096, ids)
        cfg.llm.hidden_size, cfg.llm.intermediate_size, cfg.llm.num_layers = 512, 2048, 16
        cfg.llm.num_heads, cfg.llm.num_kv_heads = 8, 2
        save_model(AFNext(cfg), "{tmp_path}")
        import gc; gc.collect()
        def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        before = rss()
        m = AFNext.from_pretrained("{tmp_path}", dtype=sys.argv[1])
        print(rss() - before, sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20)
    """)
    file_mb = None
    for dtype, limit in (("bfloat16", 0.62), ("float32", 0.62)):
        # a fresh process per dtype, so ru_maxrss measures only this load
        out = subprocess.run([sys.executable, "-c", script, dtype], capture_output=True, text=True, check=True)
        delta_mb, model_mb = map(float, out.stdout.split())
        file_mb = file_mb or (tmp_path / "model.safetensors").stat().st_size / 2**20
        assert file_mb > 250
        assert delta_mb < limit * file_mb, (dtype, delta_mb, model_mb, file_mb)


def _broken_copy(src, tmp_path, name):
    d = tmp_path / name
    shutil.copytree(src, d)
    return d


def test_clear_errors_on_broken_checkpoints(tiny_dirs, tmp_path):
    src = tiny_dirs["afnext"]
    d = _broken_copy(src, tmp_path, "noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
        AFNext.from_pretrained(d)

    d = _broken_copy(src, tmp_path, "badjson")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json: invalid JSON"):
        AFNext.from_pretrained(d)

    d = _broken_copy(src, tmp_path, "othermodel")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "qwen2_audio"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model_type 'qwen2_audio'; afnext loads musicflamingo and audioflamingo3"):
        AFNext.from_pretrained(d)

    d = _broken_copy(src, tmp_path, "shape")
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=re.escape("weights do not match config.json: llm.layers.0.mlp.down_proj.weight has shape (64, 128) "
                                                      "in the file, the config implies (64, 96) (and 5 more)")):
        AFNext.from_pretrained(d)

    d = _broken_copy(src, tmp_path, "missing")
    sd = load_file(str(d / "model.safetensors"))
    del sd["audio_tower.layer_norm.weight"]
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing 1 tensors \(e.g. encoder.layer_norm.weight\); unexpected 1 tensors \(e.g. extra.weight\)"):
        AFNext.from_pretrained(d)

    d = _broken_copy(src, tmp_path, "corrupt")
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="cannot read safetensors file"):
        AFNext.from_pretrained(d)

    d = _broken_copy(src, tmp_path, "shards")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="weight shards listed in the index are missing: model-00001-of-00002.safetensors"):
        AFNext.from_pretrained(d)


def test_model_references(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a checkpoint directory \\(config.json is missing\\)"):
        resolve_model_dir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no such directory, and it is not a hub id"):
        resolve_model_dir(tmp_path / "nope" / "deeper")
    with pytest.raises(ModelNotFoundError, match="pass that directory with --model ./somemodel"):
        resolve_model_dir("someorg/somemodel")  # HF_HUB_OFFLINE=1 in conftest: fails fast


def test_generation_config_round_trips(tiny_dirs, tmp_path):
    model = AFNext.from_pretrained(tiny_dirs["af3"])
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == json.loads(
        (tiny_dirs["af3"] / "generation_config.json").read_text())
    saved = json.loads((tmp_path / "config.json").read_text())
    original = json.loads((tiny_dirs["af3"] / "config.json").read_text())
    assert {k: v for k, v in saved.items() if k != "dtype"} == {k: v for k, v in original.items() if k != "dtype"}
