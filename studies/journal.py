"""Optuna's JournalStorage in one file, for many workers on a shared filesystem without a database server
(`journal:///path/study.log`, studies/storage.py parses it; docs/scale-out.md).

Optuna's JournalFileBackend appends each operation as one JSON line under its own lock (a symlink beside the file,
which works on NFS) and every process replays the file. Optuna gives heartbeats to RDB storages only; `JournalFile`
adds them, so a worker killed on another host has its trial failed and re-queued as on PostgreSQL
(docs/studies.md, crash safety). Readers open the file with a backend that refuses to append.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

HEARTBEAT_ATTR = "pocketdiff:heartbeat"  # a running trial's last heartbeat (epoch seconds), a system attribute


class ReadOnlyBackend(JournalFileBackend):
    """Reads the journal; never creates the file and refuses to append (a reader never writes)."""

    def __init__(self, path: str) -> None:  # JournalFileBackend's would create a missing file
        self._file_path, self._lock, self._log_number_offset = path, None, {0: 0}

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise PermissionError(f"the journal {self._file_path} was opened read-only: nothing is written to it")


class JournalFile(JournalStorage, BaseHeartbeat):
    """A journal storage opened from its URL, with heartbeats: each running trial's last beat is a system
    attribute written every `heartbeat_interval` seconds, and a RUNNING trial whose last beat (or start) is more
    than `grace_period` seconds old is stale. Staleness is judged by the hosts' clocks: keep them synchronised
    (NTP), as any cluster does."""

    def __init__(self, url: str, path: str, writable: bool, heartbeat_interval: int | None = None,
                 grace_period: int | None = None, heartbeat_stale_trial_callback: Callable | None = None) -> None:
        self.url = url  # the `journal:///` URL it was opened from (studies/storage.py parsed it into `path`)
        super().__init__(JournalFileBackend(path) if writable else ReadOnlyBackend(path))
        self._interval = heartbeat_interval
        self._grace = grace_period or (2 * heartbeat_interval if heartbeat_interval else None)
        self._on_stale = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:  # another worker found it stale and failed it meanwhile
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now, stale = time.time(), []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # its start counts too: a re-queued trial carries its killed run's last beat
            beats = [t.system_attrs.get(HEARTBEAT_ATTR), t.datetime_start.timestamp() if t.datetime_start else None]
            last = max((b for b in beats if isinstance(b, (int, float))), default=None)
            if last is not None and self._grace is not None and now - last > self._grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callable | None:
        return self._on_stale
