"""Unit-test fixtures. `swarm_manager`: an in-memory stand-in for a Swarm manager's config endpoints, behind a real docker-py client
(a requests adapter answers the HTTP calls), so records.py runs its own code path, errors
included: a name taken is 409, an unknown config 404, an update must name the current version
index and may change only the labels, every write advances one version index (Raft's)."""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
import urllib.parse
from types import SimpleNamespace

import docker
import pytest
import requests
from requests.adapters import BaseAdapter

from cdtasks.gateway import Gateway

BASE = "http://fake-manager.invalid:2375"
# `GET /info` of a manager: the gateway's probe asks it once.
MANAGER_INFO = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True}}


class ConfigStore(BaseAdapter):
    def __init__(self):
        super().__init__()
        self.configs: dict[str, dict] = {}  # ID -> config as the Engine returns it
        self._index = itertools.count(10)
        self._mutex = threading.Lock()
        self.lose_create_answers = False  # the create goes through, its answer never arrives

    def _find(self, ref: str) -> dict | None:
        """By full ID, then exact name, then unique ID prefix: the daemon's getConfig."""
        if ref in self.configs:
            return self.configs[ref]
        by_name = [c for c in self.configs.values() if c["Spec"]["Name"] == ref]
        if by_name:
            return by_name[0]
        by_prefix = [c for i, c in self.configs.items() if i.startswith(ref)]
        return by_prefix[0] if len(by_prefix) == 1 else None

    def _answer(self, method: str, path: str, query: dict, body: dict | None):
        parts = path.split("/")[2:]  # drop "" and the API version
        if parts == ["configs", "create"] and method == "POST":
            if any(c["Spec"]["Name"] == body["Name"] for c in self.configs.values()):
                return 409, {"message": f"config {body['Name']} already exists"}
            cid = secrets.token_hex(12)
            self.configs[cid] = {
                "ID": cid,
                "Version": {"Index": next(self._index)},
                "Spec": {
                    "Name": body["Name"],
                    "Labels": body.get("Labels") or {},
                    "Data": body["Data"],
                },
            }
            return 201, {"ID": cid}
        if parts == ["configs"] and method == "GET":
            wanted = json.loads(query.get("filters", "{}")).get("label", [])
            return 200, [
                c
                for c in self.configs.values()
                if all(_has(c["Spec"]["Labels"], f) for f in wanted)
            ]
        config = self._find(parts[1]) if len(parts) > 1 else None
        if config is None:
            return 404, {"message": f"config {parts[-1]} not found"}
        if len(parts) == 2 and method == "GET":
            return 200, json.loads(json.dumps(config))
        if len(parts) == 2 and method == "DELETE":
            del self.configs[config["ID"]]
            return 204, None
        if parts[2:] == ["update"] and method == "POST":
            if int(query["version"]) != config["Version"]["Index"]:
                return 500, {"message": "rpc error: code = Unknown desc = update out of sequence"}
            if body["Name"] != config["Spec"]["Name"] or body.get("Data") not in (
                None,
                config["Spec"]["Data"],
            ):
                return 400, {"message": "only updates to Labels are allowed"}
            config["Spec"]["Labels"] = body.get("Labels") or {}
            config["Version"]["Index"] = next(self._index)
            return 200, None
        return 404, {"message": f"no route {method} {path}"}

    def send(self, request, **kwargs):
        url = urllib.parse.urlsplit(request.url)
        query = dict(urllib.parse.parse_qsl(url.query))
        body = json.loads(request.body) if request.body else None
        with self._mutex:
            status, payload = self._answer(request.method, url.path, query, body)
        if self.lose_create_answers and url.path.endswith("/configs/create"):
            raise KeyboardInterrupt
        res = requests.Response()
        res.status_code, res.url, res.request = status, request.url, request
        res._content = b"" if payload is None else json.dumps(payload).encode()
        res.headers["Content-Type"] = "application/json"
        return res

    def close(self):
        pass

    def data(self, config_id: str) -> dict:
        return json.loads(base64.b64decode(self.configs[config_id]["Spec"]["Data"]))


def _has(labels: dict, wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


@pytest.fixture
def swarm_manager() -> SimpleNamespace:
    """A gateway to the fake manager, as records.py uses one; `.api` is its docker-py client,
    `.store` the fake's own state."""
    store = ConfigStore()
    api = docker.APIClient(base_url=BASE, version="1.41")
    api.mount(BASE, store)
    gw = Gateway.of_client(SimpleNamespace(api=api, info=lambda: MANAGER_INFO))
    gw.api, gw.store = api, store
    return gw
