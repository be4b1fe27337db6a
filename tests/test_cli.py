"""End-to-end tests of the `afnext` command, run as real subprocesses against tiny random checkpoints.

What is checked is what a user sees: exit codes, JSON on stdout only, generated text streamed verbatim
to stdout, one `error: ...` line on stderr for every user mistake (bad audio, bad model, bad option),
and never a traceback.

Each subprocess pays ~2-3 s of import time, so the commands are all started at once, in a thread pool,
by the module fixture `jobs`; each test then waits for the results it checks.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
import wave
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from afnext.audio import num_audio_tokens
from conftest import SR, tone_mix

QUESTION = "What happens in this recording?"
TIMEOUT_S = 600


# ----------------------------------------------------------------------------- running the CLI


from conftest import Result  # noqa: E402  (one subprocess record for all tests)


def _env(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(hf_home),  # an empty cache: a hub id can never resolve
        PYTHONIOENCODING="utf-8",
        COLUMNS="60",  # narrower than any error message: a wrapped error line shows up as two lines
        OMP_NUM_THREADS="1",  # several CLIs run at once; don't oversubscribe the cores
    )
    return env


def run_cli(args: list[str], env: dict[str, str], stdin: str | None = None) -> Result:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "afnext.cli", *map(str, args)], input=stdin if stdin is not None else "",
                       capture_output=True, text=True, encoding="utf-8", env=env, timeout=TIMEOUT_S)
    return Result([str(a) for a in args], p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)


def assert_no_traceback(r: Result) -> None:
    assert "Traceback" not in r.out and "Traceback" not in r.err, str(r)


def assert_ok(r: Result) -> None:
    assert r.rc == 0, str(r)
    assert_no_traceback(r)


def assert_one_error(r: Result, *fragments: str) -> str:
    """Exit 2, nothing on stdout, and stderr is exactly one non-blank line: `error: ...` naming `fragments`."""
    assert r.rc == 2, str(r)
    assert_no_traceback(r)
    assert r.out == "", str(r)
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), str(r)
    for fragment in fragments:
        assert fragment in lines[0], str(r)
    return lines[0]


# ----------------------------------------------------------------------------- test audio


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """16-kHz mono int16 WAV via the stdlib; float samples in [-1, 1] are scaled to int16."""
    if samples.dtype != np.int16:
        samples = np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(samples.tobytes())
    return path


def write_float_wav(path: Path, samples: np.ndarray) -> Path:
    """A WAVE_FORMAT_IEEE_FLOAT (format tag 3) 32-bit mono WAV, header written by hand."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, SR, SR * 4, 4, 32)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    return path


def long_wav(path: Path, seconds: float) -> Path:
    """Low-amplitude noise plus a 440 Hz tone, written in 60-s chunks to keep memory flat."""
    rng = np.random.default_rng(0)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        total, chunk = int(seconds * SR), 60 * SR
        for start in range(0, total, chunk):
            t = np.arange(start, min(start + chunk, total)) / SR
            x = 0.01 * rng.standard_normal(t.shape) + 0.02 * np.sin(2 * np.pi * 440 * t)
            w.writeframes(np.round(x * 32767).astype(np.int16).tobytes())
    return path


def silent_wav(path: Path, seconds: float) -> Path:
    return write_wav(path, np.zeros(int(seconds * SR), dtype=np.int16))


