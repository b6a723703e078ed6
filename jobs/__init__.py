"""Entrypoints: the `parley` CLI, Ray Tune fan-out, MLflow tracking and registry, rendering."""
