"""What the simulated model answers: the text, its finish reason, token usage and ids.

Deterministic on purpose: the same request gives the same text, so tests of a cache can
tell a cached answer from a fresh one, and usage is a cheap estimate that needs no tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ._config import SimulatorConfig

__all__ = ["answer", "completion", "default_responder", "new_id", "pieces", "tokens", "usage"]

_WORD = re.compile(r"\S+\s*|\s+")


def _text_of(content: Any) -> str:
    """Text of a message ``content``: a string, or the text parts of a multimodal list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


def tokens(text: str) -> int:
    """Cheap deterministic token estimate (~4 chars per token), as usage needs *a* number."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def default_responder(body: Mapping[str, Any]) -> str:
    """Deterministic answer: echo of the last user message plus a short digest of the request.

    Same messages and model in, same text out, so callers can check their cache.
    """
    messages = body.get("messages") or []
    last_user = ""
    for msg in reversed(messages):
        if isinstance(msg, Mapping) and msg.get("role") == "user":
            last_user = _text_of(msg.get("content"))
            break
    digest = hashlib.sha256(
        json.dumps([body.get("model"), messages], sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()[:8]
    return f"[glm-sim {digest}] You said: {last_user}"


def answer(body: Mapping[str, Any], cfg: SimulatorConfig) -> tuple[str, str]:
    """The answer text and its ``finish_reason``: ``"length"`` when ``max_tokens`` cut it."""
    content = (cfg.responder or default_responder)(body)
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 < max_tokens < tokens(content):
        return content[: max_tokens * 4], "length"
    return content, "stop"


def usage(body: Mapping[str, Any], content: str) -> dict[str, Any]:
    """GLM's ``usage`` object for a request and the text sent back."""
    prompt = "".join(_text_of(m.get("content")) for m in body.get("messages", []) if isinstance(m, Mapping))
    p, c = tokens(prompt), tokens(content)
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def pieces(content: str) -> list[str]:
    """Split an answer into word-sized SSE deltas (at least one)."""
    return _WORD.findall(content) or [""]


def new_id() -> str:
    """A GLM-style id: a timestamp and random hex; GLM uses the same value for id and request_id."""
    return f"{time.strftime('%Y%m%d%H%M%S')}{uuid.uuid4().hex[:18]}"


def completion(body: Mapping[str, Any], model: str, content: str, finish: str) -> dict[str, Any]:
    """The non-streaming response body; a ``request_id`` sent by the caller is echoed."""
    cid = new_id()
    return {
        "id": cid,
        "request_id": str(body.get("request_id") or cid),
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": usage(body, content),
    }
