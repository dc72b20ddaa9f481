"""Output directories are claimed atomically: concurrent launches never share one."""

import threading

from labcore.paths import claim_dir


def test_claims_are_exclusive_under_concurrency(tmp_path):
    path = str(tmp_path / "multirun" / "2026-01-01_00-00-00")
    claimed, start = [], threading.Barrier(8)

    def launch():
        start.wait()
        claimed.append(claim_dir(path))

    threads = [threading.Thread(target=launch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(claimed)) == 8 and path in claimed
    assert sorted(p.name for p in (tmp_path / "multirun").iterdir()) == sorted(c.rsplit("/", 1)[1] for c in claimed)
