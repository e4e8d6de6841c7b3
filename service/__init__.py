"""The HTTP service (FastAPI)."""
import os

# Arrow's memory from jemalloc, which gives freed pages back to the system within a second,
# whichever thread freed them. With pyarrow's default, mimalloc, each of the server's worker threads
# kept what it had used: every concurrent download left ~25 MB behind (200 at once: past 2.5 GB).
# Read when Arrow first allocates, so set before anything imports pyarrow; an operator's choice wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
