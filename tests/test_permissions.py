"""File modes are explicit whatever the umask: private by default, group-readable on request."""
from __future__ import annotations

import os
import stat

import pytest

from parsl_rcylon.permissions import make_dir, modes, open_new, private_dir, write_private


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("sharing,dir_mode,file_mode", [("private", 0o700, 0o600), ("group", 0o750, 0o640)])
def test_directories_and_files_get_exact_modes(tmp_path, umask, sharing, dir_mode, file_mode):
    leaf = make_dir(tmp_path / "a" / "b" / "c", sharing)
    for d in (tmp_path / "a", tmp_path / "a" / "b", leaf):
        assert _mode(d) == dir_mode, (d, oct(_mode(d)), oct(umask))
    fd = open_new(leaf / "f", sharing)
    os.close(fd)
    assert _mode(leaf / "f") == file_mode


def test_existing_parents_keep_their_mode(tmp_path, umask):
    os.chmod(tmp_path, 0o755)
    make_dir(tmp_path / "new")
    assert _mode(tmp_path) == 0o755
    assert _mode(tmp_path / "new") == 0o700


def test_private_dir_tightens_an_existing_directory(tmp_path, umask):
    d = tmp_path / "keys"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    private_dir(d)
    assert _mode(d) == 0o700


def test_write_private_replaces_atomically_and_leaves_no_temporary(tmp_path, umask):
    target = tmp_path / "secret.json"
    target.write_text("old")
    os.chmod(target, 0o644)
    write_private(target, b"new")
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["secret.json"]


def test_open_new_refuses_an_existing_file(tmp_path):
    (tmp_path / "x").write_text("")
    with pytest.raises(FileExistsError):
        open_new(tmp_path / "x")


def test_unknown_sharing_level_names_the_choices():
    with pytest.raises(ValueError, match="group.*private"):
        modes("world")


def test_a_log_is_never_written_through_a_link_nor_into_a_planted_file(tmp_path, umask):
    from parsl_rcylon.permissions import open_log

    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    os.chmod(victim, 0o644)
    link = tmp_path / "guard.log"
    os.symlink(victim, link)
    with pytest.raises(PermissionError, match="symbolic link"):
        open_log(link)
    assert victim.read_text() == "mine\n" and stat.S_IMODE(os.stat(victim).st_mode) == 0o644
    fifo = tmp_path / "pilot.log"
    os.mkfifo(fifo)
    with pytest.raises(PermissionError, match="not a regular file"):
        open_log(fifo)  # opened without waiting for a reader, then refused
    log = tmp_path / "ok.log"
    with os.fdopen(open_log(log), "ab") as f:
        f.write(b"one\n")
    with os.fdopen(open_log(log), "ab") as f:
        f.write(b"two\n")
    assert log.read_bytes() == b"one\ntwo\n" and stat.S_IMODE(os.stat(log).st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_log_file_of_another_user_is_refused(tmp_path):
    from parsl_rcylon.permissions import open_log

    planted = tmp_path / "guard.log"
    planted.write_text("")
    os.chown(planted, 65534, 65534)
    with pytest.raises(PermissionError, match="not a regular file of this user"):
        open_log(planted)


def test_rp_configuration_files_are_private_whatever_the_umask(tmp_path, umask):
    from parsl_rcylon.runtime import rp_adjust
    from parsl_rcylon.runtime.client import config

    written = config.write_user_config(tmp_path / "radical_config")
    written.append(rp_adjust.write_agent_config(tmp_path / "radical_config"))
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700, path.parent
