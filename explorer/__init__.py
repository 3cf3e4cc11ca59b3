"""The Streamlit explorer: a read-only view over Optuna storage and the artifacts trials wrote.

`app.py` (the file Streamlit runs) calls `explorer.main.main()`. Layout: `loaders` (cached reads of the storage),
`figures` (plotly, no Streamlit), `widgets` (shared Streamlit bits), `commands` (the CLI commands pages suggest,
each checked by a test to exist), `pages/` (one module per page) and `main` (sidebar and routing). Nothing here
writes to storage or builds a model while a page renders: per-stage costs and latency splits are read from
what the evaluators stored on each trial.
"""