def safetensors_numel(path: Path) -> int:
    """Sum of tensor sizes, read straight from the safetensors header (8-byte length + JSON)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


# ----------------------------------------------------------------------------- all commands, started at once


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_audio")
    f = {
        "clip65": write_wav(d / "clip65.wav", 0.8 * tone_mix(65, seed=0)),
        "clip10": write_wav(d / "clip10.wav", 0.8 * tone_mix(10, seed=1)),
        "long20": long_wav(d / "long20.wav", 20 * 60),
        "silent31": silent_wav(d / "silent31.wav", 31 * 60),
    }
    broken = d / "broken"
    broken.mkdir()
    f["missing"] = broken / "missing.wav"
    f["empty"] = broken / "empty.wav"
    f["empty"].write_bytes(b"")
    f["garbage"] = broken / "garbage.mp3"
    f["garbage"].write_bytes(np.random.default_rng(7).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    f["text"] = broken / "notes.ogg"
    f["text"].write_text("Meeting notes: nothing here is audio.\n" * 20)
    f["directory"] = broken / "dir.wav"
    f["directory"].mkdir()
    whole = f["clip10"].read_bytes()
    f["cut_header"] = broken / "cut_header.wav"  # RIFF header cut inside the fmt chunk
    f["cut_header"].write_bytes(whole[:30])
    f["header_only"] = broken / "header_only.wav"  # valid 44-byte header promising 10 s, no samples
    f["header_only"].write_bytes(whole[:44])
    f["cut_data"] = broken / "cut_data.wav"  # valid header, data chunk cut mid-sample after 0.5 s
    f["cut_data"].write_bytes(whole[: 44 + SR + 1])
    nan = tone_mix(2, seed=3)
    nan[SR // 2 : SR // 2 + 100] = np.nan
    f["nan"] = write_float_wav(broken / "nan.wav", nan)
    f["markup"] = broken / "take[/x] [bold]1.wav"  # rich markup in a (missing) file name
    return f


@pytest.fixture(scope="module")
def jobs(files, tiny_dirs, tmp_path_factory):
    """Every CLI invocation of this module, submitted at once; name -> Future[Result]."""
    env = _env(tmp_path_factory.mktemp("hf_home"))
    m, m3 = str(tiny_dirs["afnext"]), str(tiny_dirs["af3"])
    ask = ["ask", "-p", QUESTION, "--model", m]
    specs: dict[str, tuple[list, str | None]] = {
        # longest first, so it overlaps with the rest
        "long20": (["ask", files["long20"], "-p", QUESTION, "--model", m, "--json", "--max-new-tokens", "4"], None),
        "json": ([*ask, files["clip65"], "--json", "--max-new-tokens", "8"], None),
        "stream": ([*ask, files["clip65"], "--max-new-tokens", "8"], None),
        "two": ([*ask, files["clip65"], files["clip10"], "--json", "--max-new-tokens", "4"], None),
        "transcribe": (["transcribe", files["clip10"], "--model", m, "--json", "--max-new-tokens", "4"], None),
        "caption": (["caption", files["clip10"], "--model", m, "--json", "--max-new-tokens", "4"], None),
        "think": ([*ask, files["clip10"], "--variant", "think", "--json", "--max-new-tokens", "6"], None),
        "variant_foo": ([*ask, files["clip10"], "--variant", "foo"], None),
        "caption_variant_foo": (["caption", files["clip10"], "--model", m, "--variant", "foo"], None),
        "chat": (["chat", files["clip10"], "--model", m, "--max-new-tokens", "5"],
                 f"hello\n/audio {files['missing']}\nwhat about now?\n/exit\n"),
        "info": (["info", m], None),
        "info_json": (["info", m, "--json"], None),
        "info_af3_json": (["info", m3, "--json"], None),
        "model_missing": ([*ask[:-1], "/nonexistent/dir", files["clip10"]], None),
        "model_hub": ([*ask[:-1], "someorg/somemodel", files["clip10"]], None),
        "info_hub": (["info", "someorg/somemodel"], None),
        "cut_data": (["ask", files["cut_data"], "-p", "x", "--model", m, "--json", "--max-new-tokens", "2"], None),
        "silent31_af3_truncate": (["ask", files["silent31"], "-p", "x", "--model", m3, "--truncate", "--json",
                                   "--max-new-tokens", "2"], None),
    }
    for name in BROKEN:
        specs[f"broken_{name}"] = (["ask", files[name], "-p", "x", "--model", m], None)
    pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
    futures = {name: pool.submit(run_cli, args, env, stdin) for name, (args, stdin) in specs.items()}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def result(jobs: dict[str, Future], name: str) -> Result:
    return jobs[name].result(timeout=TIMEOUT_S)


# ----------------------------------------------------------------------------- ask


def test_ask_json(jobs, files):
    r = result(jobs, "json")
    assert_ok(r)
    assert r.err.strip() == "" or "{" not in r.err, str(r)
    d = r.json()
    for key in ("answer", "reasoning", "evidence", "text", "finish_reason", "tokens", "timings", "audio", "peak_memory_mb"):
        assert key in d, key
    assert d["reasoning"] is None  # instruct variant
    assert isinstance(d["answer"], str) and isinstance(d["evidence"], list)
    tokens = d["tokens"]
    assert tokens["audio"] == 1625 == num_audio_tokens(65 * SR)  # 2 full windows (750 each) + 5 s (125)
    assert tokens["prompt"] > tokens["audio"]
    assert 1 <= tokens["completion"] <= 8
    assert d["finish_reason"] in ("length", "stop")
    assert d["audio"] == [{"name": str(files["clip65"]), "duration_s": 65.0}]
    assert d["timings"]["total_s"] > 0 and all(v >= 0 for v in d["timings"].values())
    assert d["peak_memory_mb"]["process_rss"] > 0


def test_ask_streams_the_same_text_without_json(jobs):
    streamed, as_json = result(jobs, "stream"), result(jobs, "json")
    assert_ok(streamed)
    text = as_json.json()["text"]
    assert text, "the tiny model generated nothing; the comparison would be vacuous"
    assert streamed.out == text + "\n"  # verbatim: no tab expansion, emoji codes or markup from rich
    assert '"answer"' not in streamed.err and not streamed.err.lstrip().startswith("{"), str(streamed)


def test_ask_two_clips(jobs, files):
    r = result(jobs, "two")
    assert_ok(r)
    d = r.json()
    assert d["audio"] == [{"name": str(files["clip65"]), "duration_s": 65.0},
                          {"name": str(files["clip10"]), "duration_s": 10.0}]
    assert d["tokens"]["audio"] == 1625 + 250 == num_audio_tokens(65 * SR) + num_audio_tokens(10 * SR)


def test_ask_twenty_minutes(jobs):
    """20 min = 40 full windows = 30,000 audio tokens, in bounded memory (~30 s on 2 CPU cores)."""
    r = result(jobs, "long20")
    assert_ok(r)
    d = r.json()
    assert d["tokens"]["audio"] == 30_000
    assert d["audio"][0]["duration_s"] == 1200.0
    assert 0 < d["peak_memory_mb"]["process_rss"] < 4000, d["peak_memory_mb"]


# ----------------------------------------------------------------------------- broken input

BROKEN = {
    "missing": "file not found",
    "empty": "no data (0 bytes)",
    "garbage": "cannot decode audio",
    "text": "cannot decode audio",
    "directory": "is a directory",
    "cut_header": "cannot decode audio",
    "header_only": "audio is empty",
    "nan": "NaN",
    "silent31": "duration 1860.0 s exceeds the model's maximum of 1800 s",
    "markup": "file not found",
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_audio_is_one_error_line(jobs, files, name):
    line = assert_one_error(result(jobs, f"broken_{name}"), str(files[name]), BROKEN[name])
    if name == "silent31":
        assert "--truncate" in line and "truncate=True" not in line  # the CLI's flag, not the Python kwarg


def test_truncated_wav_data_decodes_what_is_there(jobs):
    """A WAV whose data chunk is cut short still decodes (as ffmpeg does): 0.5 s of the promised 10 s."""
    r = result(jobs, "cut_data")
    assert_ok(r)
    d = r.json()
    assert d["audio"][0]["duration_s"] == 0.5
    assert d["tokens"]["audio"] == num_audio_tokens(SR // 2)


def test_truncate_keeps_the_limit_and_warns(jobs):
    """31 min with --truncate on an AF3 checkpoint (10-min limit): the first 600 s, and a warning."""
    r = result(jobs, "silent31_af3_truncate")
    assert_ok(r)
    d = r.json()
    assert d["audio"][0]["duration_s"] == 600.0
    assert d["tokens"]["audio"] == 20 * 750
    assert "warning" in r.err.lower() and "keeping only the first 600 s" in r.err, str(r)
    assert "{" not in r.err


@pytest.mark.slow
def test_truncate_afnext_thirty_minutes(files, tiny_dirs, tmp_path):
    """The AF-Next maximum: 31 min truncated to 30 min = 45,000 audio tokens (~40 s on 2 cores)."""
    r = run_cli(["ask", files["silent31"], "-p", "x", "--model", tiny_dirs["afnext"], "--truncate", "--json",
                 "--max-new-tokens", "2"], _env(tmp_path))
    assert_ok(r)
    d = r.json()
    assert d["audio"][0]["duration_s"] == 1800.0 and d["tokens"]["audio"] == 45_000
    assert "keeping only the first 1800 s" in r.err


# ----------------------------------------------------------------------------- models and options


def test_missing_model_directory(jobs):
    assert_one_error(result(jobs, "model_missing"), "/nonexistent/dir")


@pytest.mark.parametrize("job", ["model_hub", "info_hub"])
def test_unreachable_hub_id_says_how_to_pass_a_directory(jobs, job):
    r = result(jobs, job)
    line = assert_one_error(r, "someorg/somemodel")
    assert "--model ./somemodel" in line and "local-dir" in line
    assert r.seconds < 60, "offline resolution should fail fast"


@pytest.mark.parametrize("job", ["variant_foo", "caption_variant_foo"])
def test_unknown_variant(jobs, job):
    assert_one_error(result(jobs, job), "unknown variant 'foo'", "instruct, think, captioner")


def test_transcribe_caption_and_think(jobs):
    for name in ("transcribe", "caption", "think"):
        r = result(jobs, name)
        assert_ok(r)
        d = r.json()
        assert d["tokens"]["audio"] == 250 and "reasoning" in d and "answer" in d, name
    think = result(jobs, "think").json()
    assert think["reasoning"] is None or isinstance(think["reasoning"], str)


# ----------------------------------------------------------------------------- chat


def test_chat_two_turns(jobs, files):
    r = result(jobs, "chat")
    assert_ok(r)
    turns = [line for line in r.out.split("you> ") if line.startswith("assistant> ")]
    assert len(turns) == 2, str(r)
    assert r.out.count("assistant> ") == 2
    # a bad /audio line is reported on one line and the chat goes on
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {files['missing']}: file not found"], str(r)


# ----------------------------------------------------------------------------- info


def test_info(jobs, tiny_dirs):
    expected = {"afnext": ("info_json", "musicflamingo"), "af3": ("info_af3_json", "audioflamingo3")}
    for kind, (job, model_type) in expected.items():
        r = result(jobs, job)
        assert_ok(r)
        d = r.json()
        assert d["model_type"] == model_type
        total = safetensors_numel(tiny_dirs[kind] / "model.safetensors")
        assert d["parameters"]["total"] == total
        assert sum(v for k, v in d["parameters"].items() if k != "total") == total
    table = result(jobs, "info")
    assert_ok(table)
    assert "musicflamingo" in table.out
    assert str(safetensors_numel(tiny_dirs["afnext"] / "model.safetensors")) in table.out
