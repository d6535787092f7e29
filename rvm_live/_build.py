"""Build step, used by setuptools only (``[tool.setuptools.cmdclass]`` in pyproject.toml), never at run time.

The presets' source is the top-level ``configs/`` folder; a wheel (and an sdist) carries a copy of its
``*.toml`` files as ``rvm_live/configs/``, where :func:`rvm_live.config.preset_dirs` finds them once installed.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools.command.build_py import build_py

PRESETS_SOURCE = "configs"  # relative to the project root, where setuptools runs
PRESETS_PACKAGE = "rvm_live.configs"


class BuildPyWithPresets(build_py):
    """``build_py`` that also copies ``configs/*.toml`` into the package (sdist: lists them as sources)."""

    def _get_data_files(self) -> list[tuple[str, str, str, list[str]]]:
        return [*super()._get_data_files(), self._presets()]

    def get_data_files_without_manifest(self) -> list[tuple[str, str, str, list[str]]]:
        return [*super().get_data_files_without_manifest(), self._presets()]

    def _presets(self) -> tuple[str, str, str, list[str]]:
        names = sorted(p.name for p in Path(PRESETS_SOURCE).glob("*.toml"))
        if not names:  # a wheel without presets is the defect this step exists to prevent
            raise FileNotFoundError(f"no presets in {Path(PRESETS_SOURCE).resolve()}")
        build_dir = os.path.join(self.build_lib, *PRESETS_PACKAGE.split("."))
        return PRESETS_PACKAGE, PRESETS_SOURCE, build_dir, names
