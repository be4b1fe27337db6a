"""Audio frontend: decode, normalise, window and featurise audio for the AF-Next encoder.

Pipeline (each step is a public function so callers can enter at any point):

1. ``load_audio`` turns a path, encoded bytes or a sample array into float32 mono at 16 kHz.
   Encoded input is decoded with PyAV (libav*, so anything ffmpeg reads); each decoded frame is
   downmixed to mono by averaging its channels, and the result is resampled with soxr (a
   band-limited, VHQ resampler) rather than ffmpeg's default swr, so file and array input take the
   same resampling path. Damaged packets are skipped (as the ffmpeg CLI does), and a mid-stream
   sample-rate change is resampled piecewise. Every failure surfaces as ``AudioError`` whose message starts with the
   source's name, never as a raw av/OS traceback.
2. ``split_windows`` cuts the clip into non-overlapping 30-s windows (the Whisper encoder's fixed
   receptive field); the last one keeps its true length, and clips longer than ``MAX_WINDOWS``
   windows are rejected or, on request, truncated with a warning.
3. ``extract_features`` zero-pads each window to 30 s and computes Whisper's log-mel spectrogram
   in batched torch, plus a frame mask marking the frames that hold real samples. It reproduces
   ``WhisperFeatureExtractor(feature_size=128)`` called as AF3's processor calls it
   (``padding="max_length"``, ``return_attention_mask=True`` in the call): the spectrogram is always
   computed on the zero-padded window (so the per-window "max - 8" floor also sees the padding), and
   the mask has ceil(len / hop) ones. (Setting return_attention_mask only in the extractor's
   constructor yields a per-sample (N, 480000) mask instead; ours equals its [:, ::160].)
4. ``num_audio_tokens`` predicts how many audio tokens the encoder emits: per window, conv stride 2
   then avg-pool stride 2 over the masked frame count (3000 frames -> 750 tokens = 40 ms each).
"""

from __future__ import annotations

import functools
import io
import math
import numbers
import os
import warnings

import av
import numpy as np
import soxr
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16_000  # Hz
N_FFT = 400  # samples (25 ms)
HOP_LENGTH = 160  # samples (10 ms)
N_MELS = 128
WINDOW_SECONDS = 30
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE  # 480_000 samples per 30-s window
WINDOW_FRAMES = WINDOW_SAMPLES // HOP_LENGTH  # 3_000 mel frames per window
TOKEN_SECONDS = 0.04  # one audio token = 40 ms (4 hops after conv stride 2 and pool stride 2)
MAX_WINDOWS = 60  # 30 minutes (AF-Next); AF3 allows 20
MAX_CHANNELS = 8  # widest layout accepted for array input (7.1 surround)

_MEL_FMAX_HZ = 8_000.0  # Nyquist at 16 kHz
_LOG_FLOOR = 1e-10  # power floor before log10 (-100 dB), avoids log(0) on digital silence
_DYNAMIC_RANGE = 8.0  # log10 units (80 dB) kept below each window's peak


class AudioError(ValueError):
    """Audio could not be loaded or is unusable; the message names the source and the problem."""


# ----------------------------------------------------------------------------- loading


def load_audio(source, sampling_rate: int | None = None, *, name: str | None = None) -> np.ndarray:
    """Return ``source`` as float32 mono samples at ``SAMPLE_RATE``.

    ``source`` is a path, encoded file bytes, or a numpy array / torch tensor of samples shaped
    (n,), (n, ch) or (ch, n) with ch <= 8. ``sampling_rate`` (Hz) is required for arrays and
    ignored for encoded input, whose container states its own rate. Integer samples are scaled to
    [-1, 1). ``name`` replaces the default source label in error messages.
    """
    src = _label(source, name)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if sampling_rate is None:
            raise AudioError(f"{src}: sampling_rate is required for array input")
        rate = _check_rate(sampling_rate, src)
        return _to_16k_mono([(rate, _array_to_mono(source, src))], src)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError(f"{src}: cannot decode audio: no data (0 bytes)")
        return _to_16k_mono(_decode(io.BytesIO(bytes(source)), src), src)
    if isinstance(source, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(source))
        if os.path.isdir(path):
            raise AudioError(f"{src}: is a directory, not an audio file")
        if not os.path.exists(path):
            raise AudioError(f"{src}: file not found")
        if os.path.getsize(path) == 0:
            raise AudioError(f"{src}: cannot decode audio: no data (0 bytes)")
        # The "file:" scheme stops ffmpeg from reading a name like "http:x" or "concat:a|b" as a protocol.
        return _to_16k_mono(_decode("file:" + path, src), src)
    raise AudioError(f"{src}: unsupported audio source type {type(source).__name__}")


