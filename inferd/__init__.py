"""inferd: a single-node, self-hosted inference server for Cortex and RunPod projects."""

__version__ = "0.1.0"
