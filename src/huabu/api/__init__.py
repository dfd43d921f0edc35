"""huabu's own API, under ``/huabu/v1``: generations, tasks and their events, uploads, models,
sessions (``routes``); usage, keys and the admin API (``admin``); datasets, trainings and
trained models (``datasets``); the webhook secret and deliveries (``hooks``). Its request body
*is* the native ``GenerationRequest``, and its errors are huabu's own shape (the default)."""

from __future__ import annotations

from huabu.api import admin, datasets, hooks, routes
from huabu.web.routing import Mount

#: What huabu's own API adds to the app (mounted by ``app``).
MOUNT = Mount(routers=(routes.router, admin.router, datasets.router, hooks.router))
