"""Code that runs inside the service process (the Ray driver), never on Ray workers: the job
engine, the lifecycle of every resource, and curriculum runs (which answer a training loop faster
than a round trip through Ray would)."""
