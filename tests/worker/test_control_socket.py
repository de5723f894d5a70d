"""The local control socket works wherever the run directory lives (deep AIRFLOW_HOME included)."""

import os
import shutil

import pytest

from edge_kombu.worker import control


def _serve(run_dir, name):
    server = control.ControlServer(control.socket_path(run_dir, name),
                                   lambda payload: {"echo": payload["command"], "name": name})
    server.start()
    return server


def test_a_run_dir_too_deep_for_a_unix_socket_uses_a_short_private_directory(tmp_path):
    run_dir = tmp_path / ("d" * 60) / ("e" * 60) / "edge_kombu" / "run"
    path = control.socket_path(run_dir, "demo-edge@vm")
    assert path.parent == control.short_dir(run_dir)
    assert len(os.fsencode(str(path))) <= 100
    server = _serve(run_dir, "demo-edge@vm")
    try:
        assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
        found = control.live_sockets(run_dir)
        assert [(p, status["name"]) for p, status in found] == [(path, "demo-edge@vm")]
        assert control.live_sockets(tmp_path / "elsewhere") == []
    finally:
        server.close()
    assert not path.exists()
    shutil.rmtree(path.parent)


def test_a_short_run_dir_keeps_the_socket_in_it(tmp_path):
    path = control.socket_path(tmp_path, "w1@host")
    assert path == tmp_path / "w1@host.sock"


def test_a_short_directory_owned_by_another_user_is_refused(tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to hand the directory to another user")
    run_dir = tmp_path / ("x" * 120)
    squatted = control.short_dir(run_dir)
    squatted.mkdir(parents=True, mode=0o700)
    os.chown(squatted, 65534, 65534)
    try:
        with pytest.raises(control.ControlError, match="others cannot write"):
            _serve(run_dir, "w@h")
    finally:
        shutil.rmtree(squatted)
