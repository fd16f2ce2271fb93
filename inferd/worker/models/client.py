"""Cortex's ``model_client``, as handed to ``Handler.__init__`` (Cortex §3.9)."""

from __future__ import annotations

from typing import Any

from inferd.worker.models.store import ModelStore


class ModelClient:
    def __init__(self, store: ModelStore) -> None:
        self._store = store

    def get_model(self, model_name: str | None = None, model_version: str | int = "latest") -> Any:
        """What ``load_model`` returned for this model and version; ``ModelNotFound`` (404,
        gRPC NOT_FOUND) for an unknown one, ``ModelUnavailable`` (503) when none loads."""
        return self._store.get(model_name, model_version)
