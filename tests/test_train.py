"""End-to-end tests of training: `afnext train` on a tiny corpus with a nano model, on CPU.

Checked: exact resume (a preempted run resumed in a new process reproduces the uninterrupted run's
losses and weights bit for bit), a kill -9 in the middle of writing a checkpoint (LATEST still names a
complete, loadable checkpoint; --resume then completes the same trajectory), 2-process data parallelism
under torchrun (same per-step losses and final weights as 1 process at the same global batch, within
1e-5), freeze policies (frozen groups bit-identical after a step; LoRA leaves its base weights alone and
its merged export reproduces the trained model's logits), the export loading in transformers and in
`afnext ask`, configuration errors (exit 2, one `error:` line), `afnext plot`, and a manifest row with
missing audio (skipped, reported, training goes on); in process: the validation of every config value,
and that `--resume` of a finished run re-exports without rewriting the checkpoint LATEST names.

The subprocess runs are independent, so the module fixture `jobs` starts the ones the selected tests
need at once, a few at a time, and each test waits for the results it checks. All training processes
run single-threaded, which makes their CPU arithmetic deterministic whatever else runs beside them.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import train_helpers as th
from afnext.train import state as ckpt

DDP_TOL = 1e-5


# ---- shared set-up ----------------------------------------------------------------------------------
class Setup:
    def __init__(self, root: Path, processor: Path):
        self.root = root
        self.processor = processor
        self.registry = th.make_corpus(root / "data")
        self.skip_registry = th.make_corpus(root / "data", n_audio=5, n_text=2, missing=1, name="skip")

    def config(self, name: str, **kw) -> tuple[Path, Path]:
        """(config path, run directory) of a run called `name`."""
        run_dir = self.root / "runs" / name
        kw.setdefault("registry", self.registry)
        return th.write_config(self.root / f"{name}.toml", processor=self.processor, out_dir=run_dir, **kw), run_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dirs) -> Setup:
    return Setup(tmp_path_factory.mktemp("train"), tiny_dirs["afnext"])


# ---- the subprocess jobs ----------------------------------------------------------------------------
def job_full(s: Setup) -> dict:
    """The reference: 4 steps uninterrupted, no intermediate checkpoints."""
    cfg, run_dir = s.config("full", save_every=0)
    return {"run": th.train(cfg), "dir": run_dir}


def job_resume(s: Setup) -> dict:
    """Preempted right after the step-2 checkpoint (save_every=2), then `--resume` in a new process."""
    cfg, run_dir = s.config("resume", save_every=2)
    first = th.train_stop_after(2, cfg)
    seen = {"latest": (run_dir / "checkpoints" / ckpt.LATEST).read_text().strip() if first.rc == 0 else None,
            "metrics_steps": [r["step"] for r in th.metrics(run_dir)] if first.rc == 0 else None,
            "final_exists": (run_dir / "final").exists()}
    return {"first": first, "seen": seen, "run": th.train(cfg, resume=True), "dir": run_dir}


def job_kill(s: Setup) -> dict:
    """save_every=1 with slow saves; SIGKILL while the step-2 checkpoint is half written; then resume."""
    cfg, run_dir = s.config("kill", save_every=1)
    killed, tmp = th.train_and_kill_mid_save(cfg, kill_step=2, delay_s=1.0)
    ckpts = run_dir / "checkpoints"
    seen = {"tmp_exists": tmp.is_dir(), "tmp_files": sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else [],
            "step2_exists": (ckpts / "step-000002").exists(),
            "latest_text": (ckpts / ckpt.LATEST).read_text().strip() if (ckpts / ckpt.LATEST).is_file() else None}
    latest = ckpt.latest_checkpoint(run_dir)
    seen["latest"] = latest.name if latest else None
    if latest is not None:
        model_state, optim_state, trainer_state, rank_state = ckpt.load_checkpoint(latest)
        seen.update(loaded_step=trainer_state["step"], n_tensors=len(model_state),
                    n_optim_states=len(optim_state["state"]), loader=rank_state["loader"]["position"])
    resumed = th.train(cfg, resume=True)
    seen["stale_after_resume"] = sorted(p.name for p in ckpts.glob(".tmp-*"))
    return {"killed": killed, "seen": seen, "run": resumed, "dir": run_dir}


def job_ddp(s: Setup) -> dict:
    cfg, run_dir = s.config("ddp", save_every=0)
    return {"run": th.torchrun(2, cfg), "dir": run_dir}


def job_sp(s: Setup) -> dict:
    """4 processes: sequence parallel Ulysses 2 x Ring 2 (one data-parallel replica)."""
    cfg, run_dir = s.config("sp", save_every=0)
    return {"run": th.torchrun(4, cfg, "system.sp_ulysses=2", "system.sp_ring=2"), "dir": run_dir}


def job_skipped(s: Setup) -> dict:
    cfg, run_dir = s.config("skipped", registry=s.skip_registry, max_steps=1)
    return {"run": th.train(cfg), "dir": run_dir}


def _error_configs(s: Setup) -> dict[str, tuple]:
    good, _ = s.config("errors")
    typo = s.root / "typo.toml"
    typo.write_text(good.read_text().replace("max_steps = 4", "max_step = 4"))
    return {
        "unknown_key": (typo,),
        "wrong_type": (good, "optim.max_steps=four"),
        "all_frozen": (good, 'optim.freeze={ encoder = "frozen", adapter = "frozen", llm = "frozen" }'),
        "missing_registry": (good, f'data.registry="{s.root / "nowhere" / "registry.toml"}"'),
    }


def job_error(s: Setup, name: str) -> th.Result:
    cfg, *sets = _error_configs(s)[name]
    return th.train(cfg, *sets)


ERRORS = ("unknown_key", "wrong_type", "all_frozen", "missing_registry")
JOBS = {"full": job_full, "kill": job_kill, "resume": job_resume, "ddp": job_ddp, "sp": job_sp, "skipped": job_skipped,
        **{f"error:{e}": (lambda s, e=e: job_error(s, e)) for e in ERRORS}}
# which jobs each test waits for (only the selected tests' jobs are started)
NEEDS = {
    "test_exact_resume": ("full", "resume"),
    "test_resume_of_a_finished_run_rewrites_no_checkpoint": ("full", "resume"),
    "test_kill_9_mid_save": ("full", "kill"),
    "test_two_process_data_parallel": ("full", "ddp"),
    "test_sequence_parallel_training_matches_one_process": ("full", "sp"),
    "test_export_loads_in_transformers_and_afnext_ask": ("full",),
    "test_any_checkpoint_exports": ("resume",),
    "test_config_errors": tuple(f"error:{e}" for e in ERRORS),
    "test_plot": ("full",),
    "test_missing_audio_row_is_skipped_and_reported": ("skipped",),
}


class Jobs:
    def __init__(self, s: Setup, names: list[str]):
        # 2 cores: two single-threaded trainings at a time, plus one slot for the kill job, which mostly sleeps
        self.pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="train-job")
        self.futures: dict[str, Future] = {n: self.pool.submit(JOBS[n], s) for n in names}

    def __getitem__(self, name: str):
        return self.futures[name].result()


@pytest.fixture(scope="module")
def jobs(request, setup):
    selected = {item.name.split("[")[0] for item in request.session.items if item.module is request.module}
    names = [n for n in JOBS if any(n in NEEDS.get(t, ()) for t in selected)]  # JOBS order: longest first
    j = Jobs(setup, names)
    yield j
    j.pool.shutdown(wait=True, cancel_futures=True)


def assert_ok(r: th.Result) -> None:
    assert r.rc == 0, str(r)
    assert "Traceback" not in r.err, str(r)


def assert_one_error(r: th.Result, *fragments: str) -> str:
    assert r.rc == 2, str(r)
    assert "Traceback" not in r.err and r.out == "", str(r)
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), str(r)
    for fragment in fragments:
        assert fragment in lines[0], str(r)
    return lines[0]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = th.weights(a), th.weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ---- 1. exact resume --------------------------------------------------------------------------------
def test_exact_resume(jobs):
    full, res = jobs["full"], jobs["resume"]
    assert_ok(full["run"])
    assert_ok(res["first"])
    assert res["seen"] == {"latest": "step-000002", "metrics_steps": [1, 2], "final_exists": False}
    assert_ok(res["run"])
    ref = th.metrics(full["dir"])
    assert [r["step"] for r in ref] == [1, 2, 3, 4]
    assert len({r["loss"] for r in ref}) == 4 and ref[-1]["loss"] < ref[0]["loss"]  # it trains
    assert ref[2]["lr"] != ref[1]["lr"]  # the schedule moves across the resume point
    assert th.metrics(res["dir"]) == ref  # losses, grad norms, lrs, batch contents: all ==
    assert_same_weights(res["dir"] / "final", full["dir"] / "final")
    # the optimizer state at the end is identical too (moments restored, not restarted)
    oa = torch.load(res["dir"] / "checkpoints" / "step-000004" / "optimizer.pt", weights_only=False)["state"]
    ob = torch.load(full["dir"] / "checkpoints" / "step-000004" / "optimizer.pt", weights_only=False)["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        for k in oa[i]:
            assert torch.equal(torch.as_tensor(oa[i][k]), torch.as_tensor(ob[i][k])), (i, k)


def test_resume_of_a_finished_run_rewrites_no_checkpoint(jobs, setup, monkeypatch):
    """`--resume` on a run that already reached max_steps only re-exports: saving step N again would delete
    the directory LATEST names before the new one is renamed in."""
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    res, full = jobs["resume"], jobs["full"]
    assert_ok(res["run"])

    def no_save(*a, **k):
        raise AssertionError("a finished run was checkpointed again")

    monkeypatch.setattr(ckpt, "save_checkpoint", no_save)
    final = Trainer(TrainConfig.load(setup.root / "resume.toml"), resume=True, progress=False).fit()
    assert (res["dir"] / "checkpoints" / ckpt.LATEST).read_text().strip() == "step-000004"
    assert [r["step"] for r in th.metrics(res["dir"])] == [1, 2, 3, 4]
    assert_same_weights(final, full["dir"] / "final")


# ---- 2. kill -9 mid-save ----------------------------------------------------------------------------
def test_kill_9_mid_save(jobs):
    full, k = jobs["full"], jobs["kill"]
    assert_ok(full["run"])
    assert k["killed"].rc == -9, str(k["killed"])  # killed, not finished
    seen = k["seen"]
    # killed while the step-2 checkpoint was half written ...
    assert seen["tmp_exists"] and not seen["step2_exists"], seen
    assert "trainer.json" not in seen["tmp_files"], seen
    # ... and LATEST still names the complete step-1 checkpoint, which loads
    assert seen["latest_text"] == "step-000001" and seen["latest"] == "step-000001", seen
    assert seen["loaded_step"] == 1 and seen["loader"] == 8, seen
    assert seen["n_tensors"] == len(th.weights(full["dir"] / "final")), seen
    assert seen["n_optim_states"] > 0
    # --resume completes, clears the stale temp directory, and follows the uninterrupted trajectory
    assert_ok(k["run"])
    assert seen["stale_after_resume"] == []
    assert th.metrics(k["dir"]) == th.metrics(full["dir"])
    assert_same_weights(k["dir"] / "final", full["dir"] / "final")


# ---- 3. data parallel -------------------------------------------------------------------------------
def assert_same_trajectory(one_dir, other_dir, *, grad_norm_tol: float | None = None) -> None:
    """Same samples and token counts per step, the loss and final weights up to summation order."""
    one, other = th.metrics(one_dir), th.metrics(other_dir)
    assert [r["step"] for r in other] == [1, 2, 3, 4]
    for a, b in zip(one, other):
        same = ("samples", "tokens", "label_tokens", "lr")
        assert [a[k] for k in same] == [b[k] for k in same], (a, b)
        assert abs(a["loss"] - b["loss"]) < DDP_TOL, (a, b)
        if grad_norm_tol is not None:
            assert abs(a["grad_norm"] - b["grad_norm"]) < grad_norm_tol, (a, b)
    diff = th.max_weight_diff(th.weights(one_dir / "final"), th.weights(other_dir / "final"))
    assert diff < DDP_TOL, diff


def test_two_process_data_parallel(jobs):
    full, ddp = jobs["full"], jobs["ddp"]
    assert_ok(full["run"])
    assert_ok(ddp["run"])
    assert_same_trajectory(full["dir"], ddp["dir"], grad_norm_tol=1e-4)


def test_sequence_parallel_training_matches_one_process(jobs):
    """`afnext train` under torchrun with SP 2 x 2: every step's loss and the final weights equal the
    1-process run (sequences sharded zigzag over the ring, heads over Ulysses, audio windows split)."""
    full, sp = jobs["full"], jobs["sp"]
    assert_ok(full["run"])
    assert_ok(sp["run"])
    assert_same_trajectory(full["dir"], sp["dir"])


# ---- 4. freeze policies (in process) ----------------------------------------------------------------
def _trainer(setup: Setup, name: str, freeze: dict, max_steps: int):
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    cfg, run_dir = setup.config(name, freeze=freeze, max_steps=max_steps)
    return Trainer(TrainConfig.load(cfg), progress=False), run_dir


def _snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_pretrain1_freeze_changes_only_the_adapter(setup):
    trainer, _ = _trainer(setup, "pretrain1", {"encoder": "frozen", "adapter": "train", "llm": "frozen"}, 1)
    assert trainer.trainable["encoder"] == 0 and trainer.trainable["llm"] == 0 and trainer.trainable["adapter"] > 0
    before = _snapshot(trainer.model)
    trainer.train_step()
    after = trainer.model.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    adapter = {k for k in before if k.startswith("adapter.")}
    assert changed == adapter, sorted(changed ^ adapter)


def test_sample_loss_norm_weighs_every_sample_equally(setup):
    """optim.loss_norm = "sample": the packed batch's gradient equals the mean over samples of each
    sample's own mean-NLL gradient, computed one sample at a time; token normalisation differs from it
    (the samples have different label counts)."""
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    cfg_path, _ = setup.config("loss_norm", freeze={"encoder": "train", "adapter": "train", "llm": "train"}, max_steps=1)

    def grads(trainer):
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    def per_sample_reference(trainer, samples):
        trainer.model.zero_grad(set_to_none=True)
        for s in samples:
            for b in trainer._micro_batches([s]):
                trainer._micro_step(b, float(s.n_label_tokens * len(samples)))
        return grads(trainer)

    for norm in ("sample", "token"):
        trainer = Trainer(TrainConfig.load(cfg_path, [f'optim.loss_norm="{norm}"']), progress=False)
        samples = [s for s in trainer._next_samples(6) if s.n_label_tokens]
        assert len({s.n_label_tokens for s in samples}) > 1  # otherwise both norms coincide
        packed = trainer._micro_batches(samples)
        assert len(packed) < len(samples)  # several samples share a packed row
        trainer.model.zero_grad(set_to_none=True)
        denom = len(samples) if norm == "sample" else sum(s.n_label_tokens for s in samples)
        for b in packed:
            trainer._micro_step(b, float(denom))
        got = grads(trainer)
        trainer.cfg.optim.loss_norm = "token"  # the reference: each sample alone, its own token mean
        ref = per_sample_reference(trainer, samples)
        diff = max((got[n] - ref[n]).abs().max().item() for n in ref)
        scale = max(ref[n].abs().max().item() for n in ref)
        if norm == "sample":
            assert diff <= 1e-5 * scale, (diff, scale)
        else:
            assert diff > 1e-3 * scale, (diff, scale)


def test_loss_norm_is_validated(setup):
    from afnext.train.config import TrainConfig, TrainConfigError

    cfg_path, _ = setup.config("loss_norm_bad", freeze={"encoder": "train", "adapter": "train", "llm": "train"}, max_steps=1)
    with pytest.raises(TrainConfigError, match="optim.loss_norm must be 'token' or 'sample', got 'batch'"):
        TrainConfig.load(cfg_path, ['optim.loss_norm="batch"'])
    with pytest.raises(TrainConfigError, match="optim.loss_norm = 'sample' is not supported with sequence parallelism"):
        TrainConfig.load(cfg_path, ['optim.loss_norm="sample"', "system.sp_ring=2"])


def test_lora_keeps_base_weights_and_merged_export_matches(setup):
    from afnext import AFNext, Processor

    trainer, _ = _trainer(setup, "lora", {"encoder": "frozen", "adapter": "train", "llm": "lora"}, 2)
    before = _snapshot(trainer.model)
    lora_keys = [k for k in before if "lora_" in k]
    assert lora_keys and all(".llm." in f".{k}" for k in lora_keys)
    final = trainer.fit()
    after = trainer.model.state_dict()
    for k in before:
        if "lora_" in k or k.startswith("adapter."):
            continue
        assert torch.equal(before[k], after[k]), k  # encoder, embeddings, norms, LoRA bases, lm_head
    assert any(not torch.equal(before[k], after[k]) for k in lora_keys if k.endswith("lora_b"))
    assert any(not torch.equal(before[k], after[k]) for k in lora_keys if k.endswith("lora_a"))

    exported = th.weights(final)
    assert not [k for k in exported if "lora" in k]
    from afnext.train.export import export_checkpoint  # the checkpoint (LoRA unmerged) exports to the same merge

    again = th.weights(export_checkpoint(trainer.run_dir, trainer.run_dir.parent / "lora-again"))
    assert again.keys() == exported.keys() and all(torch.equal(again[k], exported[k]) for k in exported)
    merged = AFNext.from_pretrained(final, dtype=torch.float32).eval()
    merged_sd = merged.state_dict()
    assert not [k for k in merged_sd if "lora" in k]
    bases = [k for k in before if k.endswith(".base.weight")]
    assert bases and all(not torch.equal(merged_sd[k.replace(".base.", ".")], before[k]) for k in bases)

    proc = Processor.from_pretrained(final)
    inputs = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "audio", "audio": th.tone_mix(4.0, seed=7)}, {"type": "text", "text": "How long is this clip?"}]}])
    trainer.model.eval()
    unmerged_base = AFNext.from_pretrained(final, dtype=torch.float32).eval()  # the export with the LoRA bases put back
    unmerged_base.load_state_dict({**merged_sd, **{k.replace(".base.", "."): before[k] for k in bases}})
    with torch.no_grad():
        want = trainer.model(**inputs).logits
        got = merged(**inputs).logits
        without_lora = unmerged_base(**inputs).logits
    assert (without_lora - want).abs().max() > 1e-3  # the LoRA update matters to the logits ...
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # ... and the merge reproduces it


# ---- 5. export: transformers and afnext ask ---------------------------------------------------------
def test_export_loads_in_transformers_and_afnext_ask(jobs, setup):
    transformers = pytest.importorskip("transformers")
    from afnext import AFNext, Processor

    full = jobs["full"]
    assert_ok(full["run"])
    final = full["dir"] / "final"
    ref = transformers.MusicFlamingoForConditionalGeneration.from_pretrained(final).eval()
    ours = AFNext.from_pretrained(final, dtype=torch.float32).eval()
    proc = Processor.from_pretrained(final)
    inputs = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "audio", "audio": th.tone_mix(6.0, seed=3)}, {"type": "text", "text": "How long is this clip?"}]}])
    with torch.no_grad():
        r = ref(**inputs).logits
        o = ours(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert r.abs().max() > 0.1
    torch.testing.assert_close(o[valid], r[valid], atol=1e-4, rtol=0)

    wav = th.write_wav(setup.root / "ask.wav", th.tone_mix(3.0, seed=5))
    ask = th.afnext("ask", wav, "-p", "How long is this clip?", "-m", final, "--json", "--max-new-tokens", "8",
                    "--device", "cpu")
    assert_ok(ask)
    answer = json.loads(ask.out)
    assert isinstance(answer["answer"], str) and answer["tokens"]


def test_any_checkpoint_exports(jobs, setup, tmp_path):
    """`afnext export`: the run's last checkpoint exports to the same files as the stage's own final/; an
    earlier one exports its own weights and loads in `afnext`; bad sources and destinations are one-line
    errors."""
    import shutil

    from safetensors.torch import load_file

    from afnext import AFNext
    from afnext.checkpoint import to_checkpoint_key

    res = jobs["resume"]
    assert_ok(res["run"])
    run_dir = res["dir"]
    last = tmp_path / "last"
    assert_ok(th.afnext("export", run_dir, last))  # a run directory: its latest checkpoint (step 4)
    final = run_dir / "final"
    want, got = th.weights(final), th.weights(last)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "processor_config.json", "preprocessor_config.json"):
        assert (last / name).read_bytes() == (final / name).read_bytes(), name
    assert json.loads((last / "training.json").read_text())["step"] == 4

    step2 = run_dir / "checkpoints" / "step-000002"
    early = tmp_path / "early"
    assert_ok(th.afnext("export", step2, early))
    trained = load_file(str(step2 / "model.safetensors"))
    model = AFNext.from_pretrained(early, dtype=torch.float32)
    exported = th.weights(early)
    pairs = [(exported[to_checkpoint_key(k)], v) for k, v in trained.items() if to_checkpoint_key(k) in exported]
    assert len(pairs) == len(exported) and all(torch.equal(a, b) for a, b in pairs)
    assert any(not torch.equal(want[k], exported[k]) for k in want)  # step 2 is not step 4
    assert model.config.to_hf_dict() == AFNext.from_pretrained(final).config.to_hf_dict()

    assert_one_error(th.afnext("export", tmp_path / "nowhere", tmp_path / "o1"), str(tmp_path / "nowhere"),
                     "does not exist")
    assert_one_error(th.afnext("export", setup.root, tmp_path / "o2"), "neither a checkpoint", "checkpoints/LATEST")
    assert_one_error(th.afnext("export", step2, last), str(last), "already exists and is not empty")
    assert_one_error(th.afnext("export", step2, step2 / "sub"), "inside the checkpoint")
    old = tmp_path / "old-step"
    shutil.copytree(step2, old)
    shutil.rmtree(old / "export")
    assert_one_error(th.afnext("export", old, tmp_path / "o3"), "export/export.json", "saved by an afnext without")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


# ---- 6. configuration errors ------------------------------------------------------------------------
def test_config_errors(jobs, setup):
    assert_one_error(jobs["error:unknown_key"], "unknown key optim.max_step")
    assert_one_error(jobs["error:wrong_type"], "optim.max_steps", "must be a number", "four")
    assert_one_error(jobs["error:all_frozen"], "every module group is frozen")
    assert_one_error(jobs["error:missing_registry"], str(setup.root / "nowhere" / "registry.toml"))


@pytest.mark.parametrize("override, message", [
    ("optim.lr=1e-3", "optim.lr must be a table"),
    ('optim.freeze="frozen"', "optim.freeze must be a table"),
    ('optim.lr={ encoder = "fast" }', "optim.lr.encoder must be a non-negative number"),
    ("optim.lr={ llm = -1.0 }", "optim.lr.llm must be a non-negative number"),
    ("optim.betas=[0.9]", "optim.betas must be two numbers"),
    ("system.save_every=true", "system.save_every must be an integer"),
    ("run.seed=1.5", "run.seed must be an integer"),
    ("system.activation_checkpointing=1", "must be a boolean"),
    ("optim.lr={ decoder = 1e-4 }", "unknown module group 'decoder'"),
    ('optim.freeze={ encoder = "lora" }', "LoRA is supported on the llm group only"),
    ("data.max_tokens=4096", "exceeds data.token_budget"),
    ("runn.seed=1", "unknown section [runn]"),
    ("data.audio_cache_gb=-2", "data.audio_cache_gb must be a finite number >= 0 (GiB), got -2"),
    ("data.audio_cache_gb=inf", "data.audio_cache_gb must be a finite number >= 0 (GiB), got inf"),
    ('data.share_prefix="yes"', "data.share_prefix must be a boolean"),
    ("optim.cycles=0", "optim.cycles must be between 1 and optim.max_steps"),
])
def test_config_validation(setup, override, message):
    """In process (cheap): every malformed value is a TrainConfigError naming the key, never a crash later."""
    from afnext.train.config import TrainConfig, TrainConfigError

    cfg, _ = setup.config("validation")
    TrainConfig.load(cfg)  # the base file is fine
    with pytest.raises(TrainConfigError) as exc:
        TrainConfig.load(cfg, [override])
    assert message in str(exc.value)


REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in [*(REPO / "configs").rglob("*.toml"),
                                                                  *(REPO / "experiments").glob("*.toml")])


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_load(name):
    """Every stage file in configs/ and experiments/ passes validation (a misspelt key in a file nothing
    else loads would otherwise surface only when a user runs it); a stage file is named after its stage."""
    from afnext import speedrun as sr
    from afnext.train.config import TrainConfig

    assert {f"configs/nano/{s}.toml" for s in sr.STAGES} <= set(SHIPPED_CONFIGS)  # the glob found them
    cfg = TrainConfig.load(REPO / name)
    assert cfg.optim.max_steps >= 1
    if name.startswith("configs/"):
        assert cfg.run.stage == Path(name).stem


def test_global_batch_must_divide_by_world_size(setup, monkeypatch):
    """The check runs after process-group set-up, so fake a 3-rank world in process (no FSDP)."""
    from typer.testing import CliRunner

    import afnext.parallel.fsdp as fsdp
    import afnext.train.loop as loop
    from afnext.cli import app

    monkeypatch.setattr(loop, "init_distributed", lambda: (0, 3, torch.device("cpu")))
    monkeypatch.setattr(fsdp, "data_parallel_mesh", lambda *a, **k: None)
    monkeypatch.setattr(fsdp, "apply_fsdp", lambda model, mesh, **k: model)
    cfg, _ = setup.config("world3")
    with pytest.raises(loop.TrainError, match=r"global_batch=8 is not divisible by the 3 data-parallel ranks"):
        from afnext.train.config import TrainConfig

        loop.Trainer(TrainConfig.load(cfg), progress=False)
    r = CliRunner().invoke(app, ["train", str(cfg), "--quiet"])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "not divisible by the 3 data-parallel ranks" in lines[0], r.stderr


# ---- 7. plot ----------------------------------------------------------------------------------------
def test_plot(jobs):
    full = jobs["full"]
    assert_ok(full["run"])
    r = th.afnext("plot", full["dir"])
    assert_ok(r)
    png = full["dir"] / "curves.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000, len(data)


# ---- 8. skipped rows --------------------------------------------------------------------------------
def test_missing_audio_row_is_skipped_and_reported(jobs):
    sk = jobs["skipped"]
    r = sk["run"]
    assert_ok(r)
    assert (sk["dir"] / "final" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (sk["dir"] / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1]
    assert rows[0]["samples"] == 8 and rows[0]["skipped"] == 1  # the batch was filled from good rows
    summary = [line for line in r.err.splitlines() if "skipped 1 of" in line]
    assert summary and "missing" in summary[-1], str(r)
    assert "missing-0.wav" in r.err, str(r)  # the row is named in the log


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))


def test_cosine_cycles_restart_the_warmup_and_cosine():
    """``optim.cycles``: each cycle is the one-cycle schedule of its own length, the last taking the
    remainder, exactly as if each were a separate run of that many steps."""
    from afnext.train.groups import lr_factor

    one = [lr_factor(s, 600, 0.05, 0.1) for s in range(600)]
    three = [lr_factor(s, 1800, 0.05, 0.1, cycles=3) for s in range(1800)]
    assert three == one * 3
    assert three[0] == pytest.approx(1 / 30) and three[29] == 1.0 and three[599] == pytest.approx(0.1, abs=1e-5)
    odd = [lr_factor(s, 7, 0.0, 0.0, cycles=2) for s in range(7)]  # cycles of 3 and 4 steps
    assert odd[:3] == [lr_factor(s, 3, 0.0, 0.0) for s in range(3)]
    assert odd[3:] == [lr_factor(s, 4, 0.0, 0.0) for s in range(4)]
    assert [lr_factor(s, 10, 0.1, 0.0, cycles=1) for s in range(10)] == [lr_factor(s, 10, 0.1, 0.0) for s in range(10)]


def test_the_trainer_follows_restarting_cycles(setup):
    """The trainer applies ``optim.cycles``: 6 steps in 2 cycles set each step's learning rate from the
    restarting schedule, so step 4 starts over at step 1's rate."""
    from afnext.train.config import TrainConfig
    from afnext.train.groups import lr_factor
    from afnext.train.loop import Trainer

    cfg, _ = setup.config("cycles", max_steps=6)
    trainer = Trainer(TrainConfig.load(cfg, ["optim.cycles=2", "optim.warmup_ratio=0.0"]), progress=False)
    lrs = [trainer.train_step()["lr"]["llm"] for _ in range(6)]
    base = trainer.cfg.optim.lr["llm"]
    assert lrs == pytest.approx([base * lr_factor(s, 6, 0.0, trainer.cfg.optim.min_lr_ratio, 2) for s in range(6)])
    assert lrs[0] == pytest.approx(base) and lrs[2] < lrs[1] < lrs[0] and lrs[3] == pytest.approx(lrs[0])


