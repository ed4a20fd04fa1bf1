"""Carry the build machine's pip configuration into a container build, without baking it into the image.

    python3 docker/host_pip_config.py OUTDIR MOUNT_POINT

Reads the effective configuration (`python3 -m pip config list`: files and PIP_* variables, the variables
winning) and writes OUTDIR/pip.conf with it, for the caller to mount OUTDIR at MOUNT_POINT and point
PIP_CONFIG_FILE at MOUNT_POINT/pip.conf. Files it names (a CA bundle, a constraints file) are copied into OUTDIR;
folders it names (find-links folders, the tree of a file:// index) get a mount point MOUNT_POINT/dir<N> (created
empty in OUTDIR), printed as "FOLDER<TAB>MOUNT_POINT/dir<N>" lines for the caller to mount read-only. Every setting
is rewritten to the paths inside, so nothing of this machine's layout shows in the image. Writes an empty
pip.conf and prints nothing when pip has no configuration (or is not installed).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

# Settings that name the machine's own files or folders for pip's own use, meaningless in a container.
SKIPPED = {"cache-dir", "log", "target", "prefix", "root", "src", "user", "build", "no-cache-dir"}
FILE_KEYS = {"cert", "client-cert", "constraint", "requirement"}
LOCATION_KEYS = {"find-links", "index-url", "extra-index-url"}


def read_config() -> dict[str, dict[str, str]]:
    """The effective settings by section ("global", "install", ...), PIP_* variables over files."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    files: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, raw = line.partition("=")
        section, dot, key = name.rpartition(".")
        if not sep or not dot:
            continue
        value = str(ast.literal_eval(raw))
        if section == ":env:":
            env[key] = value
        else:
            files.setdefault(section, {})[key] = value
    files.setdefault("global", {}).update(env)
    return {s: {k: v for k, v in kv.items() if k not in SKIPPED} for s, kv in files.items() if kv}


def local_folder(location: str) -> tuple[Path, str] | None:
    """(folder to mount, location relative to it) for a local find-links or index location; None for a remote one."""
    if location.startswith("file:"):
        path = Path(urlparse(location).path)
        # A PEP 503 tree keeps its files next to simple/ (links like ../../files/...): mount the whole tree.
        return (path.parent, path.name) if path.name == "simple" else (path, "")
    if location.startswith("/"):
        return Path(location), ""
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: host_pip_config.py OUTDIR MOUNT_POINT", file=sys.stderr)
        return 2
    outdir, mount_point = Path(argv[0]), argv[1]
    folders: dict[Path, str] = {}

    def inside(location: str) -> str:
        local = local_folder(location)
        if local is None or not local[0].is_dir():
            return location
        folder, rest = local
        if folder not in folders:
            folders[folder] = f"{mount_point}/dir{len(folders)}"
            (outdir / f"dir{len(folders) - 1}").mkdir()
        path = f"{folders[folder]}/{rest}".rstrip("/")
        return f"file://{path}" if location.startswith("file:") else path

    lines: list[str] = []
    for section, settings in read_config().items():
        lines.append(f"[{section}]")
        for key, value in settings.items():
            if key in FILE_KEYS and Path(value).is_file():
                copy = outdir / f"{key}-{Path(value).name}"
                shutil.copyfile(value, copy)
                value = f"{mount_point}/{copy.name}"
            elif key in LOCATION_KEYS:
                value = " ".join(inside(location) for location in value.split())
            lines.append(f"{key} = {value}")
    (outdir / "pip.conf").write_text("\n".join(lines) + "\n" if lines else "")
    for folder, target in folders.items():
        print(f"{folder}\t{target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
