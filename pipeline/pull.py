"""Reading a JetStream pull subscription one message at a time until told to stop."""

from collections.abc import AsyncIterator, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext


async def fetch_forever(
    sub: JetStreamContext.PullSubscription, stopping: Callable[[], bool]
) -> AsyncIterator[Msg]:
    """Messages as they come; ends when ``stopping()`` or the connection closes.

    nats-py's fetch can turn a cancellation into a timeout, hence the flag.
    """
    while not stopping():
        try:
            msgs = await sub.fetch(1, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        except nats.errors.ConnectionClosedError:
            return
        for msg in msgs:
            yield msg
