"""The clients people use, guarded by ``glm_guard.http`` alone, then by the decorators alone, with
their retry settings untouched.

zai-sdk, zhipuai, openai, langchain-openai, litellm (openai-compatible, with the guarded client)
and pydantic-ai (``ZaiProvider``), sync and async where the SDK has both, streamed and not,
against a concurrency-2 simulator: the limit held at the server, 1302 retried and absorbed,
1113 and 401 sent once and raised as the SDK's own exception.  Under the decorators the limit
and the 1302s hold the same, but a 1113 costs the requests each SDK's own retries add.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

import glm_guard
import glm_guard.http
from glm_guard.backends._base import Backend
from glm_guard.testing import GLMSimulator, run_simulator

API_KEY = "sk-sdk-http-0000"
MODEL = "glm-4"
LIMIT = 2
CALLS = 6
POLICY: dict[str, Any] = {"concurrency": LIMIT, "base_delay": 0.02, "max_delay": 0.1, "cooldown": 0.02}

# The SDKs' own warnings (pydantic-ai's move to httpx2, a pydantic note inside litellm), not ours.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*ReadOnly"),
    pytest.mark.filterwarnings("ignore:.*httpx2"),
]

Ask = Callable[[str, bool], Any]  # (prompt, stream) -> the answer's text, or an awaitable of it


@dataclass(frozen=True)
class Sdk:
    name: str
    package: str  # where the SDK's own exceptions live
    is_async: bool
    build: Callable[[str, str, dict[str, Any] | None], Ask]  # (base_url, api_key, policy or None) -> ask


OPENED: list[httpx.Client | httpx.AsyncClient] = []  # this test's guarded clients, closed at its end


def _sync(policy: dict[str, Any] | None) -> httpx.Client:
    """The guarded client for ``policy``; with ``None`` a plain one (the decorators guard instead)."""
    http = httpx.Client() if policy is None else glm_guard.http.client(**policy)
    OPENED.append(http)
    return http


def _async(policy: dict[str, Any] | None, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    if policy is None:
        http = httpx.AsyncClient(transport=transport)
    else:
        http = glm_guard.http.async_client(transport=transport, **policy)
    OPENED.append(http)
    return http


async def _close_async() -> None:
    for http in OPENED:
        if isinstance(http, httpx.AsyncClient):
            await http.aclose()


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _openai_style(client: Any) -> Ask:
    """zai-sdk, zhipuai and openai share the call shape."""

    def ask(text: str, stream: bool) -> str:
        if stream:
            chunks = client.chat.completions.create(model=MODEL, messages=_messages(text), stream=True)
            return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        return client.chat.completions.create(model=MODEL, messages=_messages(text)).choices[0].message.content

    return ask


def _zai(base_url: str, key: str, policy: dict[str, Any] | None) -> Ask:
    zai = pytest.importorskip("zai")  # its pyjwt pin conflicts with zhipuai's: installed on its own
    return _openai_style(zai.ZhipuAiClient(api_key=key, base_url=base_url, http_client=_sync(policy)))


def _zhipuai(base_url: str, key: str, policy: dict[str, Any] | None) -> Ask:
    import zhipuai

    return _openai_style(zhipuai.ZhipuAI(api_key=key, base_url=base_url, http_client=_sync(policy)))


def _openai(base_url: str, key: str, policy: dict[str, Any] | None) -> Ask:
    return _openai_style(openai.OpenAI(api_key=key, base_url=base_url, http_client=_sync(policy)))


def _openai_async(base_url: str, key: str, policy: dict[str, Any] | None) -> Ask:
    client = openai.AsyncOpenAI(api_key=key, base_url=base_url, http_client=_async(policy))

    async def ask(text: str, stream: bool) -> str:
        if stream:
            chunks = await client.chat.completions.create(model=MODEL, messages=_messages(text), stream=True)
            return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks if chunk.choices])
        reply = await client.chat.completions.create(model=MODEL, messages=_messages(text))
        return reply.choices[0].message.content or ""

    return ask


def _chat_openai(base_url: str, key: str, policy: dict[str, Any] | None) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=MODEL,
        api_key=key,  # type: ignore[arg-type]
        base_url=base_url,
        http_client=_sync(policy),
        http_async_client=_async(policy),
    )


def _langchain(base_url: str, key: str, policy: dict[str, Any] | None) -> Ask:
    chat = _chat_openai(base_url, key, policy)

    def ask(text: str, stream: bool) -> str:
        if stream:
            return "".join(str(chunk.content) for chunk in chat.stream(text))
        return str(chat.invoke(text).content)

    return ask


def _langchain_async(base_url: str, key: str, policy: dict[str, Any] | None) -> Ask:
    chat = _chat_openai(base_url, key, policy)

    async def ask(text: str, stream: bool) -> str:
        if stream:
            return "".join([str(chunk.content) async for chunk in chat.astream(text)])
        return str((await chat.ainvoke(text)).content)

    return ask


def _litellm(base_url: str, key: str, policy: dict[str, Any] | None) -> Ask:
    import litellm

    client = openai.OpenAI(api_key=key, base_url=base_url, http_client=_sync(policy))

    def ask(text: str, stream: bool) -> str:
        options: dict[str, Any] = {"api_key": key, "api_base": base_url, "client": client}
        reply = litellm.completion(model=f"openai/{MODEL}", messages=_messages(text), stream=stream, **options)
        if stream:
            return "".join(chunk.choices[0].delta.content or "" for chunk in reply)
        return str(reply.choices[0].message.content)

    return ask


def _litellm_async(base_url: str, key: str, policy: dict[str, Any] | None) -> Ask:
    import litellm

    client = openai.AsyncOpenAI(api_key=key, base_url=base_url, http_client=_async(policy))

    async def ask(text: str, stream: bool) -> str:
        options: dict[str, Any] = {"api_key": key, "api_base": base_url, "client": client}
        reply = await litellm.acompletion(model=f"openai/{MODEL}", messages=_messages(text), stream=stream, **options)
        if stream:
            return "".join([chunk.choices[0].delta.content or "" async for chunk in reply])
        return str(reply.choices[0].message.content)

    return ask


def _litellm_zai(base_url: str, key: str, policy: dict[str, Any] | None) -> Ask:
    """litellm's own ``zai/`` provider sends through its client session (reset after each test)."""
    import litellm

    litellm.client_session = _sync(policy)
    litellm.aclient_session = _async(policy)

    def ask(text: str, stream: bool) -> str:
        reply = litellm.completion(
            model=f"zai/{MODEL}", messages=_messages(text), stream=stream, api_key=key, api_base=base_url
        )
        if stream:
            return "".join(chunk.choices[0].delta.content or "" for chunk in reply)
        return str(reply.choices[0].message.content)

    return ask


