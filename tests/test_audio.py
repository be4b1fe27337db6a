"""Tests for afnext.audio: decoding, resampling, windowing, token math and Whisper mel parity.

transformers' WhisperFeatureExtractor is the oracle for the features; every encoded fixture is
generated here with PyAV's own encoders, in tmp_path.
"""

import io
import math
import wave

import av
import numpy as np
import pytest
import torch

from afnext import audio as A
from afnext.audio import AudioError

SR_HZ = A.SAMPLE_RATE


def _chirp_noise(seconds: float, seed: int = 0) -> np.ndarray:
    """Deterministic 16-kHz test signal: a 100 Hz -> 7 kHz linear chirp plus white noise."""
    t = np.arange(int(seconds * SR_HZ)) / SR_HZ
    sweep = 0.5 * np.sin(2 * np.pi * (100 * t + (6900 / (2 * seconds)) * t**2))
    return (sweep + 0.05 * np.random.default_rng(seed).standard_normal(t.size)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int = SR_HZ) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def _tone_amplitude(x: np.ndarray, hz: float, rate: int = SR_HZ) -> float:
    """Amplitude of a sinusoid at `hz` (projection onto sin/cos over whole cycles)."""
    n = int(len(x) // (rate / hz) * (rate / hz))
    t = np.arange(n) / rate
    return float(2 * np.hypot(x[:n] @ np.sin(2 * np.pi * hz * t), x[:n] @ np.cos(2 * np.pi * hz * t)) / n)


# ----------------------------------------------------------------------------- mel parity


@pytest.fixture(scope="module")
def whisper_fe():
    transformers = pytest.importorskip("transformers")
    return transformers.WhisperFeatureExtractor(feature_size=128, return_attention_mask=True)


def _reference(fe, windows):
    # return_attention_mask=True is passed to the call as AudioFlamingo3Processor does: only then
    # does the extractor rescale its mask from samples (480000) to frames (3000).
    out = fe(windows, sampling_rate=SR_HZ, padding="max_length", return_attention_mask=True, return_tensors="pt")
    return out["input_features"], out["attention_mask"]


@pytest.mark.parametrize("seconds", [30.0, 7.3, 0.05], ids=["full", "partial-7.3s", "short-0.05s"])
def test_mel_parity_single_window(whisper_fe, seconds):
    window = _chirp_noise(30.0)[: round(seconds * SR_HZ)]
    feats, mask = A.extract_features([window])
    ref_feats, ref_mask = _reference(whisper_fe, [window])
    assert feats.shape == (1, A.N_MELS, A.WINDOW_FRAMES) and feats.dtype == torch.float32
    assert mask.shape == (1, A.WINDOW_FRAMES) and mask.dtype == torch.int32
    assert (feats - ref_feats).abs().max().item() < 1e-4
    assert torch.equal(mask, ref_mask)
    assert mask.sum().item() == math.ceil(len(window) / A.HOP_LENGTH)


def test_mel_parity_mixed_batch(whisper_fe):
    signal = _chirp_noise(30.0, seed=1)
    windows = [signal, signal[:116_800], signal[:800], signal[:161], signal[12_345:12_346]]
    feats, mask = A.extract_features(windows)
    ref_feats, ref_mask = _reference(whisper_fe, windows)
    assert (feats - ref_feats).abs().max().item() < 1e-4
    assert torch.equal(mask, ref_mask)
    assert mask.sum(-1).tolist() == [3000, 730, 5, 2, 1]
    # The "peak - 8" floor is per window: featurising a window alone gives the same result.
    alone, _ = A.extract_features([windows[2]])
    assert torch.allclose(alone[0], feats[2], atol=1e-6)


def test_short_batches_skip_the_silent_tail_with_the_same_features():
    """extract_features stops the STFT N_FFT samples after the longest window; the frames after it are
    silent, so the features equal the transform of the whole zero-padded 30-s windows."""
    signal = _chirp_noise(30.0, seed=2)
    for windows in ([signal[:32_000], signal[:800]], [signal[:399]], [signal[:479_800], signal[:100]]):
        feats, _ = A.extract_features(windows)
        padded = torch.zeros(len(windows), A.WINDOW_SAMPLES)
        for i, w in enumerate(windows):
            padded[i, : len(w)] = torch.as_tensor(w)
        torch.testing.assert_close(feats, A.log_mel_spectrogram(padded), atol=1e-6, rtol=0)


def test_whisper_default_call_returns_sample_mask(whisper_fe):
    """Surprise worth pinning: with return_attention_mask set only in the constructor, the default
    call pads to 480000 samples and returns the *sample*-level mask; our frame mask is its [:, ::160]."""
    windows = [_chirp_noise(7.3)]
    out = whisper_fe(windows, sampling_rate=SR_HZ, padding="max_length", return_tensors="pt")
    assert out["attention_mask"].shape == (1, A.WINDOW_SAMPLES)
    feats, mask = A.extract_features(windows)
    assert torch.equal(mask, out["attention_mask"][:, :: A.HOP_LENGTH])
    assert (feats - out["input_features"]).abs().max().item() < 1e-4


def test_mel_filters_match_reference():
    audio_utils = pytest.importorskip("transformers.audio_utils")
    ref = audio_utils.mel_filter_bank(
        num_frequency_bins=201, num_mel_filters=128, min_frequency=0.0, max_frequency=8000.0,
        sampling_rate=16000, norm="slaney", mel_scale="slaney",
    )
    np.testing.assert_allclose(A._mel_filters(), ref.T, rtol=1e-6, atol=1e-9)


def test_log_mel_spectrogram_shape_and_silence():
    out = A.log_mel_spectrogram(torch.zeros(2, A.WINDOW_SAMPLES))
    assert out.shape == (2, A.N_MELS, A.WINDOW_FRAMES) and out.dtype == torch.float32
    # Digital silence hits the 1e-10 power floor: log10 = -10 -> (-10 + 4) / 4.
    assert torch.allclose(out, torch.full_like(out, -1.5))


def test_extract_features_rejects_overlong_window():
    with pytest.raises(ValueError, match="at most 480000"):
        A.extract_features([np.zeros(A.WINDOW_SAMPLES + 1, np.float32)])


# ----------------------------------------------------------------------------- codec round trips

ROUND_TRIP_SECONDS = 2.0
# (file suffix, encoder, encoder sample rate in Hz, encoder options)
CODECS = {
    "wav": ("wav", "pcm_s16le", 44_100, {}),
    "flac": ("flac", "flac", 44_100, {}),
    "mp3": ("mp3", "libmp3lame", 44_100, {}),
    # The wheel ships no libvorbis, only ffmpeg's native, experimental Vorbis encoder.
    "ogg-vorbis": ("ogg", "vorbis", 44_100, {"strict": "experimental"}),
    "opus": ("opus", "libopus", 48_000, {}),  # Opus runs at 48 kHz
    "m4a-aac": ("m4a", "aac", 44_100, {}),
    "webm-opus": ("webm", "libopus", 48_000, {}),
}
# The native Vorbis encoder does not keep levels (the 0.3 1-kHz tone returns at ~0.11, with the
# decoder ffmpeg itself uses), so only its timing and pitch are checked.
LEVELS_UNRELIABLE = {"ogg-vorbis"}


def _stereo_tones(rate: int) -> np.ndarray:
    """(2, n) float32: 440 Hz at 0.5 on the left, 1 kHz at 0.3 on the right."""
    t = np.arange(int(ROUND_TRIP_SECONDS * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)]).astype(np.float32)


