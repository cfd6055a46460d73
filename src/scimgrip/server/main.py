"""ASGI entry point for ``uvicorn`` workers: builds the app from ``SCIMGRIP_*`` settings.

``scimgrip serve --workers N`` hands uvicorn this factory as an import string, so each worker process opens
its own storage (database connections are not shared across processes).
"""

from __future__ import annotations

from starlette.applications import Starlette

from scimgrip.server.app import ServerConfig, create_app
from scimgrip.settings import Settings
from scimgrip.storage import open_storage


def app_from_env() -> Starlette:
    settings = Settings()
    storage = open_storage(settings.database_url)
    config = ServerConfig(limits=settings.limits(), public_url=settings.public_url,
                          request_log_retention=settings.request_log_retention)
    return create_app(storage, config)
