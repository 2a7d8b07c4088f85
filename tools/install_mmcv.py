#!/usr/bin/env python
"""Build (once) and install mmcv 2.1.0 with its compiled ops for the torch in this environment.

mmcv 2.1.0 publishes no wheel for torch 2.14, and its sdist pins ``-std=c++14`` / ``-std=c++17``
while torch 2.14's headers need C++20. This script:

1. returns at once if mmcv 2.1.0 with its ops (``mmcv._ext``) already imports here;
2. otherwise installs a cached wheel from ``$MPQ_CACHE_DIR/wheels`` (default ``~/.cache/mpq/wheels``,
   honouring ``XDG_CACHE_HOME``), keyed by Python, torch version and CPU/CUDA ops;
3. otherwise downloads the sdist from the package index, raises the C++ standard to c++20, builds a
   wheel with ``MMCV_WITH_OPS=1`` (CUDA ops too when nvcc and a GPU are present; ~23 min on 2 idle cores),
   stores it in the cache (atomically) and installs it.

Every tox env runs this, so all envs share one build. Run it by hand with ``python tools/install_mmcv.py``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

MMCV_VERSION = "2.1.0"


def _say(msg: str) -> None:
    print(f"[install_mmcv] {msg}", flush=True)


def _fail(msg: str) -> None:
    print(f"[install_mmcv] ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def _import_error() -> str | None:
    """None when mmcv MMCV_VERSION and its compiled ops import here, else the reason."""
    code = (
        "import mmcv, mmcv.ops, sys; from mmcv.ops import nms; "
        f"sys.exit(0 if mmcv.__version__ == '{MMCV_VERSION}' else 3)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode} (another mmcv version?)"


def _torch_info() -> tuple[str, bool]:
    try:
        import torch
    except ImportError:
        _fail("torch is not installed in this environment; install torch==2.14.1 first.")
    want_cuda = bool(shutil.which("nvcc")) and torch.cuda.is_available()
    return torch.__version__.split("+")[0], want_cuda


def cache_dir() -> Path:
    root = os.environ.get("MPQ_CACHE_DIR")
    if root:
        return Path(root) / "wheels"
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(xdg) / "mpq" / "wheels"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def _patch_std_flags(src: Path) -> int:
    setup_py = src / "setup.py"
    text = setup_py.read_text()
    new, n = re.subn(r"-std=c\+\+1[47]", "-std=c++20", text)
    setup_py.write_text(new)
    return n


def build_wheel(dest: Path, with_cuda: bool) -> Path:
    with tempfile.TemporaryDirectory(prefix="mmcv-build-") as tmp:
        tmp = Path(tmp)
        _say(f"downloading the mmcv {MMCV_VERSION} sdist ...")
        _pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
             f"mmcv=={MMCV_VERSION}", "-d", str(tmp))
        sdists = glob.glob(str(tmp / f"mmcv-{MMCV_VERSION}.tar.gz"))
        if not sdists:
            _fail(f"pip did not download mmcv-{MMCV_VERSION}.tar.gz; check that the package index is "
                  "reachable.")
        with tarfile.open(sdists[0]) as tar:
            tar.extractall(tmp, filter="data")
        src = tmp / f"mmcv-{MMCV_VERSION}"
        n = _patch_std_flags(src)
        _say(f"raised {n} C++ standard flag(s) to -std=c++20 in setup.py")
        env = dict(os.environ, MMCV_WITH_OPS="1", MAX_JOBS=str(os.cpu_count() or 2))
        if with_cuda:
            env["FORCE_CUDA"] = "1"
        else:
            env.pop("FORCE_CUDA", None)
            env["CUDA_VISIBLE_DEVICES"] = ""  # build CPU ops only
        ops = "CPU+CUDA" if with_cuda else "CPU"
        _say(f"building the wheel ({ops} ops); this takes ~23 min on 2 idle cores ...")
        t0 = time.time()
        out = tmp / "wheel"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
               "-w", str(out), str(src)]
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            _fail(
                "building mmcv failed (see the compiler output above). Check that gcc/g++ >= 10 and the "
                "Python headers are installed, that torch==2.14.1 and ninja are installed in this "
                "environment, and that there is ~4 GB of free space in the temp directory. Then run "
                "`python tools/install_mmcv.py` again."
            )
        wheels = list(out.glob("mmcv-*.whl"))
        if not wheels:
            _fail("pip reported success but produced no mmcv wheel.")
        _say(f"built {wheels[0].name} in {time.time() - t0:.0f} s")
        dest.mkdir(parents=True, exist_ok=True)
        final = dest / wheels[0].name
        partial = dest / (wheels[0].name + ".partial")
        shutil.copy2(wheels[0], partial)
        os.replace(partial, final)  # atomic: a killed build never leaves a half wheel in the cache
        return final


def main() -> None:
    if _import_error() is None:
        _say(f"mmcv {MMCV_VERSION} with ops already installed")
        return
    torch_version, with_cuda = _torch_info()
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    key = f"mmcv-{MMCV_VERSION}-torch{torch_version}-{py}-{'cuda' if with_cuda else 'cpu'}"
    dest = cache_dir() / key
    cached = sorted(dest.glob("mmcv-*.whl"))
    wheel = cached[0] if cached else build_wheel(dest, with_cuda)
    if cached:
        _say(f"using cached wheel {wheel}")
    # mmcv's own requirements (addict, yapf, opencv, mmengine pinned as the project pins it) come from
    # the index; only mmcv itself is reinstalled from the cached wheel.
    _pip("install", "--force-reinstall", "--no-deps", str(wheel))
    _pip("install", str(wheel), "mmengine==0.10.7")
    error = _import_error()
    if error is not None:
        _fail(f"installed {wheel} but `import mmcv.ops` fails ({error}); delete {dest} and run again "
              "to rebuild.")
    _say("done")


if __name__ == "__main__":
    main()