def _label(source, name: str | None) -> str:
    """How errors name a source: the caller's name, else the path, "<bytes>" or "<array>"."""
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return "<array>" if isinstance(source, (np.ndarray, torch.Tensor)) else "<source>"


def _check_rate(sampling_rate, src: str) -> float:
    ok = isinstance(sampling_rate, numbers.Real) and not isinstance(sampling_rate, bool)
    if not ok or not math.isfinite(sampling_rate) or sampling_rate <= 0:
        raise AudioError(f"{src}: invalid sampling_rate {sampling_rate!r} (expected a positive number of Hz)")
    return float(sampling_rate)


def _to_float(x: np.ndarray, src: str) -> np.ndarray:
    """Float32 view of samples; integer PCM maps its full range onto [-1, 1) (int16 -32768 -> -1)."""
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        mid, half = (info.max + info.min + 1) / 2, (info.max - info.min + 1) / 2  # unsigned PCM is offset
        return (x.astype(np.float32) - mid) / half  # float32 arithmetic: exact for <= 24-bit PCM
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    raise AudioError(f"{src}: unsupported sample dtype {x.dtype}")


def _array_to_mono(x, src: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()  # numpy has no bfloat16
    x = _to_float(np.asarray(x), src)
    if x.ndim == 1:
        return x
    if x.ndim == 2:
        # Channels are the short axis; (ch, n) is preferred when both fit, since n > ch for real audio.
        if x.shape[0] <= MAX_CHANNELS and x.shape[1] > x.shape[0]:
            return x.mean(axis=0, dtype=np.float32)
        if x.shape[1] <= MAX_CHANNELS:
            return x.mean(axis=1, dtype=np.float32)
    raise AudioError(
        f"{src}: expected samples shaped (n,), (n, ch) or (ch, n) with ch <= {MAX_CHANNELS}, got {x.shape}"
    )


def _decode(file, src: str) -> list[tuple[float, np.ndarray]]:
    """Decode the first audio stream into (rate, mono) segments, one per run of equal sample rate."""
    segments: list[tuple[float, list[np.ndarray]]] = []
    damaged = None
    try:
        with av.open(file, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError(f"{src}: no audio stream")
            for packet in container.demux(container.streams.audio[0]):
                try:
                    frames = packet.decode()
                except av.FFmpegError as e:  # skip a damaged packet and keep going, as the ffmpeg CLI does
                    damaged = damaged or e
                    continue
                for frame in frames:
                    pcm = _to_float(frame.to_ndarray(), src)
                    channels = frame.layout.nb_channels
                    # Planar frames are (ch, n); packed ones are one interleaved row.
                    mono = pcm.mean(axis=0) if frame.format.is_planar else pcm.reshape(-1, channels).mean(axis=1)
                    if not segments or segments[-1][0] != frame.sample_rate:
                        segments.append((float(frame.sample_rate), []))
                    segments[-1][1].append(mono)
    except AudioError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError, RuntimeError) as e:
        raise AudioError(f"{src}: cannot decode audio: {_reason(e)}") from None
    if not segments and damaged is not None:
        raise AudioError(f"{src}: cannot decode audio: {_reason(damaged)}")
    return [(rate, np.concatenate(chunks)) for rate, chunks in segments]


def _reason(e: Exception) -> str:
    # FFmpegError's str() repeats errno and the file name; its strerror is the short phrase.
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _to_16k_mono(segments: list[tuple[float, np.ndarray]], src: str) -> np.ndarray:
    n_in = sum(len(x) for _, x in segments)
    if n_in == 0:
        raise AudioError(f"{src}: audio is empty (0 samples)")
    out = []
    for rate, x in segments:
        if not np.isfinite(x).all():
            raise AudioError(f"{src}: audio contains NaN or infinite samples")
        out.append(x if rate == SAMPLE_RATE else soxr.resample(x, rate, SAMPLE_RATE, quality="VHQ"))
    wave = np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
    if wave.size == 0:  # e.g. one sample at 48 kHz rounds to zero samples at 16 kHz
        raise AudioError(f"{src}: audio is too short ({n_in} samples become 0 at {SAMPLE_RATE} Hz)")
    return wave


# ----------------------------------------------------------------------------- windows and tokens


def audio_duration_s(wave: np.ndarray) -> float:
    """Duration in seconds of 16-kHz samples."""
    return len(wave) / SAMPLE_RATE


def split_windows(
    wave: np.ndarray, *, max_windows: int = MAX_WINDOWS, truncate: bool = False, source: str = "<array>"
) -> list[np.ndarray]:
    """Cut 16-kHz mono samples into non-overlapping 30-s windows (views); the last may be partial."""
    n_windows = max(1, math.ceil(len(wave) / WINDOW_SAMPLES))
    if n_windows > max_windows:
        limit_s, duration_s = max_windows * WINDOW_SECONDS, audio_duration_s(wave)
        if not truncate:
            raise AudioError(
                f"{source}: duration {duration_s:.1f} s exceeds the model's maximum of {limit_s} s; "
                f"pass truncate=True to keep the first {limit_s} s"
            )
        warnings.warn(f"{source}: duration {duration_s:.1f} s exceeds the model's maximum of {limit_s} s; "
                      f"keeping only the first {limit_s} s", stacklevel=2)
        n_windows = max_windows
    return [wave[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES] for i in range(n_windows)]


def load_and_split(
    source, sampling_rate: int | None = None, *, max_windows: int = MAX_WINDOWS, truncate: bool = False,
    name: str | None = None,
) -> list[np.ndarray]:
    """``load_audio`` then ``split_windows``, with errors and warnings naming the same source."""
    wave = load_audio(source, sampling_rate, name=name)
    return split_windows(wave, max_windows=max_windows, truncate=truncate, source=_label(source, name))


def num_frames(n_samples: int) -> int:
    """Mel frames holding real samples in a window of ``n_samples`` (the mask's ones): ceil(n / hop)."""
    return -(-n_samples // HOP_LENGTH)


def num_tokens_from_frames(frames: int) -> int:
    """Encoder output length: conv1d stride 2 (pad 1, kernel 3), then avg-pool kernel 2 stride 2."""
    conv = (frames - 1) // 2 + 1
    return max(0, (conv - 2) // 2 + 1)


def num_audio_tokens(n_samples: int, max_windows: int = MAX_WINDOWS) -> int:
    """Audio tokens for a whole clip of ``n_samples`` at 16 kHz (windows beyond ``max_windows`` dropped).

    Summed per window, as the encoder emits them; this equals the HF AF3 processor's formula applied
    to the clip's total frame count, because a full window's 3000 frames stay even through both strides.
    """
    n_windows = min(max(1, math.ceil(n_samples / WINDOW_SAMPLES)), max_windows)
    lengths = [min(WINDOW_SAMPLES, n_samples - i * WINDOW_SAMPLES) for i in range(n_windows)]
    return sum(num_tokens_from_frames(num_frames(max(0, n))) for n in lengths)


# ----------------------------------------------------------------------------- features


@functools.lru_cache(maxsize=None)
def _mel_filters() -> np.ndarray:
    """(N_MELS, N_FFT//2+1) Slaney mel filterbank (librosa's default): triangles in Hz, area-normalised."""

    def hz_to_mel(f):  # Slaney scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above
        f = np.asarray(f, dtype=np.float64)
        log_part = 15.0 + np.log(np.maximum(f, 1.0) / 1000.0) * 27.0 / np.log(6.4)  # clamp: np.where evaluates both
        return np.where(f < 1000.0, 3.0 * f / 200.0, log_part)

    def mel_to_hz(m):
        return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))

    edges_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(_MEL_FMAX_HZ), N_MELS + 2))
    bins_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    lo, mid, hi = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz - lo) / (mid - lo)
    falling = (hi - bins_hz) / (hi - mid)
    tri = np.maximum(0.0, np.minimum(rising, falling))
    # Area normalisation (2 / bandwidth) gives every filter roughly equal energy.
    return (tri * (2.0 / (hi - lo))).astype(np.float32)