def _litellm_zai_async(base_url: str, key: str, policy: dict[str, Any] | None) -> Ask:
    import litellm

    litellm.client_session = _sync(policy)
    litellm.aclient_session = _async(policy)

    async def ask(text: str, stream: bool) -> str:
        reply = await litellm.acompletion(
            model=f"zai/{MODEL}", messages=_messages(text), stream=stream, api_key=key, api_base=base_url
        )
        if stream:
            return "".join([chunk.choices[0].delta.content or "" async for chunk in reply])
        return str(reply.choices[0].message.content)

    return ask


class _ObjectField(httpx.AsyncBaseTransport):
    """Adds the ``object`` field pydantic-ai insists on, which GLM's documented schema (and so the
    simulator) leaves out; below the guard, so the guard sees the server's answer unchanged."""

    def __init__(self) -> None:
        self._transport = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        if response.status_code >= 400:
            return response
        body = await response.aread()
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            lines = [_with_object(line, "chat.completion.chunk") for line in body.split(b"\n")]
            body = b"\n".join(lines)
        else:
            body = _with_object(body, "chat.completion")
        dropped = ("content-length", "transfer-encoding")
        headers = [(k, v) for k, v in response.headers.items() if k.lower() not in dropped]
        return httpx.Response(response.status_code, headers=headers, content=body)

    async def aclose(self) -> None:
        await self._transport.aclose()


