"""Orchestration on Flyte: the nightly re-ingest, bulk Q&A, the task image and a dev workspace.

Modules here import `ingest` and `bot`; nothing outside `flyte/` imports them.
"""
