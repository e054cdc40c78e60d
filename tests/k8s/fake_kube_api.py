"""A fake Kubernetes API server for 127.0.0.1 (real HTTP, the endpoints the kubernetes client calls for
pods) with a fake kubelet that runs each pod's container command as a real local process, streams its
output as timestamped pod logs and reports its exit code in the pod status. Each test scripts what the
"cluster" does to a pod (run it, evict it, delete it while pending) to exercise the launcher end to end
through dagster-k8s's PipesK8sClient."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse


def kube_timestamp() -> str:
    """RFC 3339 with nanoseconds, as the kubelet writes log timestamps."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def container_status(state: dict[str, Any], *, ready: bool = False) -> dict[str, Any]:
    return {
        "name": "trainer",
        "image": "fineplat/trainer:test",
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "state": state,
    }


@dataclass
class FakeCluster:
    """Pods by name, their log lines, and the script that decides what happens to a new pod."""

    behaviour: Callable[[FakeCluster, str], None] | None = None
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)  # request bodies, as sent
    deleted: list[str] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)
    log_closed: dict[str, bool] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        with self.lock:
            if name in self.pods:
                self.pods[name]["status"] = status

    def delete(self, name: str) -> bool:
        with self.lock:
            pod = self.pods.pop(name, None)
            process = self.processes.get(name)
        if pod is None:
            return False
        self.deleted.append(name)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return True

    # -- fake kubelet -----------------------------------------------------------------------------

    def start_container(self, name: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Run the pod's container command locally with the pod's plain env vars; logs go to `logs`."""
        with self.lock:
            pod = self.pods[name]
        container = pod["spec"]["containers"][0]
        env = dict(os.environ)
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
        env.update(extra_env or {})
        process = subprocess.Popen(
            [*container["command"], *(container.get("args") or [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        with self.lock:
            self.processes[name] = process
            self.logs[name] = []
            self.log_closed[name] = False
        self.set_status(
            name,
            {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    container_status({"running": {"startedAt": kube_timestamp()}}, ready=True)
                ],
            },
        )

        def pump() -> None:
            assert process.stdout is not None
            for raw in process.stdout:
                with self.lock:
                    self.logs[name].append(f"{kube_timestamp()} {raw.decode().rstrip(chr(10))}")
            process.wait()
            with self.lock:
                self.log_closed[name] = True

        threading.Thread(target=pump, daemon=True).start()
        return process

    def finish_container(self, name: str, process: subprocess.Popen[bytes]) -> None:
        """Wait for the process and report its exit code the way the kubelet does."""
        code = process.wait()
        while True:  # the kubelet reports termination after the log stream has drained
            with self.lock:
                if self.log_closed.get(name, True):
                    break
            time.sleep(0.01)
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
        self.set_status(
            name,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [container_status({"terminated": terminated})],
            },
        )


class KubeApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # responses end when the connection closes: simple log streaming
    cluster: FakeCluster

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self, name: str) -> None:
        self._json(
            404,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": f'pods "{name}" not found',
                "reason": "NotFound",
                "code": 404,
            },
        )

    def _route(self) -> tuple[list[str], dict[str, list[str]]]:
        url = urlparse(self.path)
        return url.path.strip("/").split("/"), parse_qs(url.query)

    def do_POST(self) -> None:
        parts, _ = self._route()
        # /api/v1/namespaces/{ns}/pods
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cluster = self.cluster
        name = body["metadata"]["name"]
        pod = json.loads(json.dumps(body))
        pod["metadata"].update(namespace=parts[3], uid=str(uuid.uuid4()), creationTimestamp=kube_timestamp())
        pod["status"] = {"phase": "Pending"}
        with cluster.lock:
            cluster.created.append(body)
            cluster.pods[name] = pod
        if cluster.behaviour is not None:
            threading.Thread(target=cluster.behaviour, args=(cluster, name), daemon=True).start()
        self._json(201, pod)

    def do_GET(self) -> None:
        parts, query = self._route()
        cluster = self.cluster
        if len(parts) == 5:  # list pods
            field_selector = query.get("fieldSelector", [""])[0]
            label_selector = query.get("labelSelector", [""])[0]
            with cluster.lock:
                items = list(cluster.pods.values())
            if field_selector.startswith("metadata.name="):
                items = [p for p in items if p["metadata"]["name"] == field_selector.split("=", 1)[1]]
            if label_selector:
                key, value = label_selector.split("=", 1)
                items = [p for p in items if (p["metadata"].get("labels") or {}).get(key) == value]
            self._json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
            return
        name = parts[5]
        with cluster.lock:
            pod = cluster.pods.get(name)
        if pod is None:
            self._not_found(name)
            return
        if len(parts) == 6:
            self._json(200, pod)
            return
        # /log
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        follow = query.get("follow", ["false"])[0].lower() == "true"
        sent = 0
        while True:
            with cluster.lock:
                lines = list(cluster.logs.get(name, []))
                closed = cluster.log_closed.get(name, True)
                gone = name not in cluster.pods
            for line in lines[sent:]:
                self.wfile.write((line + "\n").encode())
            self.wfile.flush()
            sent = len(lines)
            if not follow or closed or gone:
                return
            time.sleep(0.05)

    def do_DELETE(self) -> None:
        parts, _ = self._route()
        name = parts[5]
        with self.cluster.lock:
            pod = self.cluster.pods.get(name)
        if pod is None or not self.cluster.delete(name):
            self._not_found(name)
            return
        self._json(200, pod)
