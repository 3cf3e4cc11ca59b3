"""Streamlit explorer: a read-only view over Optuna storage and the artifacts the evaluators wrote.

Pages: Pareto front, trial table, trial detail, compare two trials, the paper's figures (SnapGen Figure 3 and
Table 2, docs/paper.md sections 1-2) and study health. Launch with `pocketdiff app [--storage URL] [--port N]`
or `streamlit run app.py -- --storage URL [--study NAME]`. This is the file Streamlit runs; the pages, loaders
and figures live in the `explorer` package. Nothing here writes to storage (SQLite files are opened read-only,
see studies/results.py) or builds a model while a page renders.
"""
from explorer.main import main

main()
