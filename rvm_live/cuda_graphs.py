"""Moved to :mod:`rvm_live.engine.graphs`; this name stays importable."""

from .engine.graphs import GraphedStep, graph_body, to_model_input

__all__ = ["GraphedStep", "graph_body", "to_model_input"]
