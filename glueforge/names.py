"""Names that become paths or object keys, checked where they enter.

Model, weight and target keys (models.yaml and its overlays), versions, channels, store prefixes,
pull's arguments and the file names a manifest lists all end up as path components under a root
(the artifacts, a store, ``--dest``) or as parts of an S3 key. Each is checked where it enters,
and every path built from them is checked again to resolve under its root, so that no spelling
(``..``, a separator, an absolute path, a drive, a NUL) can reach outside it. A refusal raises
:class:`UnsafeName` with one line naming the value and where it came from; nothing is written.
Standard library only (the pull-only install uses it).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from glueforge import GlueforgeError

# a letter or digit, then letters, digits, '.', '_', '-': never '.', '..', empty, a separator, or a leading '-' that
# a command line would read as an option
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"


class UnsafeName(GlueforgeError):
    """A name that would become a path or key outside its root, or is not a plain name."""


def safe_name(value: object, what: str) -> str:
    """``value`` if it is one plain path component (``NAME``, not ``..``); else :class:`UnsafeName` naming ``what``."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
        raise UnsafeName(f"{what} {value!r} is not a safe name ({RULE}, no '..')")
    return value


def safe_version(value: object, what: str = "version") -> str:
    """``value`` if it is a PEP 440 version written as one path component (``1.2.0``, ``1.2.0+jetson``, ``1!2.0``)."""
    from packaging.version import InvalidVersion, Version

    try:
        Version(value)  # type: ignore[arg-type]
    except (InvalidVersion, TypeError):
        raise UnsafeName(f"{what} {value!r} is not a PEP 440 version") from None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+!-]*", value) or ".." in value:  # type: ignore[arg-type]
        raise UnsafeName(f"{what} {value!r} is not a safe name")
    return value  # type: ignore[return-value]


def safe_relative(value: object, what: str) -> str:
    """``value`` if it is a relative POSIX path of safe names (a bundle's file, ``dir/file.onnx``)."""
    if not isinstance(value, str) or value in ("", ".") or value != str(PurePosixPath(value)) or value.startswith("/") or "\\" in value:
        raise UnsafeName(f"{what} {value!r} is not a relative path of safe names")
    for part in PurePosixPath(value).parts:
        safe_name(part, f"{what} {value!r}: part")
    return value


def within(root: Path, *parts: str, what: str = "path") -> Path:
    """``root/parts...``, refused unless it resolves under ``root`` (a symbolic link out of it included)."""
    path = Path(root).joinpath(*parts)
    base = Path(root).resolve()
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafeName(f"{what} {path} resolves to {resolved}, outside {base}")
    return path
