"""`doublebind.atomic.write_json`: whole or not at all, with nothing left beside it."""

import json

import pytest

from doublebind.atomic import write_json


def test_writes_what_json_dumps_writes(tmp_path):
    data = {"b": [1, 2.5, None], "a": "é"}
    write_json(tmp_path / "x.json", data, indent=2)
    assert (tmp_path / "x.json").read_text() == json.dumps(data, indent=2)
    write_json(tmp_path / "x.json", {"new": True})
    assert json.loads((tmp_path / "x.json").read_text()) == {"new": True}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "study.json"
    path.write_text('{"old": 1}')
    with pytest.raises(TypeError):
        write_json(path, {"not serialisable": object()})
    assert path.read_text() == '{"old": 1}'
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(OSError):  # the rename onto a folder fails after the write
        write_json(tmp_path / "folder.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.json", "study.json"]


def test_a_new_file_gets_the_umask_mode(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "x.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o640


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    """`No space left on device` came with no file name, so `study run` printed it alone."""
    import errno
    import os

    from doublebind import atomic

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(OSError) as e:
        write_json(tmp_path / "study.json", {"a": 1})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "study.json")
    assert os.listdir(tmp_path) == []  # and no temporary left


def test_a_full_disk_names_the_results_file(tmp_path, monkeypatch):
    """A study's results.jsonl is appended to, not written whole: its fsync on a full disk
    names the file too."""
    import errno

    from doublebind.studies import run

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run.os, "fsync", full)
    with pytest.raises(OSError) as e:
        run._append(tmp_path / "results.jsonl", [{"a": 1}])
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "results.jsonl")


def test_the_data_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    """Without an fsync before the rename, a power cut could leave study.json or summary.json
    renamed into place but empty."""
    import os

    from doublebind import atomic

    order = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b))[1])
    atomic.write_json(tmp_path / "x.json", {"a": 1})
    assert order == ["fsync", "replace"] and (tmp_path / "x.json").read_text() == '{"a": 1}'
