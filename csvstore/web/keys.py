"""Typed keys for what the application holds (aiohttp ``AppKey``s, not bare strings)."""

from __future__ import annotations

from aiohttp import web

from csvstore.config import Settings
from csvstore.metrics import Metrics
from csvstore.service import CsvStore
from csvstore.uploads import UploadLimits
from csvstore.web.inflight import InFlight

SETTINGS_KEY = web.AppKey("settings", Settings)
STORE_KEY = web.AppKey("store", CsvStore)
LIMITS_KEY = web.AppKey("upload_limits", UploadLimits)
OPENAPI_KEY = web.AppKey("openapi", bytes)
STARTUP_CHECK_KEY = web.AppKey("startup_check", bool)
INFLIGHT_KEY = web.AppKey("inflight", InFlight)
METRICS_KEY = web.AppKey("metrics", Metrics)
