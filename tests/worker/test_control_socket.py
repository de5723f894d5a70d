"""The local control socket works wherever the run directory lives (deep AIRFLOW_HOME included)."""

import json
import os
import shutil

import pytest

from edge_kombu.worker import control


def _serve(run_dir, name):
    server = control.ControlServer(control.endpoint(run_dir, name),
                                   lambda payload: {"echo": payload["command"], "name": name})
    server.start()
    return server


def test_a_run_dir_too_deep_for_a_unix_socket_uses_a_short_private_directory(tmp_path):
    run_dir = tmp_path / ("d" * 60) / ("e" * 60) / "edge_kombu" / "run"
    path = control.endpoint(run_dir, "demo-edge@vm")
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
    path = control.endpoint(tmp_path, "w1@host")
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


def test_loopback_tcp_control_needs_the_secret_of_the_private_endpoint_file(tmp_path):
    """Where Unix sockets are missing (Windows), or with EDGE_KOMBU_CONTROL=tcp."""
    assert control.channel({"EDGE_KOMBU_CONTROL": "tcp"}) == control.TCP
    assert control.channel({}) == control.UNIX
    path = control.endpoint(tmp_path / "run", "w1@host", control.TCP)
    assert path == tmp_path / "run" / "w1@host.ctl"
    server = control.ControlServer(path, lambda payload: {"seen": sorted(payload)})
    server.start()
    try:
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        # The secret is checked and taken out before the worker sees the request.
        assert control.request(path, {"command": "status"}) == {"seen": ["command"]}
        assert [p for p, _ in control.live_sockets(tmp_path / "run")] == [path]
        forged = tmp_path / "forged.ctl"
        forged.write_text(json.dumps({**json.loads(path.read_text()), "secret": "guess"}))
        with pytest.raises(control.ControlError, match="wrong or missing control secret"):
            control.request(forged, {"command": "status"})
        with pytest.raises(control.ControlError, match="already listens"):
            control.ControlServer(path, lambda payload: {}).start()
    finally:
        server.close()
    assert not path.exists()
