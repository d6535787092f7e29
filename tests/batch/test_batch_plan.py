"""Planning a batch: which files, which output names, which segments; and the command's refusals."""

from __future__ import annotations

import math

import pytest
from conftest import index_clip

from rvm_live.batch.plan import Probe, plan_clips, plan_tasks, windows
from rvm_live.errors import ConfigError


def test_folders_globs_and_files_keep_their_relative_names(tmp_path):
    for name in ("lib/a.mp4", "lib/x/b.mov", "lib/x/notes.txt", "takes/t1.mkv", "single.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    clips = plan_clips([str(tmp_path / "lib"), str(tmp_path / "takes" / "*.mkv"), str(tmp_path / "single.mp4")],
                       str(tmp_path / "out"), suffix="-matted", ext=".mp4")
    assert sorted(c.relative for c in clips) == ["a-matted.mp4", "single-matted.mp4", "t1-matted.mp4",
                                                 "x/b-matted.mp4"]
    assert {c.output for c in clips} == {str(tmp_path / "out" / c.relative) for c in clips}


def test_two_inputs_writing_one_output_are_refused(tmp_path):
    for name in ("one/clip.mp4", "two/clip.mov"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ConfigError, match="would both write"):
        plan_clips([str(tmp_path / "one" / "clip.mp4"), str(tmp_path / "two" / "clip.mov")], str(tmp_path / "o"),
                   suffix="", ext=".mp4")
    with pytest.raises(ConfigError, match="no such file"):
        plan_clips([str(tmp_path / "missing.mp4")], str(tmp_path / "o"), suffix="", ext=".mp4")


@pytest.mark.parametrize(("frames", "length", "warmup"), [(90, 30, 8), (100, 30, 0), (61, 20, 30), (7, 2, 1)])
def test_every_frame_falls_in_exactly_one_segment(frames, length, warmup):
    fps, start = 29.97, 0.5
    parts = windows(Probe(frames, fps, start), length, warmup)
    assert len(parts) == round(frames / length)
    for i in range(frames):
        t = start + i / fps
        owners = [w for w in parts if (w.start is None or t >= w.start) and (w.end is None or t < w.end)]
        assert len(owners) == 1, i
        fed = [w for w in parts if (w.warm_start is None or t >= w.warm_start) and (w.end is None or t < w.end)]
        owner = owners[0]
        # a segment is fed its own frames plus up to ``warmup`` before them
        assert owner in fed and len(fed) <= 1 + math.ceil(warmup / length)
    assert all(w.warmup_frames == min(warmup, w.index * length) for w in parts)


def test_only_clips_longer_than_the_segment_are_split(tmp_path):
    short, long = index_clip(tmp_path / "short.mp4", 30), index_clip(tmp_path / "long.mp4", 95)
    tasks = plan_tasks(plan_clips([short, long], str(tmp_path / "o"), suffix="", ext=".mp4"), str(tmp_path / "o"),
                       segment_s=1.0, warmup=4)
    # longest first: the last segment takes the remainder
    assert [(t.key, t.frames) for t in tasks] == [("long.mp4#2", 35), ("short.mp4", 30), ("long.mp4#0", 30),
                                                  ("long.mp4#1", 30)]
    assert all(".rvm-batch" in t.output for t in tasks if t.window)


@pytest.mark.parametrize(("flags", "message"), [
    (["--source", "x.mp4"], "--source does not apply"),
    (["-o", "a", "-o", "b"], "exactly one output folder"),
    (["--stats-json", "s.json"], "--stats-json does not apply"),
])
def test_flags_that_do_not_apply_are_one_line_errors(tmp_path, capsys, flags, message):
    from rvm_live.cli import main

    clip = index_clip(tmp_path / "c.mp4", 3)
    args = ["batch", clip, *(flags if "-o" in flags else ["-o", str(tmp_path / "out"), *flags])]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_daemon_flags_reach_the_clip_config(tmp_path):
    from rvm_live.batch.command import parse

    source, options = parse(["a.mp4", "dir", "-o", "out", "--bg", "transparent", "--crf", "30", "--segment", "5",
                             "--backbone", "mobilenetv3", "--no-fp16", "--suffix=-m"])
    config = source.load()
    assert (config.bg, config.crf, config.fp16, config.outputs) == ("transparent", 30, False, ())
    assert (options.inputs, options.outdir, options.ext, options.segment, options.suffix) == (
        ("a.mp4", "dir"), "out", ".mov", 5.0, "-m")
