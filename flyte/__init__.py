"""Orchestration on Flyte: the nightly re-ingest, bulk Q&A, the task image and a dev workspace.

Installed as `flytegpt.flyte` (never a top-level `flyte`: that is the Flyte 2 SDK's name).
Modules here import `flytegpt.ingest` and `flytegpt.bot`; nothing outside `flyte/` imports them.
"""
