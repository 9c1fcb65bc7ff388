"""Adapters that answer the request and response shapes of APIs clients are already written
against, each a thin layer over the same jobs, exports, webhooks and auth as ``/v1``."""
