"""One module per explorer page; each exposes `page_<name>(...)`."""
