"""One NATS connection per cluster process, with the operator's credentials.

Every process of a host (the CLI's start-up checks, the follower, the
front) connects with the same ``--nats`` servers and the token, NKey seed,
credentials file and CA options passed through as they are; nothing here
stores credentials anywhere else.
"""

from __future__ import annotations

import ssl

from engine.errors import ConfigError

CONNECT_TIMEOUT_S = 2
RECONNECT_WAIT_S = 0.5


def options(p, name: str) -> dict:
    """Keyword arguments of ``nats.connect`` from parameters (``Params`` or ``Config``)."""
    opts: dict = dict(servers=list(p.nats), name=name, connect_timeout=CONNECT_TIMEOUT_S,
                      reconnect_time_wait=RECONNECT_WAIT_S, max_reconnect_attempts=-1,
                      allow_reconnect=True)
    if p.nats_token_file:
        opts["token"] = _read(p.nats_token_file, "--nats-token-file")
    if p.nats_nkey_seed_file:
        opts["nkeys_seed"] = p.nats_nkey_seed_file
    if p.nats_creds_file:
        opts["user_credentials"] = p.nats_creds_file
    if p.nats_ca_file:
        ctx = ssl.create_default_context(cafile=p.nats_ca_file)
        opts["tls"] = ctx
    return opts


def _read(path: str, flag: str) -> str:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"{flag}={path}: {exc.strerror}") from None
    if not text:
        raise ConfigError(f"{flag}={path} is empty")
    return text


async def connect(p, name: str, first_attempt_only: bool = False):
    """A connected client. ``first_attempt_only``: fail at once when no server
    answers (start-up checks), instead of retrying for ever."""
    import nats
    opts = options(p, name)
    if first_attempt_only:
        # (0 attempts means "for ever" to nats-py's first connect; 1 is one round)
        opts.update(allow_reconnect=False, max_reconnect_attempts=1)

    async def quiet(exc):  # the client logs reconnect attempts itself; errors surface as exceptions
        return None

    opts.setdefault("error_cb", quiet)
    try:
        return await nats.connect(**opts)
    except Exception as exc:  # nats raises NoServersError, OSError, TimeoutError ...
        raise ConfigError(f"--nats={','.join(p.nats)}: cannot connect to any NATS server "
                          f"({type(exc).__name__}: {exc or 'no answer'})") from None
