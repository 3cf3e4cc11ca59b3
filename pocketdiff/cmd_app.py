"""`pocketdiff app`: the Streamlit explorer (app.py) over an Optuna storage, read-only."""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys

STORAGE_ENV = "POCKETDIFF_STORAGE"
DEFAULT_STORAGE = "sqlite:///runs/quick/study.db"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="Streamlit explorer: Pareto front, trials, paper figures (read-only)")
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE,
                   help=f"Optuna storage URL (default: env {STORAGE_ENV}, else {DEFAULT_STORAGE})")
    p.add_argument("--study", help="study to open first (default: 'quick' if present, else the first)")
    p.add_argument("--port", type=int, default=8501, help="HTTP port (default 8501)")
    p.add_argument("--address", default="localhost", help="address to listen on (default localhost)")
    p.add_argument("--browser", action="store_true", help="open a browser tab (default: headless server)")
    p.set_defaults(func=cmd_app)


def app_path() -> str:
    """The installed app.py (a top-level module of this distribution), without importing it."""
    found = importlib.util.find_spec("app")
    if found is None or not found.origin:
        from pocketdiff.cli import UsageError
        raise UsageError("app.py is not installed with pocketdiff; reinstall with `pip install -e .`")
    return found.origin


def streamlit_command(args) -> list[str]:
    cmd = [sys.executable, "-m", "streamlit", "run", app_path(), "--server.port", str(args.port),
           "--server.address", args.address, "--server.headless", str(not args.browser).lower(),
           "--browser.gatherUsageStats", "false", "--", "--storage", args.storage]
    if args.study:
        cmd += ["--study", args.study]
    return cmd


def cmd_app(args) -> int:
    import signal

    cmd = streamlit_command(args)
    proc = subprocess.Popen(cmd)
    print(f"pocketdiff app: {args.storage} on http://{args.address}:{args.port}  (Ctrl-C stops; server pid "
          f"{proc.pid})", flush=True)

    def stop(signum, frame):  # SIGTERM / SIGHUP: end the server with us, never leave it as an orphan
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
