"""The running warmfront's version: what `warmfront --version` prints and /metrics' build info carries."""
from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def version() -> str:
    """The installed warmfront's version; in a checkout that was never installed, pyproject.toml's."""
    try:
        return metadata.version("warmfront")
    except metadata.PackageNotFoundError:
        pass
    try:
        with PYPROJECT.open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0+unknown"
