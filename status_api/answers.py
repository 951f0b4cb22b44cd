"""Reading an untrusted HTTP answer: never more than a cap, whatever the server declares or sends.

Both of the service's clients (the node poller and the query-engine client) read with this; each
turns :class:`AnswerTooLarge` into its own error type, with this message.
"""

from __future__ import annotations

import aiohttp

_CHUNK = 64 * 1024


class AnswerTooLarge(Exception):
    """The answer is over the cap; the message says by how much when the server declared it."""


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, refused at ``limit`` bytes before reading it when declared larger, else
    as soon as the bytes read pass it."""
    if response.content_length is not None and response.content_length > limit:
        raise AnswerTooLarge(
            f"answer of {response.content_length} bytes is over the {limit} byte cap"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise AnswerTooLarge(f"answer is over the {limit} byte cap")
        chunks.append(chunk)
    return b"".join(chunks)
