"""The cache root's atomic writes: workers that fill the same entry at once (a study's local workers on an empty
cache) must never rename each other's temporary file away."""
import multiprocessing

from search_space.cache import temporary_sibling

WRITES = 2000
RACERS = 16  # processes writing one entry at once (the probe reproduced the old race in 1 of 18)


def _fill(path: str, tag: str, failures, start, writes: int = WRITES) -> None:
    from pathlib import Path

    target = Path(path)
    start.wait(60)  # the workers write at once, not one after the other's interpreter start-up
    for i in range(writes):
        try:
            tmp = temporary_sibling(target)
            tmp.write_text(f"{tag} {i}")
            tmp.replace(target)
        except OSError as e:  # the failure the shared ".tmp" name gave: the other worker renamed it first
            failures.put(f"{tag} {i}: {e}")
            return


def test_temporary_names_are_unique_and_beside_the_target(tmp_path):
    target = tmp_path / "entry.pt"
    names = {temporary_sibling(target) for _ in range(100)}
    assert len(names) == 100 and all(n.parent == tmp_path and n != target for n in names)


def test_sixteen_processes_fill_one_entry_at_once(tmp_path):
    target = tmp_path / "entry.json"
    ctx = multiprocessing.get_context("spawn")
    failures, start = ctx.Queue(), ctx.Event()
    tags = [f"w{i}" for i in range(RACERS)]
    workers = [ctx.Process(target=_fill, args=(str(target), tag, failures, start, WRITES // 8)) for tag in tags]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(120)
    assert all(w.exitcode == 0 for w in workers)
    assert failures.empty(), failures.get()
    assert target.read_text().split()[0] in tags
    assert [p.name for p in tmp_path.iterdir()] == ["entry.json"]  # no temporary file left behind
