"""The package as a user gets it: the wheel, installed into a new virtual environment.

The wheel is built from a copy of the files a source distribution holds
(pyproject.toml, README.md, LICENSE, src/), so nothing else of the work tree
can stand in for a missing package file. It is installed with this project's
pins (constraints.txt); pip reuses its cache, so only a cold cache downloads.
Then ``agentcast serve`` from that environment must serve the page and be
ready, and stop in order on SIGTERM.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import agentcast
from tests.e2e.harness import clean_env, free_port
from tests.utils import MS, seconds

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "agentcast"
#: Building the wheel, and installing it with its dependencies.
BUILD_TIMEOUT_S = seconds(120.0)
INSTALL_TIMEOUT_S = seconds(120.0)
#: Until the server answers ``/readyz`` with 200; until it exits once told to.
START_TIMEOUT_S = seconds(30.0)
EXIT_TIMEOUT_S = seconds(20.0)
REQUEST_TIMEOUT_S = seconds(10.0)


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _env() -> dict[str, str]:
    """The tests' environment, without anything that would import the work tree's code."""
    env = clean_env()
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "COV_CORE_SOURCE", "COV_CORE_CONFIG"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the source distribution's files."""
    tmp = tmp_path_factory.mktemp("package")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    dist = tmp / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), "."],
        cwd=source,
        timeout=BUILD_TIMEOUT_S,
    )
    (built,) = dist.glob("agentcast-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Path:
    """A new virtual environment with the wheel and its pinned dependencies."""
    venv = wheel.parent.parent / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=wheel.parent, timeout=INSTALL_TIMEOUT_S)
    _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "-c", str(ROOT / "constraints.txt"), str(wheel)],
        cwd=wheel.parent,
        timeout=INSTALL_TIMEOUT_S,
    )  # fmt: skip
    return venv


def test_wheel_holds_the_page_the_data_and_the_license(wheel: Path) -> None:
    version = agentcast.__version__
    assert wheel.name.startswith(f"agentcast-{version}-py3-none-any")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"agentcast-{version}.dist-info/METADATA").decode()
    expected = {
        f"agentcast/{path.relative_to(PACKAGE).as_posix()}"
        for pattern in ("web/*", "agents/builtin/data/*.csv")
        for path in PACKAGE.glob(pattern)
        if path.is_file()
    }
    assert any(name.endswith(".csv") for name in expected)
    assert {"agentcast/web/index.html", "agentcast/py.typed"} <= names
    assert expected <= names, sorted(expected - names)
    assert f"agentcast-{version}.dist-info/licenses/LICENSE" in names
    assert f"\nVersion: {version}\n" in metadata
    assert "\nLicense-Expression: Apache-2.0\n" in metadata


@contextlib.contextmanager
def _serving(
    venv: Path, data_dir: Path, log_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    agentcast_bin = str(venv / "bin" / "agentcast")
    help_text = _run(
        [agentcast_bin, "serve", "--help"], cwd=data_dir.parent, timeout=START_TIMEOUT_S
    )
    # A later version asks for --dev to serve the development token; pass it only if known.
    dev = ["--dev"] if re.search(r"--dev(?![\w-])", help_text.stdout) else []
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [agentcast_bin, "serve", "--port", str(port), "--data-dir", str(data_dir), *dev],
            cwd=data_dir.parent,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=EXIT_TIMEOUT_S)


def test_installed_server_serves_the_page_and_stops_on_sigterm(venv: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with _serving(venv, tmp_path / "data", log_path) as (url, proc):
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, (
                f"server exited with {proc.returncode}:\n{log_path.read_text()}"
            )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=seconds(1.0)).status_code == 200:
                    break
            assert time.monotonic() < deadline, (
                f"not ready after {START_TIMEOUT_S}s:\n{log_path.read_text()}"
            )
            time.sleep(50 * MS)

        page = httpx.get(f"{url}/", timeout=REQUEST_TIMEOUT_S)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "agentcast" in page.text

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=EXIT_TIMEOUT_S) == 0, log_path.read_text()


def test_installed_package_is_the_wheel(venv: Path, tmp_path: Path) -> None:
    python = str(venv / "bin" / "python")
    code = "import agentcast; print(agentcast.__file__); print(agentcast.__version__)"
    where, version = _run(
        [python, "-c", code], cwd=tmp_path, timeout=START_TIMEOUT_S
    ).stdout.split()
    assert Path(where).is_relative_to(venv)
    assert version == agentcast.__version__