def _encode(path, codec: str, rate: int, options: dict) -> None:
    try:
        av.Codec(codec, "w")
    except av.FFmpegError:
        pytest.skip(f"PyAV wheel lacks the {codec} encoder")
    frame = av.AudioFrame.from_ndarray(_stereo_tones(rate), format="fltp", layout="stereo")
    frame.sample_rate = rate
    with av.open(str(path), "w") as container:  # muxer chosen from the suffix
        stream = container.add_stream(codec, rate=rate, layout="stereo", options=options)
        # Convert to the encoder's sample format and cut into its frame size.
        resampler = av.AudioResampler(
            format=stream.format, layout="stereo", rate=rate, frame_size=stream.codec_context.frame_size or 1024
        )
        for chunk in resampler.resample(frame) + resampler.resample(None):
            chunk.pts = None
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    cache = {}

    def get(kind):
        if kind not in cache:
            suffix, codec, rate, options = CODECS[kind]
            path = tmp_path_factory.mktemp("codecs") / f"tones.{suffix}"
            _encode(path, codec, rate, options)
            cache[kind] = path
        return cache[kind]

    return get


@pytest.mark.parametrize("via", ["path", "bytes"])
@pytest.mark.parametrize("kind", list(CODECS))
def test_codec_round_trip(encoded, kind, via):
    path = encoded(kind)
    wave_16k = A.load_audio(path if via == "path" else path.read_bytes())
    assert wave_16k.dtype == np.float32 and wave_16k.ndim == 1
    # Lossy codecs may keep a little encoder priming/padding.
    assert abs(A.audio_duration_s(wave_16k) - ROUND_TRIP_SECONDS) < 0.1
    assert abs(_peak_hz(wave_16k) - 440) < 2
    assert _tone_amplitude(wave_16k, 1000) > 0.02  # the right channel survived the downmix
    if kind not in LEVELS_UNRELIABLE:
        # Mono is the channel mean: 0.5/2 at 440 Hz and 0.3/2 at 1 kHz.
        assert _tone_amplitude(wave_16k, 440) == pytest.approx(0.25, abs=0.03)
        assert _tone_amplitude(wave_16k, 1000) == pytest.approx(0.15, abs=0.03)


