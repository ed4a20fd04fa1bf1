"""The Docker files stay consistent with the Makefile, the project's Python version and each other.

`make docker-test` is not part of `make test` (it takes minutes and needs root and a container engine); these
checks keep docker/ from rotting silently in between: targets, stage names, paths, Python version, packages.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "netagg.Dockerfile"
SCRIPTS = ("run-tests.sh", "build-base.sh", "engine.sh")


def _makefile() -> str:
    return (REPO / "Makefile").read_text()


def _make_targets() -> dict[str, str]:
    """Makefile target -> its recipe (the tab-indented lines under it)."""
    targets: dict[str, str] = {}
    current = None
    for line in _makefile().splitlines():
        if line.startswith("\t") and current is not None:
            targets[current] += line.strip() + "\n"
            continue
        m = re.match(r"^([A-Za-z0-9_.$()/-]+):(?!=)", line)
        current = m.group(1).replace("$(VENV)", ".venv") if m else None
        if current is not None:
            targets.setdefault(current, "")
    return targets


def _stages() -> dict[str, str]:
    """Dockerfile stage name -> its instructions (continuation lines joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    stages: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"^FROM\s+\S+\s+AS\s+(\S+)", line)
        if m:
            name = m.group(1)
            stages[name] = ""
        elif name is not None and line and not line.startswith("#"):
            stages[name] += line + "\n"
    return stages


def _python_version() -> str:
    """The one minor version pyproject.toml allows (">=3.11,<3.12" -> "3.11")."""
    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    m = re.fullmatch(r">=(3)\.(\d+),<3\.(\d+)", spec.replace(" ", ""))
    assert m and int(m.group(3)) == int(m.group(2)) + 1, f"requires-python {spec!r} is not one minor version"
    return f"3.{m.group(2)}"


def test_make_targets_run_the_docker_scripts() -> None:
    targets = _make_targets()
    phony = re.search(r"^\.PHONY:(.*)$", _makefile(), re.M)
    assert phony is not None
    for target, script in (("docker-base", "docker/build-base.sh"), ("docker-test", "docker/run-tests.sh")):
        assert target in targets, f"the Makefile has no {target} target"
        assert script in targets[target], f"make {target} does not run {script}"
        assert target in phony.group(1).split(), f"{target} is not .PHONY"
    # Not part of the default suite: `make test` must not build images.
    assert "docker" not in targets["test"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script: str) -> None:
    path = DOCKER / script
    if script != "engine.sh":  # sourced, not run
        assert os.access(path, os.X_OK), f"docker/{script} is not executable"
    bash = shutil.which("bash")
    assert bash is not None
    run = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr


def test_stages_the_script_builds_exist() -> None:
    stages = _stages()
    assert {"softswitch", "bmv2", "p4c-check"} <= set(stages)
    script = (DOCKER / "run-tests.sh").read_text()
    built = set(re.findall(r'build_stage ([a-z0-9-]+) "', script))
    assert built == {"softswitch", "bmv2", "p4c-check"}, built
    assert f'-f "$here/{DOCKERFILE.name}"' in script
    # Every test stage's default command is the script's inside mode.
    for name in ("softswitch", "bmv2"):
        assert 'CMD ["bash", "docker/run-tests.sh", "--inside"]' in stages[name], name


def test_softswitch_stage_installs_with_the_makefile() -> None:
    stage = _stages()["softswitch"]
    targets = _make_targets()
    used = re.findall(r"(?:^RUN|&&)\s+make ([A-Za-z0-9_./-]+)", stage, re.M)
    assert {"deb", ".venv/.installed", "install"} <= set(used), used
    for target in used:
        assert target in targets, f"the softswitch stage runs `make {target}`, which the Makefile lacks"
    # A bare Debian has neither make nor the venv module that `make venv` uses.
    apt = re.search(r"apt-get install [^&]*", stage)
    assert apt is not None
    assert {"make", "python3", "python3-venv"} <= set(apt.group(0).split())


def test_python_versions_match_pyproject() -> None:
    version = _python_version()
    stages = _stages()
    # The softswitch stage uses Debian 12's python3, which is 3.11; its base must be bookworm.
    assert re.search(r"^ARG DEBIAN_IMAGE=\S+:bookworm$", DOCKERFILE.read_text(), re.M)
    assert version == "3.11", "Debian 12 ships Python 3.11: move the softswitch stage's base with requires-python"
    assert f"uv venv --seed --python {version} " in stages["bmv2"]
    base = (DOCKER / "build-base.sh").read_text()
    assert "debootstrap --variant=minbase bookworm " in base


