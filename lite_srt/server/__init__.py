"""HTTP serving: the aiohttp app over an AsyncEngine on the same event loop.

app.py (routes, middlewares, lifecycle) · openai_api.py / native_api.py (handlers) · protocol.py (msgspec wire
types) · streams.py (submit + abort-safe output merging) · metrics.py · errors.py · openapi.py · common.py ·
launch.py (`lite-srt serve`) · process.py (run a server subprocess for tests and benchmarks).
"""