def _with_object(line: bytes, kind: str) -> bytes:
    prefix = b"data: " if line.startswith(b"data: {") else b""
    if not (prefix or line.startswith(b"{")):
        return line
    data = json.loads(line[len(prefix) :])
    return prefix + json.dumps({"object": kind, **data}).encode()


def _pydantic_ai(base_url: str, key: str, policy: dict[str, Any] | None) -> Ask:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.zai import ZaiProvider

    http = _async(policy, transport=_ObjectField())
    agent = Agent(OpenAIChatModel(MODEL, provider=ZaiProvider(api_key=key, base_url=base_url, http_client=http)))

    async def ask(text: str, stream: bool) -> str:
        if stream:
            async with agent.run_stream(text) as run:
                return "".join([part async for part in run.stream_text(delta=True)])
        return (await agent.run(text)).output

    return ask


SDKS = [
    Sdk("zai-sdk", "zai", False, _zai),
    Sdk("zhipuai", "zhipuai", False, _zhipuai),
    Sdk("openai", "openai", False, _openai),
    Sdk("openai-async", "openai", True, _openai_async),
    Sdk("langchain", "openai", False, _langchain),
    Sdk("langchain-async", "openai", True, _langchain_async),
    Sdk("litellm", "litellm", False, _litellm),
    Sdk("litellm-async", "litellm", True, _litellm_async),
    Sdk("litellm-zai", "litellm", False, _litellm_zai),
    Sdk("litellm-zai-async", "litellm", True, _litellm_zai_async),
    Sdk("pydantic-ai", "pydantic_ai", True, _pydantic_ai),
]


@pytest.fixture(params=SDKS, ids=[sdk.name for sdk in SDKS])
def sdk(request: pytest.FixtureRequest) -> Sdk:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _closed_at_the_end(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the internet
    OPENED.clear()
    yield
    if "litellm" in sys.modules:
        sys.modules["litellm"].client_session = sys.modules["litellm"].aclient_session = None
    for http in OPENED:
        if isinstance(http, httpx.Client):
            http.close()
    OPENED.clear()


@pytest.fixture
def sim() -> Iterator[GLMSimulator]:
    with run_simulator(concurrency=LIMIT, latency=0.05, stream_chunk_delay=0.0, api_keys=[API_KEY]) as s:
        yield s


def run_all(sdk: Sdk, ask: Ask, prompts: list[str], stream: bool) -> list[Any]:
    """Every prompt at once (threads, or one gather); each answer, or the exception it raised."""
    if sdk.is_async:

        async def gather() -> list[Any]:
            calls: list[Awaitable[Any]] = [ask(p, stream) for p in prompts]
            try:
                return list(await asyncio.gather(*calls, return_exceptions=True))
            finally:
                await _close_async()

        return asyncio.run(gather())

    def one(prompt: str) -> Any:
        try:
            return ask(prompt, stream)
        except Exception as error:
            return error

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, prompts))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_limit_holds_at_the_server(sdk: Sdk, stream: bool, sim: GLMSimulator, backend: Backend) -> None:
    ask = sdk.build(sim.base_url, API_KEY, {**POLICY, "backend": backend})
    answers = run_all(sdk, ask, [f"question {i}" for i in range(CALLS)], stream)
    assert [a for a in answers if not isinstance(a, str) or "glm-sim" not in a] == []
    assert sim.stats.rejected_total == 0
    assert sim.stats.total_requests == CALLS
    assert sim.stats.peak_in_flight <= LIMIT


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_1302_is_absorbed(sdk: Sdk, stream: bool, sim: GLMSimulator) -> None:
    ask = sdk.build(sim.base_url, API_KEY, POLICY)
    sim.force_next("1302", 2)
    [answer] = run_all(sdk, ask, ["hello"], stream)
    assert isinstance(answer, str) and "glm-sim" in answer
    assert sim.stats.total_requests == 3  # two 1302s and the answer: no retry of the SDK's own


