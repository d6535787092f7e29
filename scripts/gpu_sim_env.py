"""Build ``.gpu-sim/``: a Python here that sees only what the lent GPU machine has, for scripts/gpu_run.sh's
simulation (issue 23). Usage: ``python3 scripts/gpu_sim_env.py [FOLDER]`` (PyPI reachable), then, offline::

    PIP_NO_INDEX=1 GPU_RUN_SIMULATE=1 GPU_PYTHON=.gpu-sim/bin/python OUT=/tmp/sim bash scripts/gpu_run.sh

A virtual environment without this machine's site-packages, into which every installed distribution that the GPU
machine's image also holds (:data:`GPU_MACHINE`, as /work/.library/device/KINDS.md lists it) is linked. So the
run must find everything else (PyAV, pyvirtualcam, platformdirs) in the carried wheels, as it will there.
Carried wheels built for the GPU machine's Python only get a twin for this Python in ``FOLDER/twins``, the same
version, which gpu_run.sh's pip step also looks in.
"""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from importlib.metadata import distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the 'cuda' image's Python packages, as KINDS.md read them on 2026-11-17 (the ones rvm_live can touch, and theirs)
GPU_MACHINE = """
accelerate certifi charset-normalizer cloudpickle colorama contourpy coverage cycler filelock flatbuffers fonttools
fsspec idna imageio iniconfig jinja2 joblib kiwisolver lazy-loader markupsafe matplotlib ml-dtypes mpmath networkx
numpy onnx onnx-ir onnxruntime onnxscript opencv-python-headless packaging pandas pillow pip pluggy prometheus-client
protobuf psutil pygments pyparsing pytest pytest-timeout python-dateutil pyyaml requests scikit-image scipy
setuptools six sympy tifffile torch tqdm typing-extensions urllib3 wheel
""".split()
# a distribution here that stands in for one of the image's (same modules)
STAND_INS = {"opencv-python": "opencv-python-headless"}


def canonical(name: str) -> str:
    """A distribution name as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def link_machine_packages(site: Path) -> list[str]:
    """Link into ``site`` the top-level files of every installed distribution the GPU machine also has."""
    wanted = {canonical(n) for n in GPU_MACHINE}
    linked = []
    for dist in distributions():
        name = canonical(dist.metadata["Name"] or "")
        if STAND_INS.get(name, name) not in wanted or not dist.files:
            continue
        tops = {f.parts[0] for f in dist.files if f.parts and f.parts[0] != ".."}
        for top in tops:
            source, target = Path(dist.locate_file(top)), site / top
            if source.exists() and not target.exists() and not top.endswith(".pth"):
                target.symlink_to(source)
        linked.append(name)
    return sorted(linked)


def fetch_twins(folder: Path) -> list[str]:
    """A wheel for this Python of each carried wheel that only the GPU machine's Python can install."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    twins = []
    for wheel in sorted((ROOT / ".gpu-wheels").glob("*.whl")):
        name, version, python = wheel.name.split("-")[:3]
        if not python.startswith("cp") or int(python[2:]) <= int(tag[2:]):  # pure, or abi3 from an older Python
            continue
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                        str(folder), f"{name}=={version}"], check=True)
        twins.append(f"{name}=={version}")
    return twins


def main(argv: list[str]) -> int:
    """Build the environment (anew) in ``argv[0]`` (default ``.gpu-sim``)."""
    folder = Path(argv[0] if argv else ROOT / ".gpu-sim").resolve()
    if not (ROOT / ".gpu-wheels").is_dir():
        sys.stderr.write("gpu_sim_env: run scripts/gpu_prepare.sh first (no .gpu-wheels)\n")
        return 2
    venv.EnvBuilder(clear=True, with_pip=False, symlinks=True).create(folder)
    site = next((folder / "lib").glob("python3*/site-packages"))
    linked = link_machine_packages(site)
    twins = fetch_twins(folder / "twins")
    print(f"gpu_sim_env: {folder}: {len(linked)} of the GPU machine's distributions linked ({', '.join(linked)}); "
          f"twins of the carried wheels for this Python: {', '.join(twins) or 'none needed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
