"""Streamlit explorer (see issue 6)."""
