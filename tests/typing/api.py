"""Type-checked, not executed: the decorators keep the wrapped signature (ParamSpec)."""

from __future__ import annotations

from typing import assert_type

from glm_guard import cached_response, fallback, rate_limited, retry_on_1302


@cached_response(ttl=60)
@fallback("busy")
@retry_on_1302(max_tries=3)
@rate_limited(calls=10, period=60, concurrency=2)
def ask(question: str, *, temperature: float = 0.7) -> str:
    return question


@cached_response
@retry_on_1302
@rate_limited
async def ask_async(question: str) -> str:
    return question


class Reasoner:
    @retry_on_1302(2)
    @rate_limited(concurrency=1)
    async def reason(self, question: str) -> int:
        return len(question)


async def check() -> None:
    assert_type(ask("q", temperature=0.1), str)
    assert_type(await ask_async("q"), str)
    assert_type(await Reasoner().reason("q"), int)
    ask(1)  # type: ignore[arg-type]
    ask("q", temperature="hot")  # type: ignore[arg-type]
