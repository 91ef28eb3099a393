"""Connect to NATS with reconnects, logging every state change."""

from __future__ import annotations

import logging
from typing import Any

import nats
from nats.aio.client import Client

from services.bus.errors import BusError
from services.bus.settings import NatsSettings

log = logging.getLogger("tidemark.bus")


async def connect(settings: NatsSettings, *, name: str) -> Client:
    """A client that reconnects forever by default (`max_reconnect_attempts=-1`).

    Credentials are read from the files the settings reference, so no secret is ever part of a
    URL, an argument or a log line.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnected() -> None:
        log.warning("disconnected from nats")

    async def on_reconnected() -> None:
        url = client.connected_url if client is not None else None
        log.info("reconnected to nats at %s", url.netloc if url is not None else "?")

    async def on_closed() -> None:
        log.info("nats connection closed")

    options: dict[str, Any] = {
        "servers": settings.servers(),
        "name": settings.name or name,
        "connect_timeout": settings.connect_timeout_s,
        "max_reconnect_attempts": settings.max_reconnect_attempts,
        "reconnect_time_wait": settings.reconnect_wait_s,
        "allow_reconnect": True,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "closed_cb": on_closed,
    }
    options.update(credential_options(settings))
    client: Client | None = None
    try:
        client = await nats.connect(**options)
    except Exception as exc:
        raise BusError(f"cannot connect to NATS at {settings.url}: {exc}") from exc
    return client


def credential_options(settings: NatsSettings) -> dict[str, Any]:
    """nats-py's options for who we are: a .creds file, or a user and its password file; TLS.

    The password is read here, at connect time, so it lives only in this process's memory.
    """
    options: dict[str, Any] = {}
    if settings.credentials_file is not None:
        options["user_credentials"] = str(settings.credentials_file)
    if settings.user is not None:
        options["user"] = settings.user
        if settings.password_file is not None:
            options["password"] = settings.password_file.read_text().strip()
    if settings.tls_ca or settings.tls_cert:
        import ssl

        context = ssl.create_default_context(
            cafile=str(settings.tls_ca) if settings.tls_ca else None
        )
        if settings.tls_cert and settings.tls_key:
            context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
        options["tls"] = context
    return options
