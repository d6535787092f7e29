"""Moved to :mod:`rvm_live.engine.ort`; this name stays importable."""

from .engine.ort import OrtMattingNetwork, cpu_session, usable_cores

__all__ = ["OrtMattingNetwork", "cpu_session", "usable_cores"]
