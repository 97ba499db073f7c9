"""Packaging a user can trust: license, version and classifiers in the metadata,
the LICENSE file shipped, and `securefl --version`."""

import subprocess
import sys
import tomllib
from importlib.metadata import metadata, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_file_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_pyproject_declares_spdx_license_and_classifiers():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX expression, matching LICENSE
    assert project["license-files"] == ["LICENSE"]
    # SPDX `license` and `license-files` need setuptools >= 77 to build
    requires = PYPROJECT["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77 for r in requires)
    classifiers = project["classifiers"]
    assert any(c.startswith("Programming Language :: Python :: 3") for c in classifiers)
    assert not any(c.startswith("License ::") for c in classifiers)  # superseded by the SPDX expression
    # the plug-in commands stay declared
    assert "attack.poison" in PYPROJECT["project"]["entry-points"]["securefl.commands"]


def test_installed_metadata_shows_license_and_version():
    meta = metadata("securefl")
    assert version("securefl") == PYPROJECT["project"]["version"]
    assert meta["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in (meta.get_all("License-File") or [])
    assert set(PYPROJECT["project"]["classifiers"]) <= set(meta.get_all("Classifier") or [])


def test_version_command():
    out = subprocess.run(
        [sys.executable, "-m", "securefl", "--version"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == f"securefl {PYPROJECT['project']['version']}"


def test_readme_setup_commands_unchanged_and_cpu_torch_documented():
    readme = (ROOT / "README.md").read_text()
    assert (
        "python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . && .venv/bin/securefl demo" in readme
    )
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme
