"""LLM-as-judge ratings (1-5) for open-ended answers, over any OpenAI-compatible chat-completions API.

Design:
- A judge is anything with `rate(instruction, response) -> JudgeResult` (the `Rater` protocol), so
  scorers take a judge object and tests pass a fake one; the network is never touched in tests.
- `Judge(base_url, model, api_key)` POSTs to `<base_url>/chat/completions` with the standard library
  (urllib): no client library, works with OpenAI, vLLM, SGLang, llama.cpp servers alike.
- Greedy (temperature 0) and one rating per item: a benchmark number should be reproducible as far as
  the judge allows. The judge model name is recorded in reports by the caller.
- `RATING_PROMPT` is OURS, written after VoiceBench's description of its GPT rating (a voice
  assistant's reply to a spoken instruction, judged on the transcription, 1 = bad to 5 = excellent,
  reply with the number only). It is not VoiceBench's text, so judge scores are comparable with each
  other but only approximately with published VoiceBench numbers.
- `parse_rating` takes the first standalone integer 1-5 in the reply; a reply without one is
  unparsable (rating None) and the caller decides what that means (VoiceBench scoring excludes it
  from the mean and lists it, as a judge failure is not the model's).
- Transient HTTP failures (429, 5xx, timeouts) are retried with exponential backoff; anything else
  raises at once.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

RATING_PROMPT = """You are evaluating a voice assistant. The user spoke an instruction; the assistant replied.
Below are the transcription of the user's speech and the assistant's reply.

Rate how well the reply answers the instruction: helpfulness, correctness, relevance and suitability for
a spoken conversation.
1 = irrelevant, wrong or no answer; 2 = poor; 3 = acceptable but with clear gaps or errors;
4 = good, minor issues; 5 = excellent, fully correct and helpful.

[Instruction]
{instruction}

[Reply]
{response}

Answer with a single number from 1 to 5 and nothing else."""

_RATING = re.compile(r"(?<![\d.])([1-5])(?![\d.]\d|\d)")

# Environment variables read by `Judge.from_env` (the registered VoiceBench judge subsets use them).
ENV_BASE_URL = "AFNEXT_JUDGE_BASE_URL"
ENV_MODEL = "AFNEXT_JUDGE_MODEL"
ENV_API_KEY = "AFNEXT_JUDGE_API_KEY"


@dataclass(frozen=True)
class JudgeResult:
    rating: int | None  # None: the judge's reply held no rating
    raw: str


@runtime_checkable
class Rater(Protocol):
    model: str

    def rate(self, instruction: str, response: str) -> JudgeResult: ...


def parse_rating(text: str) -> int | None:
    """First standalone integer 1-5 in the judge's reply ("4", "Rating: 4/5", "**5**"), else None.
    Digits inside larger numbers or decimals ("10", "4.5") do not count."""
    m = _RATING.search(text or "")
    return int(m.group(1)) if m else None


def build_prompt(instruction: str, response: str) -> str:
    return RATING_PROMPT.format(instruction=instruction.strip(), response=(response or "").strip())


class Judge:
    """An OpenAI-compatible chat-completions judge (stdlib HTTP). Never used by the test suite."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout: float = 120.0,
                 max_retries: int = 4, max_tokens: int = 16):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_tokens = max_tokens

    @classmethod
    def from_env(cls) -> Judge:
        base, model = os.environ.get(ENV_BASE_URL), os.environ.get(ENV_MODEL)
        if not base or not model:
            raise RuntimeError(f"no judge configured: set {ENV_BASE_URL} and {ENV_MODEL} (and {ENV_API_KEY} if "
                               "the server needs one), or pass a judge object to the benchmark")
        return cls(base, model, os.environ.get(ENV_API_KEY))

    def complete(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                return payload["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                if (e.code != 429 and e.code < 500) or attempt == self.max_retries:
                    raise
            except (urllib.error.URLError, TimeoutError):
                if attempt == self.max_retries:
                    raise
            time.sleep(min(60.0, 2.0 ** attempt))
        raise AssertionError("unreachable")

    def rate(self, instruction: str, response: str) -> JudgeResult:
        raw = self.complete(build_prompt(instruction, response))
        return JudgeResult(parse_rating(raw), raw)
