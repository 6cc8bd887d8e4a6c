"""The backend-agnostic sampling core: the backend interface, flow-matching schedule and progressive init,
guidance chains (DS-CFG), windows and crossfade, and the pipeline that runs them for any backend."""
