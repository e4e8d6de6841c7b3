"""The job kinds, one module per family. Each declares its spec models, its `run(ctx, spec)` (which
plans the work in the service process) and the Ray tasks or actors that do the work on workers;
workers/registry.py lists them all."""
