"""Outputs (search_space/outputs.py): checked before any work, written whole or not at all, and a full disk
reported as one line naming the file."""
import errno
import os

import pytest

from search_space.outputs import (OutputError, atomic_write, check_output_dir, check_output_file, disk_errno,
                                  disk_errors)


def fill(folder) -> None:
    """Fill the file system of `folder` until it refuses another byte."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    try:
        with open(folder / "filler-tail", "wb") as f:
            while True:
                f.write(b"\0")
                f.flush()
    except OSError:
        pass


def test_a_folder_that_can_be_made_passes_and_nothing_is_created(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert check_output_file(tmp_path / "a" / "x.png", "-o") == tmp_path / "a" / "x.png"
    assert not (tmp_path / "a").exists()


def test_a_file_in_the_way_is_refused_naming_the_flag_and_the_file(tmp_path):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(OutputError, match=r"^--out .*afile/x cannot be created: .*afile is a file"):
        check_output_dir(tmp_path / "afile" / "x", "--out")
    with pytest.raises(OutputError, match=r"^--out .*afile is a file; remove it"):
        check_output_dir(tmp_path / "afile", "--out")
    with pytest.raises(OutputError, match=r"^-o .*afile/x.mlpackage cannot be created: .*afile is a file"):
        check_output_file(tmp_path / "afile" / "x.mlpackage", "-o", package=True)
    with pytest.raises(OutputError, match=r"^-o .*afile is a file"):
        check_output_file(tmp_path / "afile", "-o", package=True)
    with pytest.raises(OutputError, match="is a folder; give a file name inside it"):
        check_output_file(tmp_path, "-o")
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_folder_that_cannot_be_written_is_refused(readonly_folder):
    with pytest.raises(OutputError, match=r"^--out .*/x cannot be written: .*readonly is not writable"):
        check_output_dir(readonly_folder / "x", "--out")
    with pytest.raises(OutputError, match=r"^--into .*/m.csv cannot be written"):
        check_output_file(readonly_folder / "m.csv", "--into")


def test_an_atomic_write_that_fails_leaves_the_file_as_it_was_and_no_temporary(tmp_path):
    store = tmp_path / "store.csv"
    store.write_text("a,b\n1,2\n")
    with pytest.raises(OutputError, match=r"^cannot write .*store.csv: no space left on the device"):
        with atomic_write(store, append=True) as tmp:
            assert tmp.read_text() == "a,b\n1,2\n"  # the copy to append to
            with tmp.open("a") as f:
                f.write("3,")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert store.read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".store.csv.lock", "store.csv"]  # no temporary left
    with atomic_write(store, append=True) as tmp, tmp.open("a") as f:
        f.write("3,4\n")
    assert store.read_text() == "a,b\n1,2\n3,4\n"


def _append_row(store, row):
    import time
    with atomic_write(store, append=True) as tmp:
        with tmp.open("a") as f:
            f.write(row)
        time.sleep(0.1)  # a slow writer: the others read the store meanwhile


def test_processes_appending_to_one_store_at_once_keep_every_row(tmp_path):
    import multiprocessing
    store = tmp_path / "store.csv"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_row, args=(store, f"{i}\n")) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert sorted(store.read_text().split()) == sorted(str(i) for i in range(8))


def test_other_failures_pass_unchanged(tmp_path):
    with pytest.raises(KeyError):
        with atomic_write(tmp_path / "x") as tmp:
            tmp.write_text("half")
            raise KeyError("not the disk")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_found_behind_the_wrappers_of_torch_and_safetensors():
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    wrapped.__context__ = OSError(errno.ENOSPC, "No space left on device")
    assert disk_errno(wrapped) == errno.ENOSPC
    assert disk_errno(Exception("Error while serializing: I/O error: Disk quota exceeded (os error 122)")) \
        == errno.EDQUOT
    assert disk_errno(OSError(errno.EROFS, "Read-only file system")) == errno.EROFS
    assert disk_errno(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_errno(RuntimeError("unexpected pos 704 vs 598")) is None
    with pytest.raises(OutputError, match="cannot write ckpt: the disk quota is exhausted"):
        with disk_errors("ckpt"):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")


def test_a_study_database_on_a_full_disk_is_a_full_disk(small_disk):
    """SQLite says SQLITE_FULL in words only (through SQLAlchemy): still a full disk, so one line and a retry."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///{small_disk(256)}/s.db")
    with pytest.raises(sqlalchemy.exc.OperationalError) as e:
        with engine.begin() as c:
            c.execute(sqlalchemy.text("create table t (x blob)"))
            for _ in range(1000):  # 10 MB into 256 KiB
                c.execute(sqlalchemy.text("insert into t values (randomblob(10000))"))
    engine.dispose()
    assert disk_errno(e.value) == errno.ENOSPC


def test_a_checkpoint_on_a_full_disk_is_one_error_and_the_one_before_is_intact(small_disk):
    from search_space import PRESETS, build_model
    from training.checkpoint import read_checkpoint, save_checkpoint

    spec = PRESETS["tiny-debug"]
    model, ema = build_model(spec), build_model(spec)
    disk = small_disk(32 * 1024)
    ckpt = disk / "run" / "checkpoints"
    meta = {"data": "mnist5k", "encoder": "minilm", "data_kind": "pixel", "resolution": 32, "channels": 1,
            "size": 32}  # run_meta's keys
    first = save_checkpoint(ckpt, 1, model, ema, spec, meta, {"opt": model.state_dict()})
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    fill(disk)
    with pytest.raises(OutputError, match=r"^cannot write .*/step_0000002: no space left on the device"):
        save_checkpoint(ckpt, 2, model, ema, spec, meta, {"opt": model.state_dict()})
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_0000001"]  # no half checkpoint left
    assert (ckpt / "latest").read_text() == "step_0000001"
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    read_checkpoint(disk / "run")  # checksums verified


def test_a_checkpoint_half_written_by_a_killed_run_is_removed_at_the_next_save(tmp_path):
    """A run killed while saving leaves its temporary step folder; the next save removes it (its writer, by the pid
    in its name, is gone) and leaves a live writer's alone."""
    import os

    from search_space import PRESETS, build_model
    from training.checkpoint import save_checkpoint

    spec = PRESETS["tiny-debug"]
    model = build_model(spec)
    ckpt = tmp_path / "run" / "checkpoints"
    dead, live = ckpt / ".step_0000002.999999999.0123abcd.tmp", ckpt / f".step_0000003.{os.getpid()}.0123abcd.tmp"
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
    save_checkpoint(ckpt, 2, model, build_model(spec), spec, {}, None)
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in ckpt.iterdir()) == [live.name, "latest", "step_0000002"]


def test_a_store_on_a_full_disk_keeps_its_rows(small_disk):
    from latency_models.measurements import CALIBRATION_CSV, import_measurements

    disk = small_disk(512)
    store = disk / "measurements.csv"
    import_measurements(CALIBRATION_CSV, store)
    before = store.read_bytes()
    fill(disk)
    with pytest.raises(OutputError, match=r"^cannot write .*measurements.csv: no space left"):
        import_measurements(CALIBRATION_CSV, store)
    assert store.read_bytes() == before
    assert not [p for p in disk.iterdir() if p.name.endswith(".tmp")]
    os.remove(disk / "filler")
