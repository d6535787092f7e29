"""Output files are checked before the model loads: writable, never written twice, never the source itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from helpers import run_cli, write_clip

from rvm_live.errors import ConfigError, SinkError
from rvm_live.io.files import check_output_files


def test_two_streams_writing_one_file_are_refused_whatever_the_spelling(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(ConfigError, match=r"^stream b: output .*out.mp4: stream a already writes .*out.mp4; one of"):
        check_output_files([("a", "camera:0", [str(out)]), ("b", "camera:1", [f"file://{tmp_path}/x/../out.mp4"])])
    with pytest.raises(ConfigError, match=r"^output .*out.mp4: this stream already writes"):
        check_output_files([("0", "demo", [str(out), "null", str(out)])])
    check_output_files([("a", "camera:0", [str(out), "vcam", "null"]), ("b", "camera:1", [str(tmp_path / "b.mp4")])])


def test_plug_in_names_are_not_files_even_before_any_plug_in_is_imported(tmp_path):
    # a fresh interpreter: the check itself must make the built-in names known ("null" twice is no clash)
    code = ("from rvm_live.io.files import check_output_files, file_output, file_source\n"
            "assert [file_output(s) for s in ('vcam', 'null', 'window', 'preview')] == [None] * 4\n"
            "assert [file_source(s) for s in ('demo', 'camera:0', '/dev/video0')] == [None] * 3\n"
            "check_output_files([('0', 'demo', ['null', 'null'])])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_an_output_that_is_a_source_is_refused_by_path_and_by_inode(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", n=3)
    (tmp_path / "sub").mkdir()
    os.link(clip, tmp_path / "sub" / "hard.mp4")
    os.symlink(clip, tmp_path / "soft.mp4")
    for output in (clip, str(tmp_path / "sub" / ".." / "clip.mp4"), str(tmp_path / "sub" / "hard.mp4"),
                   str(tmp_path / "soft.mp4")):
        with pytest.raises(ConfigError, match=r"is its own source \(.*clip.mp4\); it would be overwritten"):
            check_output_files([("0", clip, [output])])
    with pytest.raises(ConfigError, match=r"^stream b: output .*hard.mp4: is stream a's source"):
        check_output_files([("a", clip, ["null"]), ("b", "demo", [str(tmp_path / "sub" / "hard.mp4")])])


def test_an_output_folder_that_is_missing_is_said_before_anything_opens(tmp_path):
    with pytest.raises(SinkError, match=r"folder .*nowhere does not exist"):
        check_output_files([("0", "demo", [str(tmp_path / "nowhere" / "out.mp4")])])
    assert not list(tmp_path.iterdir())  # the writability probe leaves nothing behind


@pytest.mark.slow
def test_the_source_as_output_is_one_line_and_the_source_survives(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", n=5)
    before = (tmp_path / "clip.mp4").read_bytes()
    proc = run_cli("--source", clip, "-o", clip)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "is its own source" in proc.stderr and "inference:" not in proc.stderr  # before the model loads
    assert (tmp_path / "clip.mp4").read_bytes() == before


@pytest.mark.slow
def test_two_streams_with_one_output_file_are_refused_at_start(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", n=5)
    cfg = tmp_path / "two.toml"
    cfg.write_text(f'[[streams]]\nid = "a"\nsource = "{clip}"\noutputs = ["same.mp4"]\n'
                   f'[[streams]]\nid = "b"\nsource = "{clip}"\noutputs = ["./same.mp4"]\n')
    proc = run_cli("--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "stream b: output ./same.mp4: stream a already writes" in proc.stderr
    assert not (tmp_path / "same.mp4").exists()


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"]).returncode != 0,
                    reason="needs user namespaces (unshare -rm) to mount a read-only folder")
def test_a_read_only_output_folder_is_one_line_before_the_model_loads(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", n=5)
    folder = tmp_path / "ro"
    folder.mkdir()
    mount = f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} && exec \"$0\" \"$@\""
    proc = run_cli("--source", clip, "-o", str(folder / "out.mp4"), prefix=("unshare", "-rm", "sh", "-c", mount))
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"out.mp4: cannot write in {folder}: Read-only file system" in proc.stderr
    assert "inference:" not in proc.stderr and "rvm-sink" not in proc.stderr