@pytest.mark.parametrize("failure", ["1113", "401"])
def test_a_permanent_error_is_sent_once_and_raised_as_the_sdks_own(sdk: Sdk, failure: str, sim: GLMSimulator) -> None:
    if failure == "1113":
        sim.set_arrears(True)
    ask = sdk.build(sim.base_url, API_KEY if failure == "1113" else "sk-wrong-key-0000", POLICY)
    [answer] = run_all(sdk, ask, ["hello"], False)
    assert isinstance(answer, Exception)
    assert not type(answer).__module__.startswith("glm_guard")
    assert any(cls.__module__.startswith(sdk.package) for cls in type(answer).__mro__), type(answer)
    assert sim.stats.total_requests == 1


# -- sdk_retries_off on the clients that are not openai-style ------------------------------------


def test_sdk_retries_off_quiets_chat_openai(sim: GLMSimulator) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=MODEL, api_key=API_KEY, base_url=sim.base_url)  # type: ignore[arg-type]
    assert glm_guard.sdk_retries_off(chat) is chat
    sim.set_arrears(True)
    with pytest.raises(openai.RateLimitError):
        chat.invoke("hello")
    assert sim.stats.total_requests == 1  # no retry of langchain's openai client
    chat.root_client.close()


def test_sdk_retries_off_quiets_a_pydantic_ai_agent(sim: GLMSimulator) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.exceptions import ModelHTTPError
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.zai import ZaiProvider

    provider = ZaiProvider(api_key=API_KEY, base_url=sim.base_url, http_client=httpx.AsyncClient())
    agent = Agent(OpenAIChatModel(MODEL, provider=provider))
    assert glm_guard.sdk_retries_off(agent) is agent
    sim.set_arrears(True)

    async def ask() -> None:
        try:
            await agent.run("hello")
        finally:
            await provider.client.close()

    with pytest.raises(ModelHTTPError):
        asyncio.run(ask())
    assert sim.stats.total_requests == 1


def test_sdk_retries_off_says_what_to_do_with_what_it_cannot_change() -> None:
    from pydantic_ai.providers.zai import ZaiProvider

    with pytest.raises(TypeError, match=r"openai_client=sdk_retries_off\(\.\.\.\).*glm_guard\.http"):
        glm_guard.sdk_retries_off(ZaiProvider(api_key=API_KEY))


def test_sdk_retry_warning_also_follows_a_permanent_error_the_sdk_resent(sim: GLMSimulator) -> None:
    from glm_guard import _sdk

    _sdk._warned.clear()
    client = openai.OpenAI(api_key=API_KEY, base_url=sim.base_url, max_retries=1)

    @glm_guard.retry_on_1302(max_tries=2)
    def ask(sdk: openai.OpenAI) -> object:
        return sdk.chat.completions.create(model=MODEL, messages=_messages("hello"))

    sim.set_arrears(True)
    with pytest.warns(glm_guard.SDKRetryWarning), pytest.raises(openai.RateLimitError):
        ask(client)
    assert sim.stats.total_requests == 2  # the SDK's own retry: what the warning is about
    client.close()
    _sdk._warned.clear()