def test_damaged_packets_are_skipped(encoded):
    data = bytearray(encoded("mp3").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 1500] = np.random.default_rng(2).bytes(1500)  # wreck a few MP3 frames
    wave_16k = A.load_audio(bytes(data))
    assert 1.5 < A.audio_duration_s(wave_16k) <= ROUND_TRIP_SECONDS + 0.1
    assert abs(_peak_hz(wave_16k) - 440) < 2


def test_name_overrides_label():
    with pytest.raises(AudioError, match=r"^clip\.wav: cannot decode audio: "):
        A.load_audio(b"not audio at all", name="clip.wav")


# ----------------------------------------------------------------------------- array input


@pytest.mark.parametrize("rate", [8_000, 48_000, 22_050])
def test_array_resampling(rate):
    t = np.arange(rate) / rate  # 1 s
    out = A.load_audio(np.sin(2 * np.pi * 440 * t), sampling_rate=rate)
    assert out.dtype == np.float32
    assert abs(len(out) - SR_HZ) <= 1
    assert abs(_peak_hz(out) - 440) < 2
    assert _tone_amplitude(out, 440) == pytest.approx(1.0, abs=0.01)


def test_array_at_16k_passes_through():
    x = _chirp_noise(0.5)
    np.testing.assert_array_equal(A.load_audio(x, SR_HZ), x)


def test_integer_arrays_are_scaled():
    np.testing.assert_array_equal(
        A.load_audio(np.array([-32768, 0, 16384, 32767], np.int16), SR_HZ), [-1.0, 0.0, 0.5, 32767 / 32768]
    )
    np.testing.assert_array_equal(A.load_audio(np.array([0, 128, 192], np.uint8), SR_HZ), [-1.0, 0.0, 0.5])
    np.testing.assert_allclose(A.load_audio(np.array([-(2**31), 2**30], np.int32), SR_HZ), [-1.0, 0.5])


def test_stereo_downmix_both_layouts_and_tensor():
    left, right = _chirp_noise(1.0, seed=2), _chirp_noise(1.0, seed=3)
    expected = (left + right) / 2
    np.testing.assert_allclose(A.load_audio(np.stack([left, right], axis=1), SR_HZ), expected, atol=1e-7)  # (n, ch)
    np.testing.assert_allclose(A.load_audio(np.stack([left, right]), SR_HZ), expected, atol=1e-7)  # (ch, n)
    np.testing.assert_allclose(A.load_audio(torch.from_numpy(np.stack([left, right])), SR_HZ), expected, atol=1e-7)
    six = np.tile(left, (6, 1))  # 5.1 -> mono
    np.testing.assert_allclose(A.load_audio(six, SR_HZ), left, atol=1e-6)


# ----------------------------------------------------------------------------- errors


def _wav_bytes(samples: np.ndarray, rate: int = SR_HZ) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype(np.int16).tobytes())
    return buf.getvalue()


def _raises(message: str, *args, **kwargs):
    with pytest.raises(AudioError) as info:
        A.load_audio(*args, **kwargs)
    assert str(info.value) == message


def test_error_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    _raises(f"{path}: file not found", path)


def test_error_directory(tmp_path):
    _raises(f"{tmp_path}: is a directory, not an audio file", str(tmp_path))


def test_error_random_bytes():
    _raises("<bytes>: cannot decode audio: Invalid data found when processing input",
            np.random.default_rng(0).bytes(4096))


def test_error_garbage_wav(tmp_path):
    path = tmp_path / "bad.wav"
    path.write_bytes(_wav_bytes(np.zeros(16_000))[:30])  # header cut mid-way
    _raises(f"{path}: cannot decode audio: Invalid data found when processing input", path)
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVE" + np.random.default_rng(1).bytes(2000))  # RIFF tag, then noise
    _raises(f"{path}: cannot decode audio: Invalid data found when processing input", path)


