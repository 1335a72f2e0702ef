"""The attach door against another local user: `up` into a prepared directory, a planted log link, a forged
or foreign ``pilot.json``, and ``down`` pointed at a process that is not the user's own `up` server.

No pilot starts here: every attack is refused before one would (the live `up`/`down` and ``clean --force``
are in test_attach.py).  The real ``parsl-rcylon`` command runs in a subprocess; the other-user cases give
files and processes to ``nobody`` and need root.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from parsl_rcylon.runtime.attach import ATTACH_DIR, INFO_FILE, PilotInfo, UntrustedInfoError
from parsl_rcylon.runtime.attach.client import AttachedPilot
from parsl_rcylon.runtime.attach.detached import UP_MARK, prepare_run_dir, stop_detached

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="files and processes of another user need root")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parsl_rcylon", *args], capture_output=True, text=True,
                          timeout=120)


def _up_refused(run_dir: Path, *why: str) -> str:
    done = _cli("up", "--run-dir", str(run_dir), "--worker-ranks", "2")
    assert done.returncode == 2, done.stdout + done.stderr
    for text in (str(run_dir.resolve()),) + why:
        assert text in done.stderr, done.stderr
    assert not (run_dir / "pilot.log").exists() or (run_dir / "pilot.log").is_symlink(), "a pilot was started"
    return done.stderr


def _wait_cmdline(proc: psutil.Process) -> list:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not proc.cmdline():
        time.sleep(0.05)
    return proc.cmdline()


def _forge(run_dir: Path, proc: psutil.Process, owner: int = None, mode: int = 0o600) -> Path:
    """A ``pilot.json`` in ``run_dir`` naming ``proc`` with its true start time (what an attacker can learn)."""
    (run_dir / ATTACH_DIR).mkdir(mode=0o700, exist_ok=True)
    path = run_dir / ATTACH_DIR / INFO_FILE
    info = {"run_dir": str(run_dir.resolve()), "address": "tcp://127.0.0.1:1", "pid": proc.pid,
            "started": proc.create_time(), "label": "rcylon", "session": "rp.session.forged", "data_dir": None,
            "idle_timeout": 60.0, "heartbeat_period": 1.0, "heartbeat_threshold": 10.0}
    path.write_text(json.dumps(info))
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, owner, owner)
    return path


@pytest.fixture
def victim(tmp_path):
    """Processes this test starts (ended by pid after it)."""
    started = []

    def start(user=None, argv=("sleep", "120"), env=None):
        proc = subprocess.Popen(list(argv), user=user, env=env, cwd="/", stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        started.append(proc)
        return psutil.Process(proc.pid)

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_up_refuses_a_directory_it_did_not_create(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir(mode=0o700)
    _up_refused(prepared, "was not made by `parsl-rcylon up`")


def test_up_refuses_its_own_directory_once_others_may_write_to_it(tmp_path):
    run_dir = prepare_run_dir(tmp_path / "pilot")
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700 and (run_dir / UP_MARK).is_file()
    os.chmod(run_dir, 0o777)
    _up_refused(run_dir, "writable by others")
    os.chmod(run_dir, 0o700)
    os.makedirs(run_dir / ATTACH_DIR)
    os.chmod(run_dir / ATTACH_DIR, 0o770)
    _up_refused(run_dir, f"{run_dir / ATTACH_DIR} is writable by its group")


@as_root
def test_up_refuses_a_directory_another_user_prepared_with_a_mark(tmp_path):
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    (planted / UP_MARK).touch(mode=0o600)
    for path in (planted, planted / UP_MARK):
        os.chown(path, NOBODY, NOBODY)
    _up_refused(planted, f"belongs to uid {NOBODY}")
    os.chown(planted, 0, 0)  # the directory is the user's, the mark a stranger's
    _up_refused(planted, "mark of `parsl-rcylon up`", f"owner uid {NOBODY}")


def test_up_never_writes_through_a_link_planted_at_its_log(tmp_path):
    run_dir = prepare_run_dir(tmp_path / "pilot")
    chosen = tmp_path / "chosen"
    chosen.write_text("the victim's file\n")
    os.chmod(chosen, 0o644)
    os.symlink(chosen, run_dir / "pilot.log")
    _up_refused(run_dir, "pilot.log is a symbolic link")
    assert chosen.read_text() == "the victim's file\n" and stat.S_IMODE(chosen.stat().st_mode) == 0o644


@as_root
def test_a_pilot_description_of_another_user_is_not_trusted(tmp_path, victim):
    run_dir = prepare_run_dir(tmp_path / "pilot")
    mine = victim()
    forged = _forge(run_dir, mine, owner=NOBODY)
    with pytest.raises(UntrustedInfoError, match=f"{forged}: the pilot description must belong to this user"):
        PilotInfo.read(run_dir)
    with pytest.raises(UntrustedInfoError, match=f"owner uid {NOBODY}"):
        AttachedPilot.connect(run_dir, timeout=2)
    done = _cli("down", "--run-dir", str(run_dir))
    assert done.returncode == 2 and str(forged) in done.stderr, done.stdout + done.stderr
    time.sleep(0.2)
    assert mine.is_running() and mine.status() != psutil.STATUS_ZOMBIE, "down signalled the named process"


@pytest.mark.parametrize("planted", ["group-readable", "link"])
def test_a_pilot_description_that_is_not_private_or_is_a_link_is_not_trusted(tmp_path, victim, planted):
    run_dir = prepare_run_dir(tmp_path / "pilot")
    mine = victim()
    if planted == "link":
        elsewhere = _forge(prepare_run_dir(tmp_path / "other"), mine)
        os.makedirs(run_dir / ATTACH_DIR, mode=0o700)
        os.symlink(elsewhere, run_dir / ATTACH_DIR / INFO_FILE)
        why = "symbolic link"
    else:
        _forge(run_dir, mine, mode=0o640)
        why = "mode 0o640"
    with pytest.raises(UntrustedInfoError, match=why):
        stop_detached(run_dir)
    assert mine.is_running() and mine.status() != psutil.STATUS_ZOMBIE


def test_a_description_of_another_run_directory_is_not_trusted(tmp_path, victim):
    run_dir = prepare_run_dir(tmp_path / "pilot")
    path = _forge(run_dir, victim())
    data = json.loads(path.read_text())
    data["run_dir"] = str(tmp_path / "elsewhere")
    path.write_text(json.dumps(data))
    with pytest.raises(UntrustedInfoError, match="describes the pilot of another run directory"):
        PilotInfo.read(run_dir)


@as_root
@pytest.mark.parametrize("named", ["another user's process", "the user's own other process",
                                   "a process that only mentions the server module"])
def test_down_signals_nothing_but_the_users_own_up_server(tmp_path, victim, named):
    """A private, well-formed ``pilot.json`` (as if the file checks were passed) naming a live process with
    its true start time: ``down`` signals it only if it is this user's ``parsl_rcylon.serving`` of this
    run directory."""
    run_dir = prepare_run_dir(tmp_path / "pilot")
    if named == "another user's process":
        # Her process runs `python -m parsl_rcylon.serving RUN_DIR` exactly as `up`'s server does (a package of
        # hers by that name that only sleeps): only its owner tells it from the user's server.
        fake = Path(tempfile.mkdtemp())
        (fake / "parsl_rcylon").mkdir()
        (fake / "parsl_rcylon" / "__init__.py").write_text("import time\ntime.sleep(120)\n")
        for path in (fake, fake / "parsl_rcylon", fake / "parsl_rcylon" / "__init__.py"):
            os.chmod(path, 0o755)
        if not os.path.exists("/usr/bin/python3"):
            pytest.skip("needs a Python other users may run (/usr/bin/python3)")
        target = victim(user=NOBODY, argv=("/usr/bin/python3", "-m", "parsl_rcylon.serving", str(run_dir)),
                        env={"PYTHONPATH": str(fake), "PATH": os.environ["PATH"]})
        assert _wait_cmdline(target)[1:4] == ["-m", "parsl_rcylon.serving", str(run_dir)]
    elif named == "the user's own other process":
        target = victim()
    else:
        target = victim(argv=(sys.executable, "-c", "import time; time.sleep(120)", "-m", "parsl_rcylon.serving",
                              str(run_dir)))
    _forge(run_dir, target)
    assert PilotInfo.read(run_dir).process() is None
    done = _cli("down", "--run-dir", str(run_dir))
    assert done.returncode == 1 and "no pilot is up" in done.stdout, done.stdout + done.stderr
    time.sleep(0.2)
    assert target.is_running() and target.status() != psutil.STATUS_ZOMBIE, f"down signalled {named}"
