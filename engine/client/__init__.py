"""Python clients of the gRPC gateway: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Both offer the calls of the local API (``observe``, ``forget``, ``recall``)
plus sessions (``stream``) and ``info``::

    from engine.client import Client
    with Client("127.0.0.1:50051") as c:
        ack = c.observe("default", ids, vectors)          # -> Ack, as engine.connect
        with c.stream("default") as s:                    # numbered batches
            s.send(ids, vectors)
            s.forget(ids[:5])                             # a numbered forget batch
        res = c.recall("default", query, k=10)            # -> ids, distances, complete
        c.forget("default", ids[5:10])                    # -> ForgetResult, once applied

Several gateways: ``Client("h1:50051,h2:50051")`` or ``Client(["h1:50051",
"h2:50051"])``; ``client.target`` is the one in use, ``session.target`` the
one a session is open on.

Retries are the client's job, within ``retry_timeout`` seconds per call:

* ``over_capacity``: the rest of the batch is sent again after the ack's
  retry-after (or an exponential backoff when it has none), so a stream
  slows down to what the engine drains;
* a gateway that went away (``UNAVAILABLE``, no answer within ``timeout``):
  unary calls go to the next target (round robin, a backoff after each
  full round; ``engine.client.targets``). A session resumes by id, where it
  may (``engine.client.session``: any gateway of a cluster, only its own on
  a single host), and sends the batch again with the same sequence numbers.
  The gateway (or, in a cluster, the log's message id) answers
  ``duplicate`` for whatever had already gone in, so nothing is inserted
  twice; those count as accepted in the Ack. Refusals (``INVALID_ARGUMENT``,
  ``NOT_FOUND``, ``UNAUTHENTICATED`` ...) are raised at once, on the same
  target. A unary ``forget`` is a write to one engine: it is sent again to
  the same gateway only (forgetting twice is harmless), never to another
  target.

An Ack's ``accepted`` covers the batch's leading observations; the rest are
in ``rejected`` by reason (``invalid_input``, ``invalid_sequence`` and a
first-try ``duplicate`` are final; ``over_capacity`` is what was still
refused when ``retry_timeout`` ran out).

Modules: ``targets`` (the target list and the rotation policy), ``common``
(channels, what is retried, retry loops, message conversions), ``session``
(what a session knows, where it may move, and the state of one send,
whatever the transport), ``blocking`` (``Client``, ``Session``), ``aio``
(``AsyncClient``, ``AsyncSession``). The package imports only
``engine.rpc``, ``engine.results`` and ``engine.errors`` (plus grpc and
numpy): a remote producer loads no shared-memory code
(tests/unit/test_client_imports.py).
"""

from engine.client.aio import AsyncClient, AsyncSession
from engine.client.blocking import Client, Session

__all__ = ["Client", "Session", "AsyncClient", "AsyncSession"]
