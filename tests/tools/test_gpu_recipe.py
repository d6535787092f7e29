"""Issue 23's GPU recipe (scripts/gpu_run.sh, gpu_check, the quality benchmark's CUDA rows) stays runnable on the
machine that has no GPU: every step names a module and flags that exist today, and the simulated run completes."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rvm_live.tools import gpu_check, quality, quality_data

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "scripts" / "gpu_run.sh"
STEP_LIMIT_SUM = 520  # issue 23: one device call of at most 9 minutes, with the machine's start around it


def recipe_steps(simulate: bool) -> list[list[str]]:
    """gpu_run.sh's steps as ``[name, limit, program, args...]``, listed by the script itself (GPU_RUN_LIST)."""
    env = {**os.environ, "GPU_RUN_LIST": "1", "GPU_RUN_SIMULATE": "1" if simulate else "0", "GPU_PYTHON": "python3",
           "GPU_RUN_STEPS": ""}
    out = subprocess.run(["bash", str(RUN)], env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def recipe_env() -> dict[str, str]:
    """The shared settings of scripts/gpu_recipe.env."""
    text = (ROOT / "scripts" / "gpu_recipe.env").read_text(encoding="utf-8")
    pairs = (shlex.split(line)[0].split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return dict(pairs)


def _check_cli(args: list[str]) -> None:
    """``python -m rvm_live ARGS`` parsed the way cli.main dispatches it (a daemon's config is also validated)."""
    from rvm_live import cli
    from rvm_live.batch import command
    from rvm_live.tools import bench, streambench

    if args[:1] == ["bench"] and "--streams" in args:
        streambench.build_parser().parse_args(args[1:])
    elif args[:1] == ["bench"] and "--quality" in args:
        parsed = quality.build_parser().parse_args([a for a in args[1:] if a != "--quality"])
        quality.parse_sizes(parsed.sizes)
        engines = set(parsed.engines.split(",")) - {*quality.MODEL_ENGINES, *quality.CUDA_ENGINES, quality.PEER}
        clips = set((parsed.clips or "").split(",")) - {"", *(spec.name for spec in quality_data.CLIPS)}
        assert not engines and not clips, f"unknown engines {engines} or clips {clips}"
    elif args[:1] == ["bench"]:
        bench.build_parser().parse_args(args[1:])
    elif args[:1] == ["batch"]:
        source, _ = command.parse(args[1:])
        source.load()
    else:
        cli.ConfigSource(args).load()


GPU_MARK = "@pytest.mark." + "gpu"  # spelled so that this file is not one of them


def _check_pytest(args: list[str]) -> None:
    """The GPU step runs exactly the files that hold GPU-marked tests, with ``-m gpu``."""
    files = [a for a in args if a.endswith(".py")]
    assert args[args.index("-m") + 1] == "gpu", f"pytest should select -m gpu: {args}"
    marked = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py") if GPU_MARK in p.read_text(encoding="utf-8"))
    assert files == marked, f"pytest runs {files}, the GPU-marked tests are in {marked}"


ARG_CHECKS = {
    "rvm_live": _check_cli,
    "rvm_live.tools.gpu_check": lambda args: gpu_check.build_parser().parse_args(args),
    "pytest": _check_pytest,
    "pip": lambda args: None if args[:1] == ["install"] else pytest.fail(f"pip {args}"),
}


def check_step(step: list[str]) -> None:
    """AssertionError unless ``step`` runs ``nvidia-smi`` or ``python -m MODULE`` with a module that exists here and
    arguments its parser accepts."""
    name, _limit, program, *args = step
    if program == "nvidia-smi":
        return
    assert args[:1] == ["-m"], f"step {name}: expected `python -m MODULE ...`, got {step}"
    module, args = args[1], args[2:]
    assert importlib.util.find_spec(module) is not None, f"step {name}: there is no module {module}"
    assert module in ARG_CHECKS, f"step {name}: no argument check for {module}: add one to {__file__}"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            ARG_CHECKS[module](args)
    except SystemExit as exc:
        raise AssertionError(f"step {name}: {module} rejects {args}: {stderr.getvalue().strip()}") from exc
    except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
        raise AssertionError(f"step {name}: {module} rejects {args}: {exc}") from exc


@pytest.mark.parametrize("simulate", [False, True], ids=["gpu", "simulation"])
def test_every_step_names_a_module_and_flags_that_exist(simulate):
    steps = recipe_steps(simulate)
    names = [step[0] for step in steps]
    assert len(set(names)) == len(names) and {"pytest_gpu", "gpu_check", "streams", "quality", "batch"} <= set(names)
    for step in steps:
        check_step(step)


def test_the_steps_fit_one_device_call_and_write_what_the_targets_read():
    steps = recipe_steps(simulate=False)
    assert sum(int(step[1]) for step in steps) <= STEP_LIMIT_SUM
    written = " ".join(arg for step in steps for arg in step)
    for _, stem, *_ in gpu_check.TARGETS:
        assert f"/{stem}.json" in written, f"no step writes {stem}.json, which a target of issue 23 reads"
    live = [step for step in steps if step[0] == "live_1920x1080"]
    assert live and "--realtime" in live[0] and live[0][live[0].index("--device") + 1] == "cuda"


def test_the_carry_is_at_most_eight_ignored_paths():
    paths = recipe_env()["CARRY_PATHS"].split()
    assert 1 <= len(paths) <= 8
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True).stdout
    assert ignored.split() == paths  # ignored: they travel only as carried paths, never twice


@pytest.mark.parametrize(("step", "match"), [
    (["x", "1", "python3", "-m", "rvm_live.tools.streambenchmark", "--streams", "1"], "no module"),
    (["x", "1", "python3", "-m", "rvm_live", "bench", "--quality", "--precision", "fp16"], "rejects"),
    (["x", "1", "python3", "-m", "rvm_live", "--source", "a.mp4", "--device", "cuda", "--fp32"], "rejects"),
    (["x", "1", "python3", "-m", "rvm_live", "batch", "a.mp4", "-o", "out", "--realtime"], "does not apply"),
    (["x", "1", "python3", "-m", "rvm_live.tools.gpu_check", "check", "--frames", "3"], "rejects"),
    (["x", "1", "python3", "-m", "rvm_live", "bench", "--quality", "--engines", "cuda-bf16"], "unknown engines"),
])
def test_the_check_fails_on_a_moved_module_or_a_wrong_flag(step, match):
    with pytest.raises(AssertionError, match=match):
        check_step(step)


def test_the_summary_judges_each_target_and_says_what_was_not_measured(tmp_path):
    runs = {gpu_check.RUNS[0][0]: {"model": {"fps": 612.0}}, gpu_check.RUNS[1][0]: {"model": {"fps": 149.0}},
            gpu_check.RUNS[3][0]: {"roundtrip": {"latency_ms": {"p50": 1.5}}}}
    files = {"gpu_check": {"runs": runs, "fp16_fidelity_1280x720": {"mean_abs_diff": 1e-3, "max_abs_diff": 0.08}},
             "live_1920x1080": {"frames_in": 240, "frames_out": 240, "latency_ms": {"p95": 31.0}},
             "streams": {"settings": {"fps": 30.0}, "rows": [{"streams": 1, "daemon": {"total_fps": 30.0}},
                                                             {"streams": 4, "daemon": {"total_fps": 118.0}},
                                                             {"streams": 16, "daemon": {"total_fps": 400.0}}]}}
    for stem, data in files.items():
        (tmp_path / f"{stem}.json").write_text(json.dumps(data))
    (tmp_path / "steps.txt").write_text("gpu_check rc=0 limit=125s took=60s\n")
    report = gpu_check.summarize(tmp_path)
    met = {v["target"].split(" ", 1)[1] if v["target"].startswith("MobileNetV3") else v["target"]: v["met"]
           for v in report["targets"]}
    assert met["fp16 1080p model-only fps"] is True and met["fp16 4K model-only fps"] is False
    assert met["ResNet50 fp16 1080p model-only fps"] is None  # not measured, said so
    assert met["720p upload-network-composite-download p50 ms"] is True
    assert met["live 1080p30: frames lost (in - out)"] is True and met["live 1080p30: p95 ms"] is True
    # 4 x 30 x 0.97 = 116.4 <= 118 (held), 16 x 30 x 0.97 = 465.6 > 400 (not held): 4 streams held, target 16
    assert report["results"]["streams"]["held"] == 4 and met["720p30 streams held at 30 fps in one process"] is False
    assert [met[k] for k in met if "fp16 vs fp32" in k] == [True, False]
    assert report["steps"] == ["gpu_check rc=0 limit=125s took=60s"]


def test_a_check_names_its_failed_parts_and_not_its_skipped_ones():
    skipped = {"available": False, "reason": "skipped (--no-e2e)"}
    report = {"runs": {"ok": {"model": {"fps": 9.0}, "end_to_end": skipped},
                       "oom": {"model": {"available": False, "reason": "OutOfMemoryError: CUDA out of memory"}},
                       "e2e": {"model": {"fps": 9.0}, "end_to_end": {"available": False, "reason": "failed: OSError"}},
                       "crash": {"error": "RuntimeError: CUDA error"}},
              "fp16_fidelity_1280x720": {"error": "ValueError: no CUDA"}, "chunk_interplay_1280x720": {"frames": 48}}
    assert gpu_check.failures(report) == ["fp16_fidelity_1280x720", "oom", "e2e", "crash"]


def test_the_carphone_person_layer_reads_the_demo_clip():
    frames = quality_data._carphone(2)  # the quality benchmark's only moving person; its layer is made from these
    assert len(frames) == 2 and max(frames[0].shape[:2]) == quality_data.LAYER_LONG_SIDE


def test_the_cuda_rows_run_only_when_named():
    default = quality.build_parser().parse_args([]).engines.split(",")
    assert not [s for s in quality.settings_for(720, 1280, default) if s.engine in quality.CUDA_ENGINES]
    rows = [s for s in quality.settings_for(720, 1280, ["cuda-fp32", "cuda-fp16"]) if s.engine in quality.CUDA_ENGINES]
    assert [(s.engine, s.fullres, s.role) for s in rows] == [("cuda-fp32", "exact", "engines"),
                                                             ("cuda-fp16", "exact", "engines")]
    assert rows[0].ratio == rows[1].ratio == quality.settings_for(720, 1280, ["torch"])[0].ratio  # RVM's ratio


@pytest.mark.slow
def test_the_cuda_rows_score_the_torch_engine_on_the_named_device():
    with pytest.warns(RuntimeWarning, match="fp16 is only used on CUDA"):
        report = quality.run_benchmark([("tiny", 96, 64)], 2, ["cuda-fp32", "cuda-fp16"], quick=True, gpu="cpu")
    rows = {row["setting"]: row for row in report["rows"]}
    assert {"cuda-fp32 exact", "cuda-fp16 exact", "alpha=0", "alpha=1"} == set(rows)
    fp32, fp16 = rows["cuda-fp32 exact"], rows["cuda-fp16 exact"]
    assert fp32["mad"] == fp16["mad"] < rows["alpha=0"]["mad"]  # on the CPU both run fp32: the same matte
    assert fp32["ms_per_frame"] > 0 and fp16["ms_per_frame"] > 0


@pytest.mark.slow
def test_the_simulated_run_completes_every_step(tmp_path):
    from rvm_live.assets import cache_dir

    env = {**os.environ, "GPU_RUN_SIMULATE": "1", "GPU_PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "GPU_RUN_WORK": str(tmp_path / "work"), "GPU_RUN_CACHE": str(cache_dir()), "GPU_RUN_STEPS": ""}
    subprocess.run(["bash", str(RUN)], env=env, cwd=ROOT, check=True, timeout=1200, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["logs.tar.gz", "results.json", "steps.txt"]
    report = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    failed = [line for line in report["steps"] if " rc=0 " not in line and not line.startswith("nvidia_smi")]
    assert not failed, failed
    results = report["results"]
    assert all("fps" in run["model"] for run in results["gpu_check"]["runs"].values()), results["gpu_check"]
    live = results["live_320x180"]  # played live on a slow CPU: frames may be dropped, the freshest kept
    assert live["frames_in"] == 30 and live["frames_out"] >= 1 and live["lost"] == 30 - live["frames_out"]
    assert [row["streams"] for row in results["streams"]["rows"]] == [1, 2]
    assert {"cuda-fp32 exact", "cuda-fp16 exact"} <= {row["setting"] for row in results["quality_cuda"]["rows"]}
    assert results["batch"]["done"] == 1 and results["preflight"]["cuda"] is False
