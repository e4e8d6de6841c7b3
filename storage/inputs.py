"""The files a tenant names (a corpus registration, a model folder), and the one gate every open
of such a file goes through.

A registration names one file, a directory (a Parquet dataset, a folder of JSONL shards), or a
glob, on a local disk or in an object store (`s3://bucket/cc/2024-*/*.jsonl.zst`). Globs follow the
shell: `*` and `?` stay within one path segment, `**` crosses segments, `[…]` is a character class.
A directory is listed recursively; names starting with `.` or `_` (`_SUCCESS`, `_common_metadata`,
temporaries) are skipped there, as Spark and pyarrow do.

The rule for paths (`Access`): a path a tenant names is checked where it is opened, not only where
it was accepted, since the file may change in between (a queued job opens it minutes later). A local
file is resolved (symbolic links followed) when it is opened and must then lie under an allowed root
and outside the server's own folders (its store and home); it is opened component by component
without following links, so that a link swapped in after the check fails the open instead of
leading elsewhere. An object-store URI takes its endpoint, scheme and credentials from the allowed
root it lies under, never from the tenant's URI. Listings follow links into directories under the
roots, each real directory once (a link cycle ends there), never enter the server's folders, and are
bounded in files and time.
"""
from __future__ import annotations

import io
import os
import re
import stat
import time
from dataclasses import asdict, dataclass
from urllib.parse import parse_qsl

import pyarrow.fs as pafs

from storage.errors import DomainError
from storage.fs import bounded, default_timeout_s

MAGIC_CHARS = re.compile(r"[*?\[]")
ROOTS_SETTING = "THRESHER_ALLOWED_ROOTS"


@dataclass(frozen=True)
class InputFile:
    uri: str      # as the tenant would name it (their query options, not the root's); opened through Access
    path: str     # the path inside its filesystem
    size: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def to_dict(self) -> dict:
        return asdict(self)


def split_uri(uri: str) -> tuple[str, str, str]:
    """(scheme, path, query) of a URI or plain local path; a local path comes back absolute (a `?`
    in it is a glob character, not a query)."""
    if "://" not in uri:
        return "file", os.path.abspath(uri), ""
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        return scheme, os.path.abspath(rest), ""
    path, _, query = rest.partition("?")
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
    """The glob as a regular expression; a malformed one (`[z-a]`, `[]`) raises DomainError."""
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
                negate = body.startswith(("!", "^"))
                # Every character literal but the ranges' `-`: a class cannot smuggle in regex syntax.
                chars = "".join(ch if ch == "-" else re.escape(ch) for ch in body[negate:])
                out.append("[" + ("^" if negate else "") + chars + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out))
    except re.error as e:
        raise DomainError("bad_glob", f"the glob {pattern!r} is malformed: {e.msg} (a character class "
                          "like [a-z] needs its range in order and at least one character)",
                          {"field": "uri"}) from None


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def _local(uri: str) -> str | None:
    """The absolute local path of a plain path or file:// URI; None for any other scheme."""
    if "://" not in uri:
        return os.path.abspath(uri)
    return os.path.abspath(uri[len("file://"):]) if uri.startswith("file://") else None


def _forbidden(shown: str, file: str | None = None) -> DomainError:
    return DomainError("forbidden_uri", f"{shown} is not under an allowed root ({ROOTS_SETTING}), or leads "
                       "out of it through a symbolic link", {"field": "uri", **({"file": file} if file else {})})


