"""The network side: Starlette app, WebSocket and HTTP API, SSE, auth, health."""
