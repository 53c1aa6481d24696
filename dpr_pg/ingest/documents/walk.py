"""Finding the documents to ingest: files given, folders walked recursively, with globs and limits.

* A file given by name is taken when its extension is a document format. A folder is walked in
  sorted order, following symbolic links; a link that leads back into a folder being walked (a
  loop), a broken link, a link chain too long to resolve, a folder reached a second time, a
  non-regular file (FIFO, device) and an unreadable folder are each reported with their path.
* ``include`` globs choose the files (default: every document extension), ``exclude`` globs drop
  files and whole folders (default: hidden ones, and Word's ``~$`` lock files). A glob without
  ``/`` matches a name (a file's, or any folder's on the way); one with ``/`` matches the path
  relative to the folder given, and its ``*`` crosses folders.
* A file larger than ``max_bytes`` is reported unread.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dpr_pg.ingest.documents.structure import DOCUMENT_FORMATS

DEFAULT_INCLUDE = tuple(f"*{suffix}" for suffix in DOCUMENT_FORMATS)
DEFAULT_EXCLUDE = (".*", "~$*")


@dataclass(frozen=True)
class FoundFile:
    """A document to read: where it is, its name relative to the folder given (the source key), its format."""

    path: Path
    name: str
    format: str
    size: int


@dataclass
class Walk:
    """What a walk found: the documents, and the paths it could not take, with the reason."""

    files: list[FoundFile] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, name relative to its root)


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    parts = relative.split("/")
    for pattern in patterns:
        if "/" in pattern:
            if fnmatch.fnmatchcase(relative, pattern.strip("/")):
                return True
        elif any(fnmatch.fnmatchcase(part, pattern) for part in parts):
            return True
    return False


def _included(name: str, patterns: Sequence[str]) -> bool:
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name if "/" in p else base, p.strip("/")) for p in patterns)


def find_documents(roots: Sequence[str | Path], *, include: Sequence[str] = DEFAULT_INCLUDE,
                   exclude: Sequence[str] = DEFAULT_EXCLUDE, max_bytes: int) -> Walk:
    """The documents under ``roots`` (files or folders), and the paths that were refused.

    Example:
        >>> walk = find_documents(["docs"], max_bytes=64 * 2**20)  # doctest: +SKIP
        >>> [f.name for f in walk.files]                           # doctest: +SKIP
        ['guia.pdf', 'manual/instalacion.md']
    """
    walk = Walk()
    for root in map(Path, roots):
        if root.is_dir():
            try:
                identity = _identity(root)
            except OSError as e:
                walk.problems.append((str(root), f"cannot read: {e.strerror or e}", ""))
                continue
            _walk_folder(root, "", [identity], set(), walk, include, exclude, max_bytes)
        else:
            _take(root, root.name, walk, max_bytes, explicit=True)
    return walk


def _identity(path: Path) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino


def _walk_folder(folder: Path, prefix: str, ancestors: list[tuple[int, int]], seen: set[tuple[int, int]],
                 walk: Walk, include: Sequence[str], exclude: Sequence[str], max_bytes: int) -> None:
    seen.add(ancestors[-1])
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as e:
        walk.problems.append((str(folder), f"cannot list the folder: {e.strerror or e}", prefix.rstrip("/")))
        return
    for entry in entries:
        relative = prefix + entry.name
        path = Path(entry.path)
        if _matches(relative, exclude):
            continue
        try:
            found = os.stat(path)  # follows links
        except OSError as e:
            if entry.is_symlink():
                reason = ("symbolic link loop (the link leads back to itself)" if e.errno == errno.ELOOP
                          else f"broken symbolic link (to {os.readlink(path)!r})")
            else:
                reason = f"cannot read: {e.strerror or e}"
            walk.problems.append((str(path), reason, relative))
            continue
        if stat.S_ISDIR(found.st_mode):
            identity = (found.st_dev, found.st_ino)
            if identity in ancestors:
                walk.problems.append((str(path), "symbolic link loop: it leads back to a folder that contains it; "
                                                 "it was not followed", relative))
            elif identity in seen:
                walk.problems.append((str(path), "this folder was already walked under another name (a link to "
                                                 "it); it was not walked twice", relative))
            else:
                _walk_folder(path, relative + "/", [*ancestors, identity], seen, walk, include, exclude, max_bytes)
            continue
        if _included(relative, include):
            _take(path, relative, walk, max_bytes, explicit=False, found=found)


def _take(path: Path, name: str, walk: Walk, max_bytes: int, *, explicit: bool,
          found: os.stat_result | None = None) -> None:
    fmt = DOCUMENT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        expected = ", ".join(sorted(DOCUMENT_FORMATS))
        walk.problems.append((str(path), f"not a document type dpr_pg reads (extension {path.suffix or '(none)'!r}); "
                                         f"expected one of {expected}" + ("" if explicit else "; narrow --include"),
                              name))
        return
    try:
        found = found or os.stat(path)
    except OSError as e:
        reason = "symbolic link loop" if e.errno == errno.ELOOP else f"cannot read: {e.strerror or e}"
        walk.problems.append((str(path), reason, name))
        return
    if not stat.S_ISREG(found.st_mode):
        walk.problems.append((str(path), "not a regular file (a FIFO, a device or a socket); it was not read", name))
        return
    if found.st_size > max_bytes:
        walk.problems.append((str(path), f"file is {found.st_size} bytes, over the limit of {max_bytes} bytes "
                                         "(--max-document-bytes); split it, or raise the limit", name))
        return
    walk.files.append(FoundFile(path, name, fmt, found.st_size))
