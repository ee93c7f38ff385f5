"""Token budgets: what a call reserves before it starts, and what its answer says it used.

A call reserves an estimate (prompt + the most it may write) before it starts and the answer's
``usage`` settles it afterwards, so tokens in flight are counted while they are in flight; a
budget counted only after the call (Envoy AI Gateway, Kong) overshoots by every call running.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Literal

from ._errors import ConfigurationError

__all__ = ["TOKEN_SIDES", "TokenSide", "count_tokens", "estimate_call", "token_estimate", "tokens_used"]

#: Tokens the answer may write when the call names no ``max_tokens``: the allowance litellm's
#: proxy also reserves.  Give ``max_tokens`` (or an estimate) for a tighter reservation.
DEFAULT_OUTPUT_TOKENS: Final = 1024
#: What a chat message costs beyond its text (role, separators), as OpenAI's cookbook counts it.
PER_MESSAGE_TOKENS: Final = 4
PER_REQUEST_TOKENS: Final = 3
_OUTPUT_LIMITS: Final = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_PROMPT_PARTS: Final = ("prompt", "input", "system", "instructions")

Tokenizer = Callable[[str], int]
Estimate = Callable[..., int]
#: Which tokens a budget counts: all of them, or only the prompt's or the answer's, for a
#: provider that limits input and output tokens apart (Anthropic's ITPM and OTPM).
TokenSide = Literal["all", "input", "output"]
TOKEN_SIDES: Final = ("all", "input", "output")
#: The usage fields of each side: OpenAI and GLM (prompt/completion), Anthropic and the
#: Responses API (input/output; a cache write counts as input, a cache read does not count
#: towards Anthropic's input limit).
_USAGE_FIELDS: Final = {
    "input": ("prompt_tokens", "input_tokens", "cache_creation_input_tokens"),
    "output": ("completion_tokens", "output_tokens"),
}

_override: contextvars.ContextVar[int | None] = contextvars.ContextVar("glm_guard_token_estimate", default=None)


@contextlib.contextmanager
def token_estimate(tokens: int) -> Iterator[None]:
    """Calls made inside reserve ``tokens`` each instead of their estimate (the per-call override).

    A context variable, so it follows the task or thread that set it and nothing else.
    """
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ConfigurationError("token_estimate", f"must be a positive integer, got {tokens!r}")
    reset = _override.set(tokens)
    try:
        yield
    finally:
        _override.reset(reset)


@functools.cache
def _tiktoken() -> Tokenizer | None:
    """tiktoken's ``o200k_base`` counter when installed and its data is at hand, else ``None``."""
    try:
        import tiktoken

        encoding = tiktoken.get_encoding("o200k_base")
    except Exception:  # not installed, or its data cannot be fetched: count characters instead
        return None
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def count_tokens(text: str) -> int:
    """Tokens in ``text``: tiktoken's count when installed, else an estimate from characters.

    The estimate errs high: a quarter token per ASCII character (English runs about that) and
    one per other character (Chinese runs below one), so a GLM prompt is not underestimated.
    """
    counter = _tiktoken()
    return counter(text) if counter is not None else by_characters(text)


def by_characters(text: str) -> int:
    """The estimate without tiktoken: a quarter token per ASCII character, one per other character."""
    ascii_chars = sum(1 for char in text if char < "\x80")
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def _text_of(value: object, tokenizer: Tokenizer) -> int:
    """Tokens of a prompt part: a string, a message, a list of either, or content parts."""
    if isinstance(value, str):
        return tokenizer(value)
    if isinstance(value, Mapping):
        total = 0
        for field in ("content", "text", "name"):
            part = value.get(field)
            if part is not None:
                total += _text_of(part, tokenizer)
        return total
    if isinstance(value, (list, tuple)):
        return sum(_text_of(item, tokenizer) for item in value)
    return 0


def estimate_call(kwargs: Mapping[str, Any], tokenizer: Tokenizer, side: TokenSide = "all") -> int:
    """The default estimate of a call from its keyword arguments, as OpenAI/Anthropic SDKs take them.

    ``messages`` (each message's content, plus its overhead), ``prompt``, ``input``, ``system``
    and ``instructions`` make the prompt; ``max_tokens`` (or ``max_completion_tokens``,
    ``max_output_tokens``; else ``DEFAULT_OUTPUT_TOKENS``) the answer, times ``n`` answers.
    ``side`` keeps only the prompt (``"input"``) or only the answer (``"output"``).
    """
    if side == "input":
        return _prompt_tokens(kwargs, tokenizer)
    if side == "output":
        return _answer_tokens(kwargs)
    return _prompt_tokens(kwargs, tokenizer) + _answer_tokens(kwargs)


def _prompt_tokens(kwargs: Mapping[str, Any], tokenizer: Tokenizer) -> int:
    prompt = PER_REQUEST_TOKENS
    messages = kwargs.get("messages")
    if isinstance(messages, (list, tuple)):
        prompt += sum(PER_MESSAGE_TOKENS + _text_of(message, tokenizer) for message in messages)
    for part in _PROMPT_PARTS:
        if kwargs.get(part) is not None:
            prompt += _text_of(kwargs[part], tokenizer)
    return prompt


def _answer_tokens(kwargs: Mapping[str, Any]) -> int:
    output = next((kwargs[name] for name in _OUTPUT_LIMITS if isinstance(kwargs.get(name), int)), None)
    answers = kwargs.get("n")
    answers = answers if isinstance(answers, int) and answers > 0 else 1
    return answers * (DEFAULT_OUTPUT_TOKENS if output is None else max(output, 0))


def reservation(
    estimate: Estimate | None,
    tokenizer: Tokenizer,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    side: TokenSide = "all",
) -> int:
    """What one call reserves: the override in force, else the decorator's estimate (of its
    ``side``), else the default."""
    forced = _override.get()
    if forced is not None:
        return forced
    if estimate is not None:
        value = estimate(*args, **kwargs)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError("estimate", f"must return a positive integer, returned {value!r}")
        return value
    return max(estimate_call(kwargs, tokenizer, side), 1)


def _field(source: object, name: str) -> object:
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def tokens_used(answer: object, side: TokenSide = "all") -> int | None:
    """The tokens an answer reports in its ``usage`` (a dict or an SDK object) on ``side``;
    ``None``: it says not.

    OpenAI and GLM: ``total_tokens``, else ``prompt_tokens + completion_tokens``; Anthropic and
    the Responses API: ``input_tokens + output_tokens`` (with cache writes, which count as input).
    """
    usage = _field(answer, "usage")
    if usage is None:
        return None
    total = _field(usage, "total_tokens")
    if side == "all" and isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        return total
    parts = _USAGE_FIELDS["input"] + _USAGE_FIELDS["output"] if side == "all" else _USAGE_FIELDS[side]
    found = [_field(usage, name) for name in parts]
    if all(value is None for value in found):
        return None
    return sum(_count(value) for value in found)
