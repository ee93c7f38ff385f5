"""The guard at the HTTP layer: one line guards any SDK that accepts an httpx client.

``ZhipuAiClient(http_client=glm_guard.http.client(concurrency="auto"))`` and the same for
openai, langchain-openai, litellm and pydantic-ai: every request, the SDK's own retries
included, is admitted, classified from the raw answer and retried here (``docs/http.md``).
Needs httpx (``pip install 'glm-guard[client]'``).
"""

from ._clients import async_client, client
from ._transport import AsyncGuardedTransport, GuardedTransport

__all__ = ["AsyncGuardedTransport", "GuardedTransport", "async_client", "client"]
