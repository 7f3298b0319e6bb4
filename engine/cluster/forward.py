"""Recall forwarding: one gRPC channel per owner address, reused.

The front of a host that does not own a partition sends the recall to the
owner's front with the caller's deadline and a marker that stops a second
hop (an owner that lost the partition meanwhile answers complete=false
instead of forwarding again). The bearer token of ``--auth-token-file`` is
sent along: every host of a cluster uses the same token.
"""

from __future__ import annotations

import threading
import time

import grpc

from engine.rpc import engram_pb2_grpc as pb_grpc


class Forwarder:
    def __init__(self, params):
        self.p = params
        self._stubs: dict[str, tuple[grpc.Channel, object]] = {}
        self._lock = threading.Lock()
        self._token = None
        if params.auth_token_file:
            from engine.gateway.server import read_token
            self._token = read_token(params.auth_token_file)

    def _stub(self, addr: str):
        with self._lock:
            got = self._stubs.get(addr)
            if got is None:
                size = self.p.grpc_max_message_bytes
                channel = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", size),
                                                               ("grpc.max_send_message_length", size)])
                got = self._stubs[addr] = (channel, pb_grpc.EngramStub(channel))
            return got[1]

    def recall(self, addr: str, req, deadline: float, metadata: tuple):
        md = metadata + ((("authorization", f"Bearer {self._token}"),) if self._token else ())
        try:
            return self._stub(addr).Recall(req, timeout=max(0.05, deadline - time.monotonic()), metadata=md)
        except grpc.RpcError:
            return None

    def close(self) -> None:
        with self._lock:
            for channel, _ in self._stubs.values():
                channel.close()
            self._stubs.clear()