def test_under_the_decorators_alone_the_sdk_resends_a_1113(sim: GLMSimulator) -> None:
    """The same call as the table's, guarded by the decorators instead: the SDK's default retries
    resend what the transport sends once (docs/http.md, which layer to guard)."""
    client = openai.OpenAI(api_key=API_KEY, base_url=sim.base_url)  # max_retries left at 2

    @glm_guard.retry_on_1302(max_tries=3, base_delay=0.02, max_delay=0.1)
    @glm_guard.rate_limited(concurrency=LIMIT, key=f"glm:{MODEL}")
    def ask() -> object:
        return client.chat.completions.create(model=MODEL, messages=_messages("hello"))

    sim.set_arrears(True)
    with pytest.raises(openai.RateLimitError):
        ask()
    assert sim.stats.total_requests == 3
    client.close()


# -- the same table under the decorators alone (docs/which_layer.md) --------------------------------


#: Requests at the server for one call that meets a 1113, under the decorators alone with the SDK's
#: retry settings at their defaults: zai-sdk and zhipuai retry a 429 three times, the openai
#: client (inside langchain-openai, litellm and pydantic-ai too) twice; litellm's own ``zai/``
#: provider behaves the same.  Through the transport it is 1 for every one of them.
SENT_FOR_A_1113_UNDER_THE_DECORATORS = {
    **dict.fromkeys(["zai-sdk", "zhipuai"], 4),
    **dict.fromkeys(["openai", "openai-async", "langchain", "langchain-async", "pydantic-ai"], 3),
    **dict.fromkeys(["litellm", "litellm-async", "litellm-zai", "litellm-zai-async"], 3),
}


def _decorated(sdk: Sdk, base_url: str, key: str) -> Ask:
    """The SDK on a plain httpx client, its retry settings untouched, its calls guarded by the
    decorators (the key is the test's own, so no state carries over between tests)."""
    limited = glm_guard.rate_limited(concurrency=LIMIT, cooldown=0.02, key=f"sdk-table-{uuid.uuid4().hex}")
    return glm_guard.retry_on_1302(base_delay=0.02, max_delay=0.1)(limited(sdk.build(base_url, key, None)))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_under_the_decorators_the_limit_holds_at_the_server(sdk: Sdk, stream: bool, sim: GLMSimulator) -> None:
    answers = run_all(sdk, _decorated(sdk, sim.base_url, API_KEY), [f"question {i}" for i in range(CALLS)], stream)
    assert [a for a in answers if not isinstance(a, str) or "glm-sim" not in a] == []
    assert sim.stats.rejected_total == 0
    assert sim.stats.total_requests == CALLS
    assert sim.stats.peak_in_flight <= LIMIT


def test_under_the_decorators_a_1302_is_absorbed(sdk: Sdk, sim: GLMSimulator) -> None:
    sim.force_next("1302", 2)
    [answer] = run_all(sdk, _decorated(sdk, sim.base_url, API_KEY), ["hello"], False)
    assert isinstance(answer, str) and "glm-sim" in answer
    assert sim.stats.total_requests == 3  # two 1302s (retried by the SDK or the decorator) and the answer


@pytest.mark.parametrize("failure", ["1113", "401"])
def test_under_the_decorators_a_permanent_error_costs_what_the_sdk_retries(
    sdk: Sdk, failure: str, sim: GLMSimulator
) -> None:
    if failure == "1113":
        sim.set_arrears(True)
    ask = _decorated(sdk, sim.base_url, API_KEY if failure == "1113" else "sk-wrong-key-0000")
    [answer] = run_all(sdk, ask, ["hello"], False)
    assert isinstance(answer, Exception)
    assert not type(answer).__module__.startswith("glm_guard")
    assert any(cls.__module__.startswith(sdk.package) for cls in type(answer).__mro__), type(answer)
    # What the transport sends once (the table above), the SDK resends with its default retries
    # of a 429; a 401 none retries.
    assert sim.stats.total_requests == (SENT_FOR_A_1113_UNDER_THE_DECORATORS[sdk.name] if failure == "1113" else 1)