@dataclass(frozen=True)
class Access:
    """What a tenant's paths may reach: under one of `roots` (THRESHER_ALLOWED_ROOTS: local
    directories, or object-store prefixes that carry their endpoint and credential options), never
    under `private` (the server's store and home). Small and picklable: the service hands it to
    every task that opens a tenant's path."""
    roots: tuple[str, ...] = ()
    private: tuple[str, ...] = ()

    # -- local paths ------------------------------------------------------------------------
    def _real_bases(self, entries) -> list[str]:
        return [os.path.realpath(p) for p in map(_local, entries) if p is not None]

    def is_private(self, real: str) -> bool:
        return any(_under(real, p) for p in self._real_bases(self.private))

    def allows(self, real: str) -> bool:
        """Whether a resolved local path may be read on a tenant's behalf."""
        return not self.is_private(real) and any(_under(real, r) for r in self._real_bases(self.roots))

    def check_local(self, path: str, shown: str | None = None) -> str:
        """The real path of `path` (links resolved now); DomainError if it may not be read."""
        if "\x00" in path:
            raise DomainError("bad_uri", "the path holds a NUL byte", {"field": "uri"})
        real = os.path.realpath(path)
        if not self.allows(real):
            raise _forbidden(shown or path)
        return real

    def open_local(self, path: str, shown: str | None = None) -> io.FileIO:
        """A tenant's local file, opened for reading: resolved and checked now, then opened from
        the filesystem root one component at a time without following any link, so that a link
        swapped in since the check makes the open fail rather than lead elsewhere. Only a regular
        file is opened (a FIFO would block the reader forever). Messages name `shown` (what the
        tenant named), never the target of a link."""
        shown = shown or path
        real = self.check_local(path, shown)
        try:
            fd = _open_no_links(real)
        except FileNotFoundError:
            raise DomainError("file_not_found", f"no file at {shown}", {"file": shown}) from None
        except OSError as e:   # ELOOP / ENOTDIR: a link appeared on the way since the check
            raise DomainError("forbidden_uri", f"{shown} changed while it was opened (a symbolic link "
                              f"appeared on its path: {os.strerror(e.errno or 0)}); nothing was read",
                              {"field": "uri", "file": shown}) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise DomainError("not_a_file", f"{shown} is not a regular file", {"file": shown})
        os.set_blocking(fd, True)
        return io.FileIO(fd, "rb", closefd=True)

    # -- object stores ----------------------------------------------------------------------
    def resolve_remote(self, uri: str, shown: str | None = None) -> str:
        """The URI to open for a tenant's object-store URI: its path under an allowed root, with
        that root's query options. Options in the tenant's URI (endpoint_override, scheme,
        access_key, …) must equal the root's: they would otherwise point the service's credentials
        at any address, or choose the credentials it uses."""
        shown = shown or uri.split("?", 1)[0]
        scheme, path, query = split_uri(uri)
        if any(part in ("", ".", "..") for part in path.rstrip("/").split("/")):
            raise DomainError("bad_uri", f"{shown}: an object-store path has no empty, '.' or '..' segments",
                              {"field": "uri"})
        given = parse_qsl(query, keep_blank_values=True)
        if len({k for k, _ in given}) != len(given):
            raise DomainError("bad_uri", f"{shown}: an option is given twice", {"field": "uri"})
        under = [(r_query, dict(parse_qsl(r_query, keep_blank_values=True)))
                 for r_scheme, r_path, r_query in (split_uri(r) for r in self.roots if _local(r) is None)
                 if r_scheme == scheme and _under(path.rstrip("/"), r_path.rstrip("/"))]
        if not under or any(_under(path.rstrip("/"), p.rstrip("/"))
                            for s, p, _ in (split_uri(x) for x in self.private if _local(x) is None) if s == scheme):
            raise _forbidden(shown)
        for r_query, options in under:
            if all(options.get(k) == v for k, v in given):
                return join_uri(scheme, path, r_query)
        option = next(k for k, v in given if under[0][1].get(k) != v)
        raise DomainError("uri_option_not_allowed", f"{shown}: the option {option!r} is not the allowed root's; "
                          f"an object store's endpoint, scheme and credentials come from {ROOTS_SETTING}, "
                          "not from the URI (leave the option out)", {"field": "uri", "option": option})

    def remote_file(self, uri: str, shown: str | None = None) -> tuple[pafs.FileSystem, str]:
        """The filesystem and path of a tenant's object-store URI, each request bounded in time like
        the store's (THRESHER_STORAGE_TIMEOUT_S): a frozen server fails a listing or a read, it does
        not hold a worker for pyarrow's 99 s per call."""
        fs, path = pafs.FileSystem.from_uri(self.resolve_remote(uri, shown))
        return bounded(fs, default_timeout_s()), path

    # -- what a registration names ------------------------------------------------------------
    def check_uri(self, uri: str) -> None:
        """Refuse, before anything is listed, a URI whose fixed part is not readable, whose options
        are not its root's, or whose glob is malformed (DomainError)."""
        scheme, path, query = split_uri(uri)
        if "\x00" in path:
            raise DomainError("bad_uri", "the path holds a NUL byte", {"field": "uri"})
        if MAGIC_CHARS.search(path):
            glob_regex(path)
        if scheme == "file":
            self.check_local(fixed_prefix(path), uri)
        else:
            self.resolve_remote(join_uri(scheme, fixed_prefix(path), query), uri.split("?", 1)[0])


