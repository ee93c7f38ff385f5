"""The clients people use, guarded by ``glm_guard.http`` alone, with their retry settings untouched.

zai-sdk, zhipuai, openai, langchain-openai, litellm (openai-compatible, with the guarded client)
and pydantic-ai (``ZaiProvider``), sync and async where the SDK has both, streamed and not,
against a concurrency-2 simulator: the limit held at the server, 1302 retried and absorbed,
1113 and 401 sent once and raised as the SDK's own exception.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

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

T = TypeVar("T")
Ask = Callable[[str, bool], Any]  # (prompt, stream) -> the answer's text, or an awaitable of it


OPENED: list[httpx.Client | httpx.AsyncClient] = []  # this test's httpx clients, closed at its end


@dataclass(frozen=True)
class Wiring:
    """How a builder makes its SDK client: on the guarded transport (``policy``), or on plain
    httpx clients for the decorators (``policy=None``), its own retries left on or turned off."""

    policy: dict[str, Any] | None
    quiet: bool = False  # pass the SDK's client through sdk_retries_off()

    def sync(self) -> httpx.Client:
        http = httpx.Client() if self.policy is None else glm_guard.http.client(**self.policy)
        OPENED.append(http)
        return http

    def async_(self, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
        if self.policy is None:
            http = httpx.AsyncClient(transport=transport)
        else:
            http = glm_guard.http.async_client(transport=transport, **self.policy)
        OPENED.append(http)
        return http

    def sdk(self, client: T) -> T:
        return glm_guard.sdk_retries_off(client) if self.quiet else client


@dataclass(frozen=True)
class Sdk:
    name: str
    package: str  # where the SDK's own exceptions live
    is_async: bool
    build: Callable[[str, str, Wiring], Ask]  # (base_url, api_key, wiring) -> ask


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


def _zai(base_url: str, key: str, wiring: Wiring) -> Ask:
    zai = pytest.importorskip("zai")  # its pyjwt pin conflicts with zhipuai's: installed on its own
    return _openai_style(wiring.sdk(zai.ZhipuAiClient(api_key=key, base_url=base_url, http_client=wiring.sync())))


def _zhipuai(base_url: str, key: str, wiring: Wiring) -> Ask:
    import zhipuai

    return _openai_style(wiring.sdk(zhipuai.ZhipuAI(api_key=key, base_url=base_url, http_client=wiring.sync())))


def _openai(base_url: str, key: str, wiring: Wiring) -> Ask:
    return _openai_style(wiring.sdk(openai.OpenAI(api_key=key, base_url=base_url, http_client=wiring.sync())))


def _openai_async(base_url: str, key: str, wiring: Wiring) -> Ask:
    client = wiring.sdk(openai.AsyncOpenAI(api_key=key, base_url=base_url, http_client=wiring.async_()))

    async def ask(text: str, stream: bool) -> str:
        if stream:
            chunks = await client.chat.completions.create(model=MODEL, messages=_messages(text), stream=True)
            return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks if chunk.choices])
        reply = await client.chat.completions.create(model=MODEL, messages=_messages(text))
        return reply.choices[0].message.content or ""

    return ask


def _chat_openai(base_url: str, key: str, wiring: Wiring) -> Any:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model=MODEL,
        api_key=key,  # type: ignore[arg-type]
        base_url=base_url,
        http_client=wiring.sync(),
        http_async_client=wiring.async_(),
    )
    return wiring.sdk(chat)


def _langchain(base_url: str, key: str, wiring: Wiring) -> Ask:
    chat = _chat_openai(base_url, key, wiring)

    def ask(text: str, stream: bool) -> str:
        if stream:
            return "".join(str(chunk.content) for chunk in chat.stream(text))
        return str(chat.invoke(text).content)

    return ask


def _langchain_async(base_url: str, key: str, wiring: Wiring) -> Ask:
    chat = _chat_openai(base_url, key, wiring)

    async def ask(text: str, stream: bool) -> str:
        if stream:
            return "".join([str(chunk.content) async for chunk in chat.astream(text)])
        return str((await chat.ainvoke(text)).content)

    return ask


def _litellm(base_url: str, key: str, wiring: Wiring) -> Ask:
    import litellm

    client = wiring.sdk(openai.OpenAI(api_key=key, base_url=base_url, http_client=wiring.sync()))

    def ask(text: str, stream: bool) -> str:
        options: dict[str, Any] = {"api_key": key, "api_base": base_url, "client": client}
        reply = litellm.completion(model=f"openai/{MODEL}", messages=_messages(text), stream=stream, **options)
        if stream:
            return "".join(chunk.choices[0].delta.content or "" for chunk in reply)
        return str(reply.choices[0].message.content)

    return ask


def _litellm_async(base_url: str, key: str, wiring: Wiring) -> Ask:
    import litellm

    client = wiring.sdk(openai.AsyncOpenAI(api_key=key, base_url=base_url, http_client=wiring.async_()))

    async def ask(text: str, stream: bool) -> str:
        options: dict[str, Any] = {"api_key": key, "api_base": base_url, "client": client}
        reply = await litellm.acompletion(model=f"openai/{MODEL}", messages=_messages(text), stream=stream, **options)
        if stream:
            return "".join([chunk.choices[0].delta.content or "" async for chunk in reply])
        return str(reply.choices[0].message.content)

    return ask


def _litellm_zai(base_url: str, key: str, wiring: Wiring) -> Ask:
    """litellm's own ``zai/`` provider sends through its client session (reset after each test)."""
    import litellm

    litellm.client_session = wiring.sync()
    litellm.aclient_session = wiring.async_()

    def ask(text: str, stream: bool) -> str:
        reply = litellm.completion(
            model=f"zai/{MODEL}", messages=_messages(text), stream=stream, api_key=key, api_base=base_url
        )
        if stream:
            return "".join(chunk.choices[0].delta.content or "" for chunk in reply)
        return str(reply.choices[0].message.content)

    return ask


