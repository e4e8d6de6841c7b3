"""The benches' real text: a multi-domain English corpus cut from Debian's documentation packages.

Text nobody on the project wrote, in five clearly different domains, so that selection toward one of
them can be measured: kernel documentation, C library manual pages, the King James Bible, fortune
cookies and the GNU coding standards. The Bible ("scripture") is the target domain and a minority
of the pool (about one document in seven), as in targeted pretraining.

Needs a Debian (bookworm) machine and root: missing packages are installed with apt-get. Run from
the repository root:

    .venv/bin/python -m bench.build_debian_corpus OUT_DIR [--per-domain 6000] [--seed 7]

Writes JSON lines `{"id", "text", "source"}`:

    OUT_DIR/sources/<domain>.jsonl  up to --per-domain documents of each domain (revealed samples
                                    for mixture projection)
    OUT_DIR/target.jsonl            300 target-domain documents (CoLoR-Filter's conditional model)
    OUT_DIR/validation.jsonl        500 other target-domain documents (what a selection is worth)
    OUT_DIR/pool.jsonl              the candidate pool: every domain, shuffled; the target domain
                                    contributes --per-domain // 3 documents not used above

A document is a run of whole paragraphs of about 1500 characters. Same packages and seed → same
files. `pool.jsonl` is written last: its presence means the corpus is complete.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

PACKAGES = ("linux-doc-6.1", "manpages-dev", "bible-kjv", "fortunes", "gnu-standards", "man-db")
TARGET_DOMAIN = "scripture"
TARGET_DOCS, VALIDATION_DOCS = 300, 500
PIECE_CHARS = 1500  # a document closes before the paragraph that would take it past this
MIN_PIECE_CHARS = 200  # ... unless it is still this short; shorter leftovers are dropped
MAX_MANPAGES = 2500


# -- the system --------------------------------------------------------------------------------------

def install_missing(packages: Iterable[str] = PACKAGES) -> None:
    def installed(pkg: str) -> bool:
        return subprocess.run(["dpkg", "-s", pkg], capture_output=True).returncode == 0

    missing = [p for p in packages if not installed(p)]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def package_files(package: str, pattern: str) -> list[str]:
    """Regular files installed by `package` whose path matches `pattern`, sorted."""
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
    return sorted(path for path in listing.splitlines() if re.search(pattern, path) and os.path.isfile(path))


def read_text(path: str) -> str:
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", errors="replace") as f:
        return f.read()


# -- text into documents -----------------------------------------------------------------------------

def documents(text: str) -> Iterator[str]:
    """Consecutive paragraphs grouped into documents of roughly PIECE_CHARS characters."""
    group: list[str] = []
    size = 0  # characters of the group, counting two newlines after each paragraph
    for paragraph in re.split(r"\n\s*\n", re.sub(r"[ \t]+", " ", text)):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if size > MIN_PIECE_CHARS and size + len(paragraph) > PIECE_CHARS:
            yield "\n\n".join(group)
            group, size = [], 0
        group.append(paragraph)
        size += len(paragraph) + 2
    if size > MIN_PIECE_CHARS:
        yield "\n\n".join(group)


# -- the domains, in the order their documents are drawn ------------------------------------------------

def kernel_docs() -> Iterator[str]:
    for path in package_files("linux-doc-6.1", r"\.rst(\.gz)?$"):
        yield from documents(read_text(path))


def _render_manpage(path: str) -> str:
    env = {**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": "0"}
    page = subprocess.run(["man", "-l", "-P", "cat", path], capture_output=True, text=True, env=env).stdout
    return re.sub(r".\x08", "", page)  # drop overstrike (bold/underline) sequences


def manpage_docs() -> Iterator[str]:
    pages = package_files("manpages-dev", r"/man[23]/.*\.gz$")[:MAX_MANPAGES]
    with ThreadPoolExecutor(4) as renderers:
        for page in renderers.map(_render_manpage, pages):
            yield from documents(page)


BIBLE_BOOKS = """Genesis Exodus Leviticus Numbers Deuteronomy Joshua Judges Ruth Samuel Kings Chronicles
Job Psalms Proverbs Ecclesiastes Isaiah Jeremiah Ezekiel Daniel Matthew Mark Luke John Acts Romans
Corinthians Hebrews Revelation""".split()


def scripture_docs() -> Iterator[str]:
    """Chapter after chapter until a book runs out; four verses make a paragraph."""
    for book in BIBLE_BOOKS:
        for chapter in range(1, 151):
            out = subprocess.run(["bible", "-f", f"{book} {chapter}:1-200"], capture_output=True, text=True).stdout
            verses = [re.sub(r"^\S+\s", "", line) for line in out.splitlines() if line.strip()]
            if not verses:
                break
            paragraphs = (" ".join(verses[i:i + 4]) for i in range(0, len(verses), 4))
            yield from documents("\n\n".join(paragraphs))


def fortune_docs() -> Iterator[str]:
    for path in package_files("fortunes", r"/fortunes/[a-z-]+$"):
        cookies = (c.strip() for c in read_text(path).split("\n%\n"))
        yield from documents("\n\n".join(c for c in cookies if c))


def standards_docs() -> Iterator[str]:
    for path in package_files("gnu-standards", r"\.html$"):
        text = re.sub(r"&[a-z]+;", " ", re.sub(r"<[^>]+>", " ", read_text(path)))
        yield from documents(re.sub(r"\n\s+", "\n\n", text))


DOMAINS: dict[str, Callable[[], Iterator[str]]] = {
    "kernel": kernel_docs, "manpages": manpage_docs, "scripture": scripture_docs,
    "fortunes": fortune_docs, "standards": standards_docs,
}


# -- the corpus -------------------------------------------------------------------------------------------

def write_jsonl(path: str, records: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def build(out: str, per_domain: int = 6000, seed: int = 7) -> str:
    """Build the corpus under `out` (see the module docstring); returns `out`."""
    install_missing()
    rng = random.Random(seed)
    os.makedirs(os.path.join(out, "sources"), exist_ok=True)
    pool: list[dict] = []
    for domain, produce in DOMAINS.items():
        docs = [{"id": f"{domain}-{i}", "text": text, "source": domain} for i, text in enumerate(produce())]
        rng.shuffle(docs)
        docs = docs[:per_domain]
        write_jsonl(os.path.join(out, "sources", f"{domain}.jsonl"), docs)
        if domain == TARGET_DOMAIN:
            held_out = TARGET_DOCS + VALIDATION_DOCS
            write_jsonl(os.path.join(out, "target.jsonl"), docs[:TARGET_DOCS])
            write_jsonl(os.path.join(out, "validation.jsonl"), docs[TARGET_DOCS:held_out])
            docs = docs[held_out:held_out + per_domain // 3]  # a minority of the pool
        pool += docs
        print(f"{domain}: {len(docs)} documents in the pool", file=sys.stderr)
    rng.shuffle(pool)
    write_jsonl(os.path.join(out, "pool.jsonl"), pool)
    print(f"pool: {len(pool)} documents", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output directory")
    ap.add_argument("--per-domain", type=int, default=6000, help="documents kept per domain (default 6000)")
    ap.add_argument("--seed", type=int, default=7, help="shuffling seed (default 7)")
    args = ap.parse_args(argv)
    build(args.out, args.per_domain, args.seed)


if __name__ == "__main__":
    main()