def _open_no_links(real: str) -> int:
    """An fd of the file at `real` (an absolute path without links), opened one component at a
    time with O_NOFOLLOW: any link on the way fails with ELOOP (or ENOTDIR)."""
    search = getattr(os, "O_PATH", os.O_RDONLY)   # O_PATH: directories need no read permission
    fd = os.open("/", search | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = [p for p in real.split("/") if p]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = (os.O_RDONLY | os.O_NONBLOCK) if last else (search | os.O_DIRECTORY)
            nxt = os.open(part, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


class _Listing:
    """One bounded walk: at most `max_files` files, until `deadline` (time.monotonic())."""

    def __init__(self, shown: str, max_files: int, deadline: float):
        self.shown, self.max_files, self.deadline = shown, max_files, deadline
        self.found: list[tuple[str, int]] = []

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise DomainError("listing_timeout", f"listing {self.shown} takes too long (THRESHER_LISTING_TIMEOUT_S); "
                              "name a narrower directory or glob", {"field": "uri"})

    def add(self, path: str, size: int) -> None:
        if len(self.found) >= self.max_files:
            raise DomainError("too_many_files", f"{self.shown} names more than {self.max_files} files "
                              "(THRESHER_MAX_INPUT_FILES); name a narrower directory or glob, or "
                              "register it in parts", {"field": "uri", "limit": self.max_files})
        self.found.append((path, size))


def _walk(base: str, listing: _Listing, children) -> None:
    """Depth first from `base`, in name order: `children(folder, depth)` gives the folder's
    subfolders to enter and adds its files to `listing`."""
    stack = [(base, 0)]
    while stack:
        folder, depth = stack.pop()
        listing.tick()
        stack.extend((sub, depth + 1) for sub in reversed(children(folder, depth)))


def _local_children(base: str, listing: _Listing, access: Access, pattern: re.Pattern | None,
                    max_depth: int | None):
    """A local folder's entries (`base` already checked). A directory reached twice (two links, or
    a link cycle) is entered once, a file listed once; a directory in the server's folders is never
    entered; one or a file resolving outside the roots refuses the listing, naming it."""
    st = os.stat(base)
    seen = {(st.st_dev, st.st_ino)}

    def children(folder: str, depth: int) -> list[str]:
        try:
            with os.scandir(folder) as it:
                names = sorted(e.name for e in it)
        except OSError as e:
            raise DomainError("bad_uri", f"cannot list {listing.shown}: {e.strerror}", {"field": "uri"}) from None
        below = []
        for name in names:
            if pattern is None and name.startswith((".", "_")):
                continue
            path = f"{folder.rstrip('/')}/{name}"
            try:
                st = os.stat(path)
            except OSError:        # a dangling link, or gone since
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if (st.st_dev, st.st_ino) in seen or not (is_dir or stat.S_ISREG(st.st_mode)) or \
                    (is_dir and max_depth is not None and depth >= max_depth) or \
                    (not is_dir and pattern is not None and not pattern.fullmatch(path)):
                continue
            seen.add((st.st_dev, st.st_ino))
            real = os.path.realpath(path)
            if is_dir and access.is_private(real):
                continue
            if not access.allows(real):
                raise _forbidden(f"{name} (under {listing.shown})", name)
            if is_dir:
                below.append(path)
            else:
                listing.add(path, st.st_size)
        return below
    return children


def _remote_children(fs: pafs.FileSystem, listing: _Listing, pattern: re.Pattern | None, max_depth: int | None):
    """An object-store folder's entries, one listing call each."""
    def children(folder: str, depth: int) -> list[str]:
        below = []
        for info in sorted(fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)), key=lambda i: i.path):
            if pattern is None and info.base_name.startswith((".", "_")):
                continue
            if info.type == pafs.FileType.Directory and (max_depth is None or depth < max_depth):
                below.append(info.path)
            elif info.type == pafs.FileType.File and (pattern is None or pattern.fullmatch(info.path)):
                listing.add(info.path, info.size)
        return below
    return children


def list_inputs(uri: str, access: Access, max_files: int = 100_000, timeout_s: float = 60.0) -> list[InputFile]:
    """The files `uri` (a tenant's) names, sorted by path (an empty list when it matches nothing),
    each file once. Raises DomainError when the URI may not be read or the listing passes its
    bounds, OSError when the filesystem cannot be reached."""
    access.check_uri(uri)
    scheme, path, query = split_uri(uri)
    listing = _Listing(uri.split("?", 1)[0], max_files, time.monotonic() + timeout_s)
    glob = bool(MAGIC_CHARS.search(path))
    base = fixed_prefix(path)
    rest = path[len(base):].lstrip("/")
    # Without `**` a glob reaches a fixed depth: nothing deeper is listed.
    max_depth = None if not glob or "**" in rest else rest.count("/")
    if scheme == "file":
        base = os.path.realpath(base)
        pattern = glob_regex(f"{base.rstrip('/')}/{rest}") if glob else None
        st = os.stat(base) if os.path.exists(base) else None
        if st is not None and stat.S_ISREG(st.st_mode) and not glob:
            listing.add(base, st.st_size)
        elif st is not None and stat.S_ISDIR(st.st_mode):
            _walk(base, listing, _local_children(base, listing, access, pattern, max_depth))
    else:
        fs, _ = access.remote_file(join_uri(scheme, base, query), listing.shown)
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.File and not glob:
            listing.add(info.path, info.size)
        elif info.type == pafs.FileType.Directory:
            _walk(base, listing, _remote_children(fs, listing, glob_regex(path) if glob else None, max_depth))
    return sorted((InputFile(join_uri(scheme, p, query), p, size) for p, size in listing.found),
                  key=lambda f: f.path)


def open_input(uri: str, access: Access, shown: str | None = None):
    """A tenant's file for `storage.ingest.Source`: a `UserFile` checked at every open (local), or
    the `(filesystem, path)` of an object-store URI with its root's options."""
    local = _local(uri)
    if local is not None:
        return UserFile(local, access, shown or uri)
    return access.remote_file(uri, shown)


@dataclass(frozen=True)
class UserFile:
    """A local file a tenant named: every open goes through `Access.open_local`."""
    path: str
    access: Access
    shown: str

    def open(self) -> io.FileIO:
        return self.access.open_local(self.path, self.shown)
