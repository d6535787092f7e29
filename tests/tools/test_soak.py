"""A short soak in CI (the long one is ``python -m rvm_live.tools.soak``): memory stays flat after warm-up."""

from __future__ import annotations

import pytest

from rvm_live.config import Config
from rvm_live.tools.soak import soak


@pytest.mark.slow
def test_memory_stays_flat_over_a_short_soak(mobilenet):
    report = soak(30, config=Config(source="demo", loop=True, outputs=("null",)), interval=1.0)
    assert report["stats"]["frames_out"] > 120  # the clip looped: sources and decoders were reused
    assert report["rss_growth_pct_after_warmup"] is not None
    assert report["rss_growth_pct_after_warmup"] < 5.0
