"""What a study measures about a candidate: `registry` is the evaluator contract, `plugins/` holds one module per
shipped evaluator (its declaration and run), and `cost`, `quality` and `decoder_quality` are the libraries those
run. Importing the package registers the shipped evaluators; that imports no torch (docs/architecture.md)."""
from . import plugins  # noqa: F401