def test_a_run_replanned_mid_run_stops_at_the_new_total_and_records_it(tmp_path, tiny_dirs):
    """``Trainer.set_max_steps`` (the speedrun's wall-time re-plan): the run ends at the new total, the
    learning rate follows the warm-up and cosine of the new total from then on, and the run directory's
    config says the total it ran."""
    import json

    from afnext.train.config import TrainConfig
    from afnext.train.groups import lr_factor
    from afnext.train.loop import Trainer, TrainError

    registry = th.make_corpus(tmp_path / "data")
    cfg = th.write_config(tmp_path / "r.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "run", max_steps=6)
    trainer = Trainer(TrainConfig.load(cfg), progress=False)
    peak = trainer.cfg.optim.lr["llm"]
    records = []

    def replan(t, record):
        records.append(record)
        if record["step"] == 2:
            t.set_max_steps(4)
            with pytest.raises(TrainError, match="max_steps=1 is below the 2 steps already run"):
                t.set_max_steps(1)

    trainer.fit(on_step=replan)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    o = trainer.cfg.optim
    for r in records[2:]:  # the step's lr is set before it runs, from the step count before it
        assert r["lr"]["llm"] == pytest.approx(peak * lr_factor(r["step"] - 1, 4, o.warmup_ratio, o.min_lr_ratio))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optim"]["max_steps"] == 4
