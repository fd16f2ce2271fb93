"""Cortex compatibility package (see inferd.compat)."""
