"""The remote model server (`ghost-lsp serve-model`): continuous batching, auth, metrics.

Needs the [serve] extra (starlette, uvicorn, prometheus_client); nothing here is imported by
the language server.
"""
