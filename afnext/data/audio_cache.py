"""A bounded in-memory cache of decoded training audio.

A training run revisits its clips many times (the nano speedrun's stage 0b reads each transcription clip
~10 times), and decoding plus resampling costs ~2.5 ms per short clip on a CPU core, a tenth of a nano
step. ``AudioCache`` keeps decoded waves (float32, 16 kHz mono) up to a byte budget and evicts the least
recently used. A file is identified by its resolved path, size and modification time, so a file rewritten
during a run is decoded afresh. Only successful decodes are kept: a corrupt file fails every time it is read.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from afnext.audio import load_audio


class AudioCache:
    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"audio cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._waves: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the loader may decode in threads

    def __len__(self) -> int:
        return len(self._waves)

    def load(self, path: str | os.PathLike, *, name: str | None = None) -> np.ndarray:
        """``load_audio(path)``, from memory when this file (same size and mtime) was decoded before.
        Returns a private copy: callers may modify it."""
        path = Path(path)
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            wave = self._waves.get(key)
            if wave is not None:
                self._waves.move_to_end(key)
                self.hits += 1
                return wave.copy()
        wave = load_audio(path, name=name)
        with self._lock:
            self.misses += 1
            if wave.nbytes <= self.max_bytes and key not in self._waves:
                self._waves[key] = wave.copy()
                self.bytes += wave.nbytes
                while self.bytes > self.max_bytes:
                    _, old = self._waves.popitem(last=False)
                    self.bytes -= old.nbytes
        return wave
