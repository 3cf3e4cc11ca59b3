"""The shipped evaluators, one module each: its one declaration (name, version, metrics with directions, options
with types and defaults; evaluators/registry.py's contract) and its `run`. Each module is plain Python at import
and imports torch and the library it runs (evaluators/cost.py, quality.py, decoder_quality.py, latency_models/)
inside `run`, so registering all of them costs a study file's check nothing."""
from . import cost, decoder, flow, latency  # noqa: F401  (each registers itself)