def test_bmv2_stage_has_the_makefiles_debian_packages() -> None:
    deb = re.search(r"^DEB_PACKAGES := (.*)$", _makefile(), re.M)
    assert deb is not None
    apt = re.search(r"apt-get install [^&]*", _stages()["bmv2"])
    assert apt is not None
    # python3-dev, python3-venv: the virtualenv's Python is uv's standalone build, which carries its own headers
    # and venv module.
    missing = set(deb.group(1).split()) - set(apt.group(0).split()) - {"python3-dev", "python3-venv"}
    assert not missing, f"the bmv2 stage does not install {sorted(missing)} (the Makefile's DEB_PACKAGES)"


def test_paths_the_files_name_exist() -> None:
    for stage in _stages().values():
        for line in stage.splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                sources = line.split()[1:-1]
                for src in sources:
                    if src != ".":
                        assert (REPO / src).exists(), f"the Dockerfile copies {src}, which is missing"
    script = (DOCKER / "run-tests.sh").read_text()
    for folder in re.findall(r"pytest -q -rs (tests/\S+)", script):
        assert (REPO / folder).is_dir(), folder
    assert "mininet-demo" in _make_targets()
    assert "make --no-print-directory mininet-demo" in script
    torch = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("torch==")]
    assert len(torch) == 1, "the Dockerfile installs torch's CPU build from the one `torch==` line"


def test_ignore_file_and_base_image_names_agree() -> None:
    ignore = DOCKER / f"{DOCKERFILE.name}.dockerignore"  # where BuildKit looks for it
    patterns = set(ignore.read_text().split())
    assert {".git", ".venv", "**/*.so"} <= patterns
    script = (DOCKER / "run-tests.sh").read_text()
    assert f'--ignorefile "$here/{ignore.name}"' in script
    base_default = re.search(r"image=\$\{1:-(\S+)\}", (DOCKER / "build-base.sh").read_text())
    assert base_default is not None
    assert f"image_exists {base_default.group(1)}" in script
    assert f"base={base_default.group(1)}" in script


def _host_pip_config() -> ModuleType:
    spec = importlib.util.spec_from_file_location("host_pip_config", DOCKER / "host_pip_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_host_pip_config_rewrites_files_and_lists_local_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = _host_pip_config()
    ca = tmp_path / "ca.crt"
    ca.write_text("CERT\n")
    wheels = tmp_path / "wheels"
    (tmp_path / "mirror" / "simple").mkdir(parents=True)
    wheels.mkdir()
    listing = "\n".join(
        [
            f"global.cert='{ca}'",
            "global.find-links='/nonexistent'",
            f"global.extra-index-url='file://{tmp_path}/mirror/simple https://example.org/simple'",
            f"global.cache-dir='{tmp_path}/cache'",
            f":env:.find-links='{wheels}'",
            "install.timeout='60'",
        ]
    )
    monkeypatch.setattr(
        module.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=listing + "\n")
    )
    out = tmp_path / "out"
    out.mkdir()
    assert module.main([str(out), "/run/cfg"]) == 0
    conf = (out / "pip.conf").read_text()
    assert "cert = /run/cfg/cert-ca.crt" in conf and (out / "cert-ca.crt").read_text() == "CERT\n"
    # Local folders are mounted under the mount point, the settings rewritten to them; remote ones stay.
    mounts = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert set(mounts) == {str(tmp_path / "mirror"), str(wheels)}
    assert all((out / Path(target).name).is_dir() for target in mounts.values())
    assert f"find-links = {mounts[str(wheels)]}\n" in conf  # the variable wins over the file
    mirror = mounts[str(tmp_path / "mirror")]
    assert f"extra-index-url = file://{mirror}/simple https://example.org/simple\n" in conf
    assert str(tmp_path) not in conf
    assert "cache-dir" not in conf
    assert "[install]\ntimeout = 60" in conf


def test_host_pip_config_empty_without_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _host_pip_config()
    monkeypatch.setattr(module.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=""))
    assert module.main([str(tmp_path), "/run/cfg"]) == 0
    assert (tmp_path / "pip.conf").read_text() == ""


def test_pip_stages_take_the_mounted_pip_configuration() -> None:
    script = (DOCKER / "run-tests.sh").read_text()
    passed = re.search(r"--build-arg PIP_CONFIG_FILE=(\S+)", script)
    assert passed is not None
    stages = _stages()
    for name in ("softswitch", "bmv2"):
        assert "ARG PIP_CONFIG_FILE\n" in stages[name], f"the {name} stage ignores the mounted pip configuration"
