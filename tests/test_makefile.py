"""The Makefile's torch choice: the CPU build without a CUDA GPU, a CUDA build with one, TORCH= overrides.

`make torch` runs with pip in dry-run mode (``--dry-run --report``) against stand-in indexes on local
disk: "PyPI" holds torch X (PyPI's Linux wheel is the CUDA build), "PyTorch's CPU index" holds X+cpu,
and a local wheel folder (pip's find-links) may hold X+cpu too. A fake ``nvidia-smi`` says whether
the machine has a GPU. So the test checks the Makefile's rule with pip's own resolver, offline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSION = "2.13.0"


def _wheel(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("torch/__init__.py", "")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", f"torch/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def _index(root: Path, version: str) -> str:
    """A PEP 503 "simple" index on disk holding one torch wheel; returns its file:// URL."""
    wheel = _wheel(root / "files", version)
    page = root / "simple" / "torch" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<a href="../../files/{quote(wheel.name)}">{wheel.name}</a>\n')
    return (root / "simple").as_uri()


@pytest.fixture
def machine(tmp_path: Path):
    """Run `make torch` in dry-run on a stand-in machine; returns the torch pip would install."""
    pypi = _index(tmp_path / "pypi", VERSION)
    cpu_index = _index(tmp_path / "cpu-index", f"{VERSION}+cpu")
    local = tmp_path / "local-wheels"
    _wheel(local, f"{VERSION}+cpu")

    def run(*, gpu: bool, local_wheels: bool, make_args: tuple[str, ...] = ()) -> tuple[str, str]:
        bin_dir = tmp_path / ("bin-gpu" if gpu else "bin-cpu")
        bin_dir.mkdir(exist_ok=True)
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n" if gpu else
                       "#!/bin/sh\necho 'NVIDIA-SMI has failed: no NVIDIA driver' >&2\nexit 9\n")
        smi.chmod(0o755)
        report = tmp_path / "report.json"
        report.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "MAKE"))}
        env |= {"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "PIP_CONFIG_FILE": os.devnull,
                "PIP_INDEX_URL": pypi, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
        if local_wheels:
            env["PIP_FIND_LINKS"] = str(local)
        pip = f"{sys.executable} -m pip install --quiet --dry-run --ignore-installed --report {report}"
        result = subprocess.run(
            ["make", "-s", "-C", str(ROOT), "torch", "HAS_TORCH=false", f"PIP_INSTALL={pip}",
             f"TORCH_CPU_INDEX={cpu_index}", *make_args],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert result.returncode == 0, result.stderr
        (item,) = json.loads(report.read_text())["install"]
        return item["metadata"]["version"], item["download_info"]["url"]

    return run


def test_without_a_gpu_the_cpu_build_comes_from_pytorchs_cpu_index(machine) -> None:
    version, url = machine(gpu=False, local_wheels=False)
    assert version == f"{VERSION}+cpu"
    assert "/cpu-index/" in url


def test_without_a_gpu_a_local_cpu_wheel_is_taken_first(machine) -> None:
    version, url = machine(gpu=False, local_wheels=True)
    assert version == f"{VERSION}+cpu"
    assert "/local-wheels/" in url


def test_with_a_gpu_pypis_build_is_taken_even_beside_a_local_cpu_wheel(machine) -> None:
    version, url = machine(gpu=True, local_wheels=True)
    assert version == VERSION
    assert "/pypi/" in url


def test_torch_and_torch_index_override_the_choice(machine) -> None:
    # pip alone chooses: PyPI's build (its local-wheel step is skipped too).
    version, url = machine(gpu=False, local_wheels=False, make_args=("TORCH=torch", "TORCH_INDEX="))
    assert (version, "/pypi/" in url) == (VERSION, True)
    version, url = machine(gpu=False, local_wheels=False, make_args=(f"TORCH=torch=={VERSION}",))
    assert (version, "/cpu-index/" in url) == (f"{VERSION}+cpu", True)


def test_the_default_cpu_command_names_pytorchs_cpu_index() -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no nvidia-smi
    shown = subprocess.run(["make", "-n", "-C", str(ROOT), "torch", "HAS_TORCH=false"],
                           capture_output=True, text=True, env=env, check=True).stdout
    assert '--no-index --no-deps "torch==2.13.0+cpu"' in shown
    assert '--extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"' in shown


def test_make_installs_the_package_of_the_trained_extra_without_its_requirements() -> None:
    import re

    extra = re.findall(r'^trained = \["([^"]+)"\]$', (ROOT / "pyproject.toml").read_text(), flags=re.M)
    assert len(extra) == 1
    shown = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "install", "HAS_TORCH=true"],
                           capture_output=True, text=True, check=True).stdout
    assert f'pip install --quiet --no-deps "{extra[0]}"' in shown


def test_make_installs_ray_for_the_tests_of_ingest_on_ray() -> None:
    # tests/test_ingest_ray.py starts a one-CPU Ray here: without the extra they fail, they never skip.
    shown = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "install", "HAS_TORCH=true"],
                           capture_output=True, text=True, check=True).stdout
    extras = re.findall(r'pip install --quiet -e "\.\[([a-z,]+)\]"', shown)
    assert len(extras) == 1 and "ray" in extras[0].split(",") and "test" in extras[0].split(",")


def test_make_installs_the_docs_extra_whose_site_the_tests_build() -> None:
    # tests/test_docs_site.py runs `mkdocs build --strict`: without the extra it fails, it never skips.
    shown = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "install", "HAS_TORCH=true"],
                           capture_output=True, text=True, check=True).stdout
    extras = re.findall(r'pip install --quiet -e "\.\[([a-z,]+)\]"', shown)
    assert len(extras) == 1 and "docs" in extras[0].split(",")
