"""The per-application state the views share, kept in ``app.extensions``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from survey6.server.web.ratelimit import LoginLimiter
from survey6.server.web.services import WebServices
from survey6.server.web.settings import WebSettings
from survey6.server.web.telemetry import WebMetrics
from survey6.server.web.users import PasswordChecker

EXTENSION_KEY = "survey6"


@dataclass(frozen=True)
class WebContext:
    services: WebServices
    web: WebSettings
    limiter: LoginLimiter
    passwords: PasswordChecker
    metrics: WebMetrics


def install(app: Flask, context: WebContext) -> None:
    app.extensions[EXTENSION_KEY] = context


def web_context() -> WebContext:
    context = current_app.extensions[EXTENSION_KEY]
    assert isinstance(context, WebContext)
    return context
