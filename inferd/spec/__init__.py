"""cortex.yaml as frozen dataclasses with Cortex's defaults; errors name file, line and field.

With no cortex.yaml, a RunPod worker repository becomes one RunPodAPI (discover.py).

Imports nothing else of inferd's.
"""

from .errors import SpecError, SpecIssue
from .loader import load_project, parse_apis
from .model import (
    KINDS,
    ApiSpec,
    AutoscalingSpec,
    BatchingSpec,
    ComputeSpec,
    ContainerSpec,
    DependenciesSpec,
    FrozenMap,
    HandlerSpec,
    ModelPath,
    MultiModelSpec,
    NetworkingSpec,
    PodSpec,
    ProbeSpec,
    ProjectSpec,
    RunPodSpec,
    TaskDefinition,
    TrafficTarget,
    UpdateStrategySpec,
    freeze,
    plain,
)
from .units import parse_duration, parse_quantity

__all__ = [
    "KINDS",
    "ApiSpec",
    "AutoscalingSpec",
    "BatchingSpec",
    "ComputeSpec",
    "ContainerSpec",
    "DependenciesSpec",
    "FrozenMap",
    "HandlerSpec",
    "ModelPath",
    "MultiModelSpec",
    "NetworkingSpec",
    "PodSpec",
    "ProbeSpec",
    "ProjectSpec",
    "RunPodSpec",
    "SpecError",
    "SpecIssue",
    "TaskDefinition",
    "TrafficTarget",
    "UpdateStrategySpec",
    "freeze",
    "load_project",
    "parse_apis",
    "parse_duration",
    "parse_quantity",
    "plain",
]