def _litellm_zai_async(base_url: str, key: str, wiring: Wiring) -> Ask:
    import litellm

    litellm.client_session = wiring.sync()
    litellm.aclient_session = wiring.async_()

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


def _pydantic_ai(base_url: str, key: str, wiring: Wiring) -> Ask:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.zai import ZaiProvider

    http = wiring.async_(transport=_ObjectField())
    agent = wiring.sdk(
        Agent(OpenAIChatModel(MODEL, provider=ZaiProvider(api_key=key, base_url=base_url, http_client=http)))
    )

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


def assert_limit_held(sim: GLMSimulator, answers: list[Any]) -> None:
    """Every call answered, one request each, never more than the limit in flight at the server."""
    assert [a for a in answers if not isinstance(a, str) or "glm-sim" not in a] == []
    assert sim.stats.rejected_total == 0
    assert sim.stats.total_requests == CALLS
    assert sim.stats.peak_in_flight <= LIMIT


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_limit_holds_at_the_server(sdk: Sdk, stream: bool, sim: GLMSimulator, backend: Backend) -> None:
    ask = sdk.build(sim.base_url, API_KEY, Wiring({**POLICY, "backend": backend}))
    assert_limit_held(sim, run_all(sdk, ask, [f"question {i}" for i in range(CALLS)], stream))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_1302_is_absorbed(sdk: Sdk, stream: bool, sim: GLMSimulator) -> None:
    ask = sdk.build(sim.base_url, API_KEY, Wiring(POLICY))
    sim.force_next("1302", 2)
    [answer] = run_all(sdk, ask, ["hello"], stream)
    assert isinstance(answer, str) and "glm-sim" in answer
    assert sim.stats.total_requests == 3  # two 1302s and the answer: no retry of the SDK's own


