"""``multi_model_reloading`` for a runner: the ``model_client`` its Handler's constructor takes,
then ``load_model`` bound once the Handler exists, the first versions loaded before the worker
reports ready, and a watcher that keeps them current."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferd.worker import protocol
from inferd.worker.handler_class import HandlerLoadError, declared_params, model_problem
from inferd.worker.models.client import ModelClient
from inferd.worker.models.report import METRIC_LOAD_SECONDS, METRIC_LOADS
from inferd.worker.models.sources import LocalSource, RemoteSource, source_for
from inferd.worker.models.store import ModelStore, StoreEvents
from inferd.worker.models.versions import Roots, dir_models
from inferd.worker.models.watch import poll_remote, watch_local

SINGLE_MODEL = "default"  # inferd.spec.model.SINGLE_MODEL: the worker reads options, not the spec


class ModelRuntime:
    def __init__(self, spec: dict[str, Any], cache_dir: str, send: Callable[[protocol.Message], None],
                 log: Any) -> None:
        self.spec = spec
        self.cache_dir = Path(cache_dir)
        self.log = log
        self._send = send
        self._sources: dict[str, LocalSource | RemoteSource] = {}
        single = SINGLE_MODEL if spec["form"] == "path" else None
        self.store = ModelStore(self.roots, StoreEvents(self._snapshot, self._loaded, log),
                                cache_size=spec.get("cache_size"), single=single)
        self.client = ModelClient(self.store)

    def constructor_args(self) -> dict[str, Any]:
        return {"model_client": self.client}

    def start(self, handler: Any) -> None:
        """Bind ``load_model``, load what there is (before ``Ready``), then watch for changes."""
        load_model = getattr(handler, "load_model", None)
        problem = model_problem(declared_params(type(handler).__init__)[0], callable(load_model), True)
        if problem is not None or load_model is None:
            raise HandlerLoadError(problem or "Handler must define load_model(self, model_path)")
        self.store.loader = load_model  # positional, as Cortex called it: any parameter name works
        self.store.refresh()
        locations = self._locations()
        local = [location for location in locations if "://" not in location]
        if local:
            watch_local(local, self.store.refresh, self.log)
        if len(local) < len(locations):
            poll_remote(self.store.refresh, self.log)

    def _locations(self) -> list[str]:
        return [self.spec["dir"]] if self.spec.get("dir") else [m["path"] for m in self.spec["models"]]

    def _source(self, location: str) -> LocalSource | RemoteSource:
        # one per scheme, so disk_cache_size bounds all of an API's downloads together
        scheme = location.split("://", 1)[0] if "://" in location else ""
        if scheme not in self._sources:
            self._sources[scheme] = source_for(location, self.cache_dir, self.spec.get("disk_cache_size"))
        return self._sources[scheme]

    def roots(self) -> Roots:
        if self.spec.get("dir"):
            source = self._source(self.spec["dir"])
            return dir_models(source, source.path_of(self.spec["dir"]))
        roots: Roots = {}
        for model in self.spec["models"]:
            source = self._source(model["path"])
            roots[model["name"]] = (source, source.path_of(model["path"]))
        return roots

    def _snapshot(self, models: dict[str, Any]) -> None:
        self._send(protocol.Models(models))

    def _loaded(self, model: str, version: int, ok: bool, seconds: float) -> None:
        outcome = "loaded" if ok else "failed"
        self._send(protocol.Metric(METRIC_LOADS, "increment", 1.0, {"model": model, "outcome": outcome}))
        self._send(protocol.Metric(METRIC_LOAD_SECONDS, "histogram", seconds, {"model": model}))


def model_runtime(options: dict[str, Any], send: Callable[[protocol.Message], None], log: Any) -> ModelRuntime | None:
    """The runtime when the API has multi_model_reloading (the daemon put it in the options)."""
    spec = options.get("models")
    if not spec:
        return None
    return ModelRuntime(spec, options.get("model_cache_dir") or ".inferd-models", send, log)
