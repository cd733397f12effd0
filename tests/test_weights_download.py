"""Downloads for real: timm weights fetched from a Hugging Face hub served on 127.0.0.1.

The server speaks the hub's file protocol (``/<repo>/resolve/<revision>/<file>``
with its commit and ETag headers); huggingface_hub is pointed at it with
``HF_ENDPOINT``, which it reads at import, so each check runs in a fresh process
(the unreachable-hub checks patch the URL template it builds from it instead).
"""

import hashlib
import http.server
import json
import os
import socket
import threading
import time

import numpy as np
import pytest
import safetensors.torch as safetensors_torch
import timm
import torch

import sktransfer
from sktransfer import WeightsNotFoundError

from ._helpers import run_python

REPO = "timm/test_resnet.r160_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubFiles(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    requests: list = []

    def _serve(self, body: bool):
        self.requests.append(self.path)
        prefix = f"/{REPO}/resolve/main/"
        data = self.files.get(self.path[len(prefix) :]) if self.path.startswith(prefix) else None
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A local hub holding the weights of a randomly initialised ``test_resnet``."""
    folder = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet.r160_in1k", pretrained=False)
    path = folder / "model.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(path))
    HubFiles.files = {"model.safetensors": path.read_bytes()}
    HubFiles.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubFiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", model.eval()
    server.shutdown()


SCRIPT = """
import json, sys
import numpy as np
import sktransfer

X = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
try:
    f = sktransfer.PretrainedFeaturizer("test_resnet.r160_in1k", cache=None, progress=False)
    np.save(sys.argv[1], f.fit_transform(X))
    print(json.dumps({"ok": True}))
except sktransfer.WeightsNotFoundError as exc:
    print(json.dumps({"ok": False, "error": str(exc)}))
"""


def run(tmp_path, endpoint, **env):
    environment = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    environment.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), **env)
    out = tmp_path / "features.npy"
    result = run_python(SCRIPT, out, env=environment)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["stderr"] = result.stderr
    if report["ok"]:
        report["features"] = np.load(out)
    return report


@pytest.mark.slow  # starts other Python processes
def test_missing_weights_are_downloaded_then_used_offline(hub, tmp_path):
    endpoint, model = hub
    first = run(tmp_path, endpoint)
    assert first["ok"], first
    assert any(r.endswith("/model.safetensors") for r in HubFiles.requests)
    # The file landed in the hub cache, and the features are those of the served weights.
    cached = list((tmp_path / "hf").rglob("model.safetensors"))
    assert cached and cached[0].read_bytes() == HubFiles.files["model.safetensors"]
    spec = timm.data.resolve_model_data_config(model)
    assert first["features"].shape == (3, model.num_features) and spec["input_size"][1] == 160
    # Now offline: the cached file is enough, and the server is not asked again.
    HubFiles.requests.clear()
    again = run(tmp_path, endpoint, SKTRANSFER_OFFLINE="1")
    assert again["ok"], again
    assert HubFiles.requests == []
    np.testing.assert_array_equal(again["features"], first["features"])


@pytest.mark.slow  # starts other Python processes
def test_offline_switch_names_the_file_and_the_folder(hub, tmp_path):
    endpoint, _ = hub
    HubFiles.requests.clear()
    report = run(tmp_path, endpoint, SKTRANSFER_OFFLINE="1")
    assert not report["ok"]
    assert f"{REPO}/model.safetensors" in report["error"]
    assert str(tmp_path / "hf") in report["error"]
    assert HubFiles.requests == []


class TorchHubFiles(http.server.BaseHTTPRequestHandler):
    files: dict = {}

    def do_GET(self):
        data = self.files.get(self.path.lstrip("/"))
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args):
        pass


def test_torch_hub_files_are_downloaded_with_their_hash_checked(tmp_path, monkeypatch):
    from sktransfer._weights import HubWeights, WeightsIntegrityError, load_state_dict

    source = tmp_path / "w.pth"
    torch.save({"w": torch.arange(3.0)}, source)
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    TorchHubFiles.files = {f"net-{digest[:8]}.pth": data, "bad-12345678.pth": data}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TorchHubFiles)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("SKTRANSFER_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        state = load_state_dict(HubWeights(f"{base}/net-{digest[:8]}.pth"))
        assert torch.equal(state["w"], torch.arange(3.0))
        assert (tmp_path / "torch" / "hub" / "checkpoints" / f"net-{digest[:8]}.pth").is_file()
        # A file whose bytes do not start the hash its name carries is not kept.
        with pytest.raises(WeightsIntegrityError, match="hash"):
            load_state_dict(HubWeights(f"{base}/bad-12345678.pth"))
        assert not (tmp_path / "torch" / "hub" / "checkpoints" / "bad-12345678.pth").exists()
    finally:
        server.shutdown()


class TestUnreachableHub:
    """Without a network and without the offline switch, say so at once, and how to go offline."""

    @pytest.fixture
    def hub_at(self, tmp_path, monkeypatch):
        from huggingface_hub import constants

        monkeypatch.delenv("SKTRANSFER_OFFLINE", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))

        def point(address):
            template = f"http://{address}/{{repo_id}}/resolve/{{revision}}/{{filename}}"
            monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)

        return point

    def test_a_closed_port_fails_fit_at_once(self, hub_at):
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{closed.getsockname()[1]}"
        hub_at(address)  # nothing listens there now: connections are refused
        X = np.zeros((2, 32, 32, 3), dtype=np.uint8)
        start = time.perf_counter()
        with pytest.raises(WeightsNotFoundError, match="did not answer.*SKTRANSFER_OFFLINE=1"):
            sktransfer.PretrainedFeaturizer("test_resnet.r160_in1k").fit(X)
        assert time.perf_counter() - start < 10  # huggingface_hub alone retried for ~47 s

    def test_a_hub_that_never_answers_is_given_one_short_timeout(self, hub_at, monkeypatch):
        from sktransfer import _weights

        monkeypatch.setattr(_weights, "HUB_TIMEOUT_S", 0.5)
        with socket.socket() as silent:  # accepts connections, never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            hub_at(f"127.0.0.1:{silent.getsockname()[1]}")
            start = time.perf_counter()
            with pytest.raises(WeightsNotFoundError, match="within 0.5 s"):
                _weights.HFWeights(REPO).locate()
        assert time.perf_counter() - start < 5
