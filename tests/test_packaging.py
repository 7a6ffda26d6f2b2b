"""The built wheel (not the editable install) holds every file the package reads at run time
(the CPU kernel sources and headers, the workload and latency presets), installs in a fresh
venv and serves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from sliceserve.model import kernels
from tests.server_helpers import PROFILE, REPO

PACKAGE = REPO / "sliceserve"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
                    str(REPO)], check=True, timeout=600)
    return next(out.glob("sliceserve-*.whl"))


def test_the_wheel_holds_every_file_the_package_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = [p.relative_to(REPO).as_posix() for p in kernels._SOURCES]
    needed += [p.relative_to(REPO).as_posix()
               for pattern in ("data/workloads/*.json", "data/latency/*.json",
                               "model/kernels/*.h", "model/kernels/*.cpp")
               for p in PACKAGE.glob(pattern)]
    missing = sorted(set(needed) - names)
    assert not missing, f"the wheel lacks {missing}"
    assert any(n.endswith(".h") for n in needed)


def test_the_wheel_installs_in_a_fresh_venv_and_serves(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300)
    # Dependencies come from this venv (an offline machine has no index to install them from);
    # sliceserve itself only from the wheel: the editable install's finder is not loaded.
    site = Path(subprocess.check_output(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.check_output(
        [str(py), "-c", "import sliceserve.model.kernels as k; print(k.__file__); "
         "[p.read_text() for p in k._SOURCES]"], text=True, cwd=tmp_path).strip()
    assert where.startswith(str(venv)), where
    log = tmp_path / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(venv / "bin" / "sliceserve"), "serve", "--port", "0",
                                 "--latency-model", str(PROFILE), "--max-model-len", "256",
                                 "--kv-cache-memory-gb", "0.02"], stdout=f,
                                stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": ""})
    try:
        url = _wait_ready(proc, log)
        out = httpx.post(url + "/v1/completions", timeout=120, json={
            "model": "smollm2-135m", "prompt": "Hello", "max_tokens": 3}).json()
        assert out["usage"]["completion_tokens"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()
    if kernels.cpu_kernels() is not None:  # builds here: so it must from the wheel too
        assert "CPU kernels unavailable" not in log.read_text(), log.read_text()


def _wait_ready(proc: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + 600
    url = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        if url is None and "listening on " in text:
            url = text.split("listening on ")[1].split()[0]
        if url is not None:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    raise AssertionError(log.read_text())
