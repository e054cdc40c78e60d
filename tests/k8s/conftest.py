"""Fixtures for the Kubernetes tests: a fake Kubernetes API server on 127.0.0.1 (see fake_kube_api.py)
and a kubeconfig file pointing at it."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make the sibling helper importable
from fake_kube_api import FakeCluster, KubeApiHandler


@pytest.fixture
def fake_cluster(tmp_path: Path) -> Iterator[tuple[FakeCluster, str]]:
    """A running fake API server; yields the cluster state and a kubeconfig file pointing at it."""
    cluster = FakeCluster()
    handler = type("Handler", (KubeApiHandler,), {"cluster": cluster})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{server.server_port}\n"
        "users:\n- name: fake\n  user:\n    token: fake-token\n"
        "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n"
        "current-context: fake\n"
    )
    try:
        yield cluster, str(kubeconfig)
    finally:
        server.shutdown()
        server.server_close()
        for process in cluster.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