def ask_failing(sdk: Sdk, failure: str, wiring: Wiring, sim: GLMSimulator, stream: bool) -> Exception:
    """One call that meets ``failure`` (1113 arrears, or 401 with a wrong key): the SDK's own
    exception, checked to be the SDK's and not glm_guard's."""
    if failure == "1113":
        sim.set_arrears(True)
    ask = sdk.build(sim.base_url, API_KEY if failure == "1113" else "sk-wrong-key-0000", wiring)
    if wiring.policy is None:
        ask = _decorated(ask)
    [answer] = run_all(sdk, ask, ["hello"], stream)
    assert isinstance(answer, Exception)
    assert not type(answer).__module__.startswith("glm_guard")
    assert any(cls.__module__.startswith(sdk.package) for cls in type(answer).__mro__), type(answer)
    return answer


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("failure", ["1113", "401"])
def test_a_permanent_error_is_sent_once_and_raised_as_the_sdks_own(
    sdk: Sdk, failure: str, stream: bool, sim: GLMSimulator
) -> None:
    ask_failing(sdk, failure, Wiring(POLICY), sim, stream)
    assert sim.stats.total_requests == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_when_the_transport_gives_up_the_sdk_does_not_retry(sdk: Sdk, stream: bool, sim: GLMSimulator) -> None:
    """Past ``max_tries`` the last 1302 carries ``x-should-retry: false``: the SDK raises it
    without a retry of its own, so the server sees ``max_tries`` requests, not a multiple."""
    ask = sdk.build(sim.base_url, API_KEY, Wiring({**POLICY, "max_tries": 2}))
    sim.force_next("1302", 20)
    [answer] = run_all(sdk, ask, ["hello"], stream)
    assert isinstance(answer, Exception)
    assert any(cls.__module__.startswith(sdk.package) for cls in type(answer).__mro__), type(answer)
    assert sim.stats.total_requests == 2
    sim.clear_faults()


# -- the same table for the decorators alone (docs/which_layer.md) --------------------------------


def _decorated(ask: Ask) -> Ask:
    """The recommended stack on the function that calls the SDK, at the simulator's limit."""
    limited = glm_guard.rate_limited(concurrency=LIMIT, key=f"glm:{MODEL}", cooldown=0.02)(ask)
    return glm_guard.retry_on_1302(max_tries=3, base_delay=0.02, max_delay=0.1)(limited)


#: Requests a 1113 costs under the decorators alone: with the SDK's retry settings at their
#: defaults, and with its client passed through ``sdk_retries_off()``.  zai-sdk and zhipuai
#: retry 3 times, the openai client twice; litellm sets ``max_retries=2`` on the openai client it
#: sends through at every call (the one it was given included) and its ``zai/`` route has no
#: client to hand over, so only the transport stops its retries.  The transport: 1 for every row.
SENT_FOR_A_1113_UNDER_THE_DECORATORS = {
    "zai-sdk": (4, 1),
    "zhipuai": (4, 1),
    "openai": (3, 1),
    "openai-async": (3, 1),
    "langchain": (3, 1),
    "langchain-async": (3, 1),
    "litellm": (3, 3),
    "litellm-async": (3, 3),
    "litellm-zai": (3, 3),
    "litellm-zai-async": (3, 3),
    "pydantic-ai": (3, 1),
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_under_the_decorators_the_limit_holds_at_the_server(sdk: Sdk, stream: bool, sim: GLMSimulator) -> None:
    ask = _decorated(sdk.build(sim.base_url, API_KEY, Wiring(None)))
    assert_limit_held(sim, run_all(sdk, ask, [f"question {i}" for i in range(CALLS)], stream))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_under_the_decorators_a_1302_is_absorbed(sdk: Sdk, stream: bool, sim: GLMSimulator) -> None:
    ask = _decorated(sdk.build(sim.base_url, API_KEY, Wiring(None)))
    sim.force_next("1302", 2)
    [answer] = run_all(sdk, ask, ["hello"], stream)
    assert isinstance(answer, str) and "glm-sim" in answer
    assert sim.stats.total_requests == 3  # the SDK's own retries or the decorator's: each 1302 once


@pytest.mark.parametrize("quiet", [False, True], ids=["sdk-defaults", "sdk_retries_off"])
@pytest.mark.parametrize("failure", ["1113", "401"])
def test_under_the_decorators_a_permanent_error_costs_what_the_sdk_resends(
    sdk: Sdk, failure: str, quiet: bool, sim: GLMSimulator
) -> None:
    ask_failing(sdk, failure, Wiring(None, quiet), sim, False)
    expected = SENT_FOR_A_1113_UNDER_THE_DECORATORS[sdk.name][quiet] if failure == "1113" else 1
    assert sim.stats.total_requests == expected


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
