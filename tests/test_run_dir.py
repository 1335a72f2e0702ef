"""The run directory: Parsl's directories private (or group-readable) whatever the umask, and refused,
with the directory named, when someone else owns one or may write to it (as ssh's StrictModes).

Real directories made as Parsl makes them (``os.makedirs`` under the umask);
the other-user cases give a directory to ``nobody`` and need root.
"""
from __future__ import annotations

import multiprocessing
import os
import stat

import pytest

from parsl_rcylon import RadicalCylonExecutor
from parsl_rcylon.monitoring import PrivateFilesystemRadio
from parsl_rcylon.permissions import UnsafeDirectoryError, secure_run_dir

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def parsl_run(tmp_path, name="runinfo"):
    """``runinfo/000`` as Parsl makes it: ``os.makedirs`` with the umask."""
    run = tmp_path / name / "000"
    os.makedirs(run)
    return run


@pytest.mark.parametrize("sharing, expected", [("private", 0o700), ("group", 0o750)])
def test_parsl_run_directories_get_the_run_mode_whatever_the_umask(tmp_path, umask, sharing, expected):
    run = parsl_run(tmp_path)
    secure_run_dir(run, sharing)
    assert mode(run) == expected
    assert mode(run.parent) & 0o022 == 0  # nobody else may rename runinfo/000 aside


def test_a_run_directory_nobody_made_yet_is_made_with_the_run_mode(tmp_path, umask):
    """An executor started outside Parsl (``ex.run_dir = ...; ex.start()``): its run directory is made."""
    run = tmp_path / "scripts" / "run"
    secure_run_dir(run, "private")
    assert mode(run) == 0o700 and mode(run.parent) & 0o022 == 0


def test_a_user_run_directory_others_may_write_to_is_refused_unless_parsl_alone_left_it_so(tmp_path):
    run = parsl_run(tmp_path)
    (run.parent / "notes.txt").write_text("the user's own\n")
    os.chmod(run.parent, 0o775)
    with pytest.raises(UnsafeDirectoryError, match=f"{run.parent} is writable by its group"):
        secure_run_dir(run)
    assert mode(run.parent) == 0o775  # a directory with the user's own files is not changed behind her back
    os.chmod(run.parent, 0o777)
    with pytest.raises(UnsafeDirectoryError, match="writable by others"):
        secure_run_dir(run)


def test_parsls_run_directory_that_is_a_link_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "runinfo").mkdir()
    os.symlink(elsewhere, tmp_path / "runinfo" / "000")
    with pytest.raises(UnsafeDirectoryError, match="000 is not a directory"):
        secure_run_dir(tmp_path / "runinfo" / "000")


@as_root
def test_a_run_directory_of_another_user_is_refused_and_named(tmp_path):
    run = parsl_run(tmp_path)
    os.chown(run.parent, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectoryError, match=f"{run.parent} belongs to uid {NOBODY}"):
        secure_run_dir(run)
    os.chown(run.parent, 0, 0)
    os.chown(run, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectoryError, match=f"{run} belongs to uid {NOBODY}"):
        secure_run_dir(run)


@as_root
def test_the_executor_refuses_to_start_in_a_run_directory_of_another_user(tmp_path):
    run = parsl_run(tmp_path)
    os.chown(run, NOBODY, NOBODY)
    ex = RadicalCylonExecutor(label="strict", worker_ranks=2)
    ex.run_dir = str(run)
    with pytest.raises(UnsafeDirectoryError, match=f"{run} belongs to uid {NOBODY}"):
        ex.start()
    assert not (run / "strict").exists(), "nothing of the run was made there"


def test_the_monitoring_radio_secures_the_chain_down_to_its_directory(tmp_path, umask):
    run = parsl_run(tmp_path)
    radio = PrivateFilesystemRadio()
    receiver = radio.create_receiver(run_dir=str(run), resource_msgs=multiprocessing.get_context("spawn").Queue())
    try:
        assert mode(run) == 0o700 and mode(run.parent) & 0o022 == 0
        for sub in ("", "tmp", "new"):
            assert mode(run / "monitor-fs-radio" / sub) == 0o700
    finally:
        receiver.shutdown()


def test_the_radio_gives_parsls_run_directory_the_executors_sharing(tmp_path, umask):
    run = parsl_run(tmp_path)
    radio = RadicalCylonExecutor(label="grp", worker_ranks=2, sharing="group").remote_monitoring_radio
    receiver = radio.create_receiver(run_dir=str(run), resource_msgs=multiprocessing.get_context("spawn").Queue())
    try:
        assert mode(run) == 0o750 and mode(run / "monitor-fs-radio") == 0o700
    finally:
        receiver.shutdown()


@as_root
def test_a_radio_directory_planted_by_another_user_is_refused(tmp_path):
    run = parsl_run(tmp_path)
    planted = run / "monitor-fs-radio"
    planted.mkdir(mode=0o700)
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectoryError, match=f"{planted} belongs to uid {NOBODY}"):
        PrivateFilesystemRadio().create_receiver(run_dir=str(run),
                                                 resource_msgs=multiprocessing.get_context("spawn").Queue())