def log_mel_spectrogram(waves: torch.Tensor, *, device=None, total_frames: int | None = None) -> torch.Tensor:
    """Whisper log-mel features: (B, n) float samples -> (B, N_MELS, n // HOP_LENGTH) float32.

    For zero-padded 30-s windows, (B, WINDOW_SAMPLES) -> (B, 128, 3000). Computed on ``device``
    (default: the input's device). ``total_frames``: the waves are the head of longer, zero-padded
    signals of ``total_frames * HOP_LENGTH`` samples, and end in at least ``N_FFT`` zeros; the missing
    frames are silent (zero power) and are appended without an STFT (see ``extract_features``).
    """
    waves = torch.as_tensor(waves)
    device = torch.device(device) if device is not None else waves.device
    waves = waves.to(device=device, dtype=torch.float32)
    window = torch.hann_window(N_FFT, periodic=True, device=device)
    spec = torch.stft(waves, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)
    # center=True yields n//hop + 1 frames; Whisper drops the last so 30 s -> exactly 3000 frames.
    power = torch.view_as_real(spec[..., :-1]).pow(2).sum(-1)
    # On CUDA, fp32 matmuls may silently run in TF32 (10-bit mantissa) if a caller enabled it;
    # the projection is tiny, so do it in fp64 there to stay within 1e-4 of the reference.
    dtype = torch.float64 if device.type == "cuda" else torch.float32
    mel = torch.from_numpy(_mel_filters()).to(device, dtype) @ power.to(dtype)
    log_spec = mel.clamp(min=_LOG_FLOOR).log10().float()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)  # per window, not per batch
    silent = total_frames - mel.shape[-1] if total_frames is not None else 0
    if silent > 0:
        # Silent frames (zero power: the filters of zero power are 0) all take the floor's log, so they
        # join the peak and the output as one constant, without taking the log of each.
        floor = float(torch.tensor(_LOG_FLOOR, dtype=dtype).log10().float())  # as the clamp + log above
        peak = peak.clamp(min=floor)
        log_spec = F.pad(log_spec, (0, silent), value=floor)
    log_spec = torch.maximum(log_spec, peak - _DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0  # Whisper's fixed affine map to roughly [-1, 1]


def extract_features(windows: list[np.ndarray], *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad windows to 30 s and featurise them in one batch.

    Returns ``input_features`` (N, 128, 3000) float32 and ``input_features_mask`` (N, 3000) int32
    whose first ``num_frames(len(window))`` entries are 1, both on ``device`` (default CPU).
    """
    if not windows:
        raise ValueError("extract_features needs at least one window")
    device = torch.device(device) if device is not None else torch.device("cpu")
    arrays = [torch.as_tensor(np.asarray(w, dtype=np.float32)).reshape(-1) for w in windows]
    for i, w in enumerate(arrays):
        if len(w) > WINDOW_SAMPLES:
            raise ValueError(f"window {i} has {len(w)} samples; split_windows yields at most {WINDOW_SAMPLES}")
    # The STFT runs only up to the longest window plus N_FFT zeros (whole hops): every later frame of
    # the zero padding sees only zeros, its power is exactly 0 and is appended as such. A batch of 2-s
    # clips then costs ~1/14 of the full 30-s transform, with the same features.
    longest = max(len(w) for w in arrays)
    span = min(WINDOW_SAMPLES, -(-(longest + N_FFT) // HOP_LENGTH) * HOP_LENGTH)
    batch = torch.zeros(len(arrays), span, dtype=torch.float32)
    mask = torch.zeros(len(arrays), WINDOW_FRAMES, dtype=torch.int32)
    for i, w in enumerate(arrays):
        batch[i, : len(w)] = w
        mask[i, : num_frames(len(w))] = 1
    return log_mel_spectrogram(batch, device=device, total_frames=WINDOW_FRAMES), mask.to(device)
