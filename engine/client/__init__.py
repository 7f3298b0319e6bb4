"""Python clients of the gRPC gateway: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Both offer the calls of the local API (``observe``, ``recall``) plus
sessions (``stream``) and ``info``::

    from engine.client import Client
    with Client("127.0.0.1:50051") as c:
        ack = c.observe("default", ids, vectors)          # -> Ack, as engine.connect
        with c.stream("default") as s:                    # numbered batches
            s.send(ids, vectors)
        res = c.recall("default", query, k=10)            # -> ids, distances, complete

Retries are the client's job, within ``retry_timeout`` seconds per call:

* ``over_capacity``: the rest of the batch is sent again after the ack's
  retry-after (or an exponential backoff when it has none), so a stream
  slows down to what the engine drains;
* a gateway that went away (``UNAVAILABLE``): reconnect with backoff, resume
  the session by id, and send the batch again with the same sequence
  numbers. The gateway answers ``duplicate`` for whatever had already gone
  in, so nothing is inserted twice; those count as accepted in the Ack.

An Ack's ``accepted`` covers the batch's leading observations; the rest are
in ``rejected`` by reason (``invalid_input``, ``invalid_sequence`` and a
first-try ``duplicate`` are final; ``over_capacity`` is what was still
refused when ``retry_timeout`` ran out).

Modules: ``common`` (channel settings, retry loops, message conversions),
``session`` (what a session knows and the state of one send, whatever the
transport), ``blocking`` (``Client``, ``Session``), ``aio`` (``AsyncClient``,
``AsyncSession``). The package imports only ``engine.rpc``,
``engine.results`` and ``engine.errors`` (plus grpc and numpy): a remote
producer loads no shared-memory code (tests/test_client_imports.py).
"""

from engine.client.aio import AsyncClient, AsyncSession
from engine.client.blocking import Client, Session

__all__ = ["Client", "Session", "AsyncClient", "AsyncSession"]
