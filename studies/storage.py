"""Opening Optuna storages safely: strict URLs, serialized creation, read-only opens that never write.

Three rules (docs/studies.md, storage):
- A storage URL is parsed strictly before anything connects: `sqlite:///path.db` (a file, no `?query` or
  `#fragment`: SQLAlchemy would silently open another file; `%XX` escapes name the decoded file, `%23` a `#`),
  `journal:///path.log` (Optuna's JournalStorage in one append-only file: many hosts on a shared filesystem
  without a database server, docs/scale-out.md), `postgresql://...`, `mysql://...`; anything else is refused
  with the reason.
- Writers (`study run`, `study worker`) create Optuna's tables under a lock held in the storage itself (a
  PostgreSQL advisory lock, MySQL GET_LOCK, a file lock beside a SQLite file), so any number of workers can start
  at the same moment on a fresh database: the first creates the schema, the others wait and find it. Optuna's
  own `create_all` is a check-then-create that races (a duplicate-key error on PostgreSQL's catalog).
- Readers (`study status|best|export`, the app) never create or migrate anything: a missing SQLite file or a
  database without Optuna's tables is an error naming it; SQLite is opened in read-only URI mode, PostgreSQL
  sessions are read-only transactions, and a journal file is read by a backend that refuses to append.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, unquote

from search_space.errors import UserError
from search_space.outputs import check_output_file, writable

OPTUNA_TABLES = ("studies", "trials", "version_info", "alembic_version")
SCHEMES = ("sqlite", "journal", "postgresql", "mysql")
FILE_SCHEMES = ("sqlite", "journal")  # a file on this host (or a shared filesystem), locked with flock
EXAMPLES = ("sqlite:///runs/NAME/study.db, journal:///shared/NAME/study.log, postgresql://user@host/db or "
            "mysql://user@host/db")


class StorageError(UserError):
    """A storage URL is malformed, or the storage is missing or cannot be opened; the message says which (the
    CLI prints it as one line and exits 2)."""


class StudyError(UserError):
    """A study cannot be run or read as asked (unreachable storage, a clashing or missing study); the message
    says why."""


@dataclass(frozen=True)
class StorageUrl:
    url: str
    scheme: str  # one of SCHEMES (the driver part of `postgresql+psycopg` dropped)
    path: Path | None = None  # the SQLite or journal file (decoded); None for `sqlite:///:memory:` and servers

    @property
    def is_memory(self) -> bool:
        return self.scheme == "sqlite" and self.path is None

    def lock_file(self, purpose: str) -> Path | None:
        return None if self.path is None else self.path.with_name(f"{self.path.name}.{purpose}.lock")


def parse_url(url: str) -> StorageUrl:
    """Check a storage URL without connecting; raises StorageError naming what is wrong and the fix."""
    if not isinstance(url, str) or not url.strip():
        raise StorageError(f"no storage URL given (use {EXAMPLES})")
    url = url.strip()
    m = re.match(r"^([A-Za-z][A-Za-z0-9]*)(\+[A-Za-z0-9_]+)?://", url)
    if not m:
        raise StorageError(f"{url!r} is not a storage URL (use {EXAMPLES})")
    scheme = m.group(1).lower()
    if scheme == "postgres":
        raise StorageError(f"storage {url!r}: write postgresql://, not postgres://")
    if scheme not in SCHEMES:
        raise StorageError(f"storage {url!r}: unknown scheme {scheme!r}; known: {', '.join(SCHEMES)} ({EXAMPLES})")
    if "#" in url:
        raise StorageError(f"storage {url!r} contains '#': a URL fragment is cut off, so another database would "
                           f"open; rename the file or write the '#' as %23")
    if scheme not in FILE_SCHEMES:
        try:
            from sqlalchemy.engine import make_url
            parsed = make_url(url)
        except Exception as e:
            raise StorageError(f"storage {url!r} is not a valid URL: {e}") from None
        if not parsed.database:
            raise StorageError(f"storage {url!r} names no database; add it: {scheme}://user@host/DBNAME")
        return StorageUrl(url, scheme)
    kind, ext = ("SQLite", "db") if scheme == "sqlite" else ("journal", "log")
    if m.group(2):
        raise StorageError(f"storage {url!r}: {kind} takes no driver; write {scheme}:///path.{ext}")
    if not url.startswith(f"{scheme}:///"):
        raise StorageError(f"storage {url!r}: a {kind} URL has three slashes before a relative path "
                           f"({scheme}:///runs/x.{ext}) and four before an absolute one ({scheme}:////tmp/x.{ext})")
    rest = url[len(f"{scheme}:///"):]
    if "?" in rest:
        raise StorageError(f"storage {url!r}: a '?query' in a {kind} URL is not supported (it would name another "
                           f"file or change how it opens); give the plain path, {scheme}:///path.{ext}")
    if rest == ":memory:" and scheme == "sqlite":
        return StorageUrl(url, scheme)
    if not rest or rest.endswith("/"):
        raise StorageError(f"storage {url!r} names no file; give {scheme}:///path/to/study.{ext}")
    if rest.startswith("file:"):
        raise StorageError(f"storage {url!r}: give the plain path, {scheme}:///path.{ext} (URI filenames are "
                           f"refused)")
    # SQLAlchemy decodes %XX escapes in a SQLite path, so the file it opens is the decoded one: so is ours (its
    # lock files, its artifacts, its readers), and the journal follows the same spelling
    path = unquote(rest)
    if not path.strip("/") or "\0" in path:
        raise StorageError(f"storage {url!r} names no file; give {scheme}:///path/to/study.{ext}")
    return StorageUrl(url, scheme, Path(path))


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


_LOCAL_LOCK = threading.RLock()


@contextlib.contextmanager
def named_lock(url: str | StorageUrl, name: str, engine: Any = None) -> Iterator[None]:
    """Hold a lock named `name` in the storage's own database, shared by every process that uses it: a
    PostgreSQL session advisory lock, MySQL GET_LOCK, an flock on a file beside a SQLite or journal file. Each is
    freed by the server or the kernel when its process dies, so a SIGKILL never leaves it held (a journal on a
    shared filesystem needs locks that work across hosts there: NFSv4, or NFSv3 with lockd). `engine` reuses an
    open storage's connection pool; without it a short-lived engine is made (the tables need not exist)."""
    u = url if isinstance(url, StorageUrl) else parse_url(url)
    if u.scheme in ("postgresql", "mysql"):
        import sqlalchemy
        own = engine is None
        if own:
            engine = sqlalchemy.create_engine(u.url, poolclass=sqlalchemy.pool.NullPool,
                                              connect_args={"connect_timeout": 10})
        try:
            with engine.connect() as conn:
                if u.scheme == "postgresql":
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _lock_key(name)})
                    conn.commit()
                    try:
                        yield
                    finally:
                        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(name)})
                        conn.commit()
                else:
                    key = f"pocketdiff-{_lock_key(name)}"
                    conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, 600)"), {"k": key})
                    try:
                        yield
                    finally:
                        conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": key})
        finally:
            if own:
                engine.dispose()
    elif u.path is not None:
        purpose = name.split(":", 1)[0].removeprefix("pocketdiff-") or "lock"
        with open(u.lock_file(purpose), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    else:  # an in-memory storage lives in one process
        with _LOCAL_LOCK:
            yield


def _reason(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _engine_kwargs(u: StorageUrl, readonly: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if u.scheme == "postgresql":
        args: dict[str, Any] = {"connect_timeout": 10}
        if readonly:  # every transaction of this engine is read-only: the server refuses any write
            args["options"] = "-c default_transaction_read_only=on"
        kwargs["connect_args"] = args
    elif u.scheme == "mysql":
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def open_for_writing(url: str, **heartbeat: Any):
    """A storage for a writer, with Optuna's `heartbeat` arguments (heartbeat_interval, grace_period,
    heartbeat_stale_trial_callback). RDB: the SQLite folder is made, and Optuna's tables are created (or found)
    under the storage's `pocketdiff-schema` lock, so simultaneous first workers do not race; a SQLite file is
    switched to write-ahead logging (`_sqlite_write_ahead`). Journal: the folder and the file are made."""
    import optuna

    u = parse_url(url)
    if u.path is not None:
        check_output_file(u.path, "storage")
        u.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if u.scheme == "journal":
            from .journal import JournalFile
            return JournalFile(u.url, str(u.path), writable=True, **heartbeat)
        with named_lock(u, "pocketdiff-schema"), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental
            storage = optuna.storages.RDBStorage(u.url, engine_kwargs=_engine_kwargs(u, readonly=False),
                                                 **heartbeat)
            if u.path is not None:
                _sqlite_write_ahead(storage.engine)
            return storage
    except StorageError:
        raise
    except Exception as e:  # sqlalchemy raises many kinds; the user needs the URL and the reason
        raise StorageError(f"cannot open storage {url}: {_reason(e)}") from None


def _sqlite_write_ahead(engine: Any) -> None:
    """Every connection of a SQLite writer uses write-ahead logging with synchronous=NORMAL: a commit appends to
    the -wal file without an fsync (0.1 ms instead of 15-25 ms on the 2-core machine's disk; a trial writes
    about a hundred user attributes, each its own Optuna commit). A killed process loses nothing committed, and
    the file is never corrupted; only an OS crash or power cut can undo the last commits. WAL is the file's
    mode from then on (readers, read-only ones included, work as before); it needs a local filesystem, like
    every SQLite study shared by several processes (many hosts: PostgreSQL)."""
    from sqlalchemy import event

    def on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened while Optuna created its tables reconnect with the pragmas


def readonly_url(url: str) -> str:
    """The URL a reader connects with: a SQLite file in read-only URI mode (an error when it does not exist,
    since opening it normally would create it), immutable where it must be (`_sqlite_immutable`); server and
    journal URLs unchanged (`open_readonly` makes their sessions read-only, a missing journal file is an error
    too)."""
    u = parse_url(url)
    if u.is_memory:
        raise StorageError(f"storage {url!r} is an in-memory database: there is nothing to read")
    if u.path is not None:
        _must_exist(u)
        if u.scheme == "journal":  # read through `open_readonly`, whose backend refuses to append
            return u.url
        # quoted twice: SQLAlchemy decodes the URL's path once, SQLite decodes the URI filename it is handed
        path = u.path.resolve()
        immutable = "&immutable=1" if _sqlite_immutable(path) else ""
        # quoted twice: SQLAlchemy decodes the URL's path once, SQLite decodes the URI filename it is handed
        return f"sqlite:///file:{quote(quote(str(path)))}?mode=ro{immutable}&uri=true"
    return u.url


def _must_exist(u: StorageUrl) -> None:
    if not u.path.is_file():
        kind = "SQLite" if u.scheme == "sqlite" else "journal"
        raise StorageError(f"no {kind} file at {u.path.resolve()} (nothing was created; run `pocketdiff study "
                           f"run FILE` first, or give another --storage)")


def _sqlite_immutable(path: Path) -> bool:
    """Whether a reader must open this SQLite file as immutable: a write-ahead-logged file (every writer's, see
    `_sqlite_write_ahead`) in a folder nobody may write (a read-only mount, an archive) cannot be opened
    read-only, since SQLite wants to create its -wal and -shm files beside it. Immutable, it reads the main file
    alone, which holds everything unless a -wal file with commits is left beside it: with its -shm file too, a
    plain read-only open reads both; without, the commits cannot be read and the open is refused."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[18:20] != b"\x02\x02" or writable(path.parent):
        return False  # not write-ahead logged (bytes 18-19: 2 = WAL), or SQLite can make its side files
    wal, shm = path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")
    if not (wal.is_file() and wal.stat().st_size > 0):
        return True
    if shm.is_file():
        return False
    raise StorageError(f"storage {path}: its folder is read-only and its last commits are in {wal.name} without "
                       f"{shm.name}, so they cannot be read; copy the folder somewhere writable and read the copy")


def open_readonly(url: str):
    """An RDB storage that cannot write: nothing is created or migrated, whatever the database holds."""
    import optuna
    import sqlalchemy

    u = parse_url(url)
    if u.scheme == "journal":
        _must_exist(u)
        from .journal import JournalFile
        try:
            storage = JournalFile(u.url, str(u.path), writable=False)
            studies = storage.get_all_studies()
        except Exception as e:  # a file that is not a journal: Optuna's replay fails on a bad line
            raise StorageError(f"storage {url}: {u.path} is not an Optuna journal file ({_reason(e)})") from None
        if not studies:
            raise StorageError(f"storage {url} holds no Optuna study ({u.path} has no study in it); nothing was "
                               f"written: run `pocketdiff study run FILE --storage {url}` to create one there, or "
                               f"give another --storage")
        return storage
    target = readonly_url(url)
    try:
        # Optuna's tables must already be there (with skip_table_creation Optuna would fail on them later)
        engine = sqlalchemy.create_engine(target, poolclass=sqlalchemy.pool.NullPool,
                                          **{k: v for k, v in _engine_kwargs(u, True).items() if k != "pool_pre_ping"})
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
        missing = [t for t in OPTUNA_TABLES if t not in tables]
        if missing:
            raise StorageError(f"storage {url} holds no Optuna study (no {', '.join(missing)} table"
                               f"{'s' if len(missing) > 1 else ''}); nothing was created: run `pocketdiff study "
                               f"run FILE --storage {url}` to create one there, or give another --storage")
        return optuna.storages.RDBStorage(target, engine_kwargs=_engine_kwargs(u, readonly=True),
                                          skip_table_creation=True)
    except StorageError:
        raise
    except Exception as e:
        raise StorageError(f"cannot open storage {url}: {_reason(e)}") from None


def url_of(storage: Any, fallback: str = "") -> str:
    """The URL an opened storage was opened with: an RDBStorage's (Optuna wraps it in a cache layer, `_backend`)
    or a JournalFile's."""
    from .journal import JournalFile
    if isinstance(storage, JournalFile):
        return storage.url
    return str(getattr(getattr(storage, "_backend", storage), "url", "") or fallback)


def engine_of(storage: Any) -> Any:
    """The SQLAlchemy engine of an opened RDB storage (its connection pool, for `named_lock`); None otherwise."""
    from .journal import JournalFile
    return None if isinstance(storage, JournalFile) else getattr(getattr(storage, "_backend", storage), "engine", None)