def test_error_text_renamed_mp3(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_text("this is a shopping list, not an mp3\n" * 20)
    _raises(f"{path}: cannot decode audio: Invalid data found when processing input", path)


def test_error_empty_audio(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(_wav_bytes(np.zeros(0)))  # valid header, no samples
    _raises(f"{path}: audio is empty (0 samples)", path)
    _raises("<bytes>: audio is empty (0 samples)", path.read_bytes())
    _raises("<array>: audio is empty (0 samples)", np.zeros(0), SR_HZ)
    (tmp_path / "zero.wav").write_bytes(b"")
    _raises(f"{tmp_path / 'zero.wav'}: cannot decode audio: no data (0 bytes)", tmp_path / "zero.wav")
    _raises("<bytes>: cannot decode audio: no data (0 bytes)", b"")


def test_error_no_audio_stream():
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    _raises("<bytes>: no audio stream", buf.getvalue())


def test_error_array_problems():
    _raises("<array>: audio contains NaN or infinite samples", np.array([0.0, np.nan, 0.1]), SR_HZ)
    _raises("<array>: audio contains NaN or infinite samples", np.array([0.0, np.inf]), 8_000)
    _raises("<array>: sampling_rate is required for array input", np.zeros(10))
    _raises("<array>: invalid sampling_rate 0 (expected a positive number of Hz)", np.zeros(10), 0)
    _raises("<array>: invalid sampling_rate '16000' (expected a positive number of Hz)", np.zeros(10), "16000")
    _raises("mic: expected samples shaped (n,), (n, ch) or (ch, n) with ch <= 8, got (2, 2, 10)",
            np.zeros((2, 2, 10)), SR_HZ, name="mic")
    _raises("<array>: unsupported sample dtype complex128", np.zeros(10, complex), SR_HZ)
    _raises("<array>: audio is too short (1 samples become 0 at 16000 Hz)", np.zeros(1), 48_000)


def test_error_too_long_and_truncate():
    limit = A.MAX_WINDOWS * A.WINDOW_SAMPLES
    too_long = np.zeros(limit + 1, np.float32)  # calloc'd, never touched: cheap
    with pytest.raises(AudioError) as info:
        A.split_windows(too_long, source="talk.mp3")
    assert str(info.value) == (
        "talk.mp3: duration 1800.0 s exceeds the model's maximum of 1800 s; pass truncate=True to keep the first 1800 s"
    )
    with pytest.warns(UserWarning, match=r"talk\.mp3: duration 1830\.0 s exceeds .* 1800 s"):
        windows = A.split_windows(np.zeros(limit + A.WINDOW_SAMPLES, np.float32), truncate=True, source="talk.mp3")
    assert len(windows) == 60 and all(len(w) == A.WINDOW_SAMPLES for w in windows)
    with pytest.raises(AudioError, match=r"^<array>: duration 65\.0 s exceeds the model's maximum of 60 s"):
        A.load_and_split(np.zeros(65 * SR_HZ), SR_HZ, max_windows=2)


# ----------------------------------------------------------------------------- windows and tokens


def test_windows_and_tokens_65s():
    windows = A.split_windows(np.zeros(65 * SR_HZ, np.float32))
    assert [A.audio_duration_s(w) for w in windows] == [30.0, 30.0, 5.0]
    tail_frames = A.num_frames(5 * SR_HZ)
    assert tail_frames == 500
    tail_tokens = ((tail_frames - 1) // 2 + 1 - 2) // 2 + 1
    assert A.num_tokens_from_frames(tail_frames) == tail_tokens == 125
    assert A.num_audio_tokens(65 * SR_HZ) == 750 + 750 + 125
    _, mask = A.extract_features(windows)
    assert sum(A.num_tokens_from_frames(int(m)) for m in mask.sum(-1)) == 1625


def test_windows_and_tokens_exact_and_max():
    assert len(A.split_windows(np.zeros(A.WINDOW_SAMPLES, np.float32))) == 1
    assert A.num_frames(A.WINDOW_SAMPLES) == A.WINDOW_FRAMES
    assert A.num_tokens_from_frames(A.WINDOW_FRAMES) == 750
    assert A.num_audio_tokens(A.WINDOW_SAMPLES) == 750
    assert A.WINDOW_FRAMES * A.HOP_LENGTH / SR_HZ / 750 == pytest.approx(A.TOKEN_SECONDS)
    thirty_min = 30 * 60 * SR_HZ
    assert len(A.split_windows(np.zeros(thirty_min, np.float32))) == 60
    assert A.num_audio_tokens(thirty_min) == 45_000
    assert A.num_audio_tokens(thirty_min + 10 * SR_HZ) == 45_000  # beyond max_windows is dropped
    assert A.num_audio_tokens(40 * 60 * SR_HZ, max_windows=20) == 15_000


def test_small_counts():
    assert [A.num_frames(n) for n in (0, 1, 160, 161)] == [0, 1, 1, 2]
    assert [A.num_tokens_from_frames(f) for f in (0, 1, 2, 3, 4, 5, 731)] == [0, 0, 0, 1, 1, 1, 183]
    assert len(A.split_windows(np.zeros(1, np.float32))) == 1
    assert len(A.split_windows(np.zeros(0, np.float32))) == 1
