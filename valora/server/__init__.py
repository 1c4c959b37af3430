"""OpenAI-compatible HTTP serving: pydantic protocol, the asyncio engine wrapper, the FastAPI app,
Prometheus metrics and the ``valora-serve`` command line."""
