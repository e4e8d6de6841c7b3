"""The files a corpus registration names: one file, a directory (a Parquet dataset, a folder of
JSONL shards), or a glob, on a local disk or in an object store (`s3://bucket/cc/2024-*/*.jsonl.zst`).

Globs follow the shell: `*` and `?` stay within one path segment, `**` crosses segments, `[…]` is a
character class. A directory is listed recursively; names starting with `.` or `_` (`_SUCCESS`,
`_common_metadata`, temporaries) are skipped there, as Spark and pyarrow do.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

MAGIC_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class InputFile:
    uri: str      # what a worker opens (pyarrow.fs.FileSystem.from_uri), query options kept
    path: str     # the path inside its filesystem
    size: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def to_dict(self) -> dict:
        return asdict(self)


def split_uri(uri: str) -> tuple[str, str, str]:
    """(scheme, path, query) of a URI or plain local path; a local path comes back absolute."""
    if "://" not in uri:
        return "file", os.path.abspath(uri), ""
    scheme, rest = uri.split("://", 1)
    path, _, query = rest.partition("?")
    if scheme == "file":
        path = os.path.abspath(path)
    return scheme, path, query


def join_uri(scheme: str, path: str, query: str) -> str:
    if scheme == "file":
        return "file://" + path
    return f"{scheme}://{path}" + (f"?{query}" if query else "")


def fixed_prefix(path: str) -> str:
    """The directory part of a glob before its first wildcard (the whole path when it has none)."""
    match = MAGIC_CHARS.search(path)
    if not match:
        return path
    return path[:match.start()].rsplit("/", 1)[0] or "/"


def glob_regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            if pattern.startswith("/", i):   # `a/**/b` also matches `a/b`
                out[-1] = "(?:.*/)?"
                i += 1
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def _hidden(path: str, base: str) -> bool:
    rel = path[len(base):].strip("/")
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def list_inputs(uri: str) -> list[InputFile]:
    """The files `uri` names, sorted by path (an empty list when it matches nothing).
    Raises OSError / ValueError when the filesystem cannot be reached or the URI is malformed."""
    scheme, path, query = split_uri(uri)
    if "\x00" in path:
        raise ValueError("the path holds a NUL byte")
    fs = pafs.LocalFileSystem() if scheme == "file" else \
        pafs.FileSystem.from_uri(join_uri(scheme, fixed_prefix(path) or path, query))[0]
    if MAGIC_CHARS.search(path):
        base, pattern = fixed_prefix(path), glob_regex(path)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        found = [i for i in infos if i.type == pafs.FileType.File and pattern.fullmatch(i.path)]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            found = [info]
        elif info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            found = [i for i in infos if i.type == pafs.FileType.File and not _hidden(i.path, path)]
        else:
            found = []
    return sorted((InputFile(join_uri(scheme, i.path, query), i.path, i.size) for i in found),
                  key=lambda f: f.path)
