import dataclasses
import json
import threading

import pytest
import requests
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.readers import hash_ids
from dlrm_core.schema import SparseFeatureSpec, StreamSchema
from nodeworker.http import NodeHTTPServer
from nodeworker.request_codec import CodecLimits
from nodeworker.sample_cache import SampleCache, SampleCacheConfig
from tests.unit.cache_support import put_batch

SCHEMA = StreamSchema(
    sparse=(SparseFeatureSpec("user", 1000), SparseFeatureSpec("tags", 50)), dense=("age", "hour")
)


class Service:
    """Scores = sigmoid(sum of dense); a real sample cache behind feedback."""

    schema = SCHEMA

    def __init__(self):
        self.cache = SampleCache(SampleCacheConfig(label_window_s=60.0))
        self.next_id = 0
        self.lock = threading.Lock()
        self.batches: list[SparseBatch] = []

    def predict(self, batch):
        with self.lock:
            ids = torch.arange(self.next_id, self.next_id + len(batch))
            self.next_id += len(batch)
        batch = dataclasses.replace(batch, request_ids=ids)
        self.batches.append(batch)
        put_batch(self.cache, batch)
        return torch.sigmoid(batch.dense.sum(dim=1)), ids, 7

    def feedback(self, request_id, label):
        return self.cache.feedback(request_id, label)

    def health(self):
        return {"status": "ok"}


@pytest.fixture
def node():
    service = Service()
    server = NodeHTTPServer(service, limits=CodecLimits(max_batch=4, max_bag=3)).start()
    yield server.url, service
    server.stop()


def post(url, path, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url + path, data=data, timeout=10)


def req(user="u1", tags=("a", "b"), dense=(0.5, -0.5)):
    return {"sparse": {"user": user, "tags": list(tags)}, "dense": list(dense)}


def test_predict_then_feedback_joins(node):
    url, service = node
    r = post(url, "/v1/predict", {"requests": [req(), req(user=123456789, tags=(), dense=(1, 1))]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_ids"] == [0, 1] and body["model_version"] == 7
    assert body["scores"][0] == pytest.approx(0.5) and body["scores"][1] > 0.85
    batch = service.batches[0]
    # Hashed with the readers' stable hash: ints by their text, out-of-range ids land in range.
    users, _ = batch.feature("user")
    assert users.tolist() == hash_ids(["u1", "123456789"], 1000).tolist()
    tags, offsets = batch.feature("tags")
    assert tags.tolist() == [*hash_ids(["a", "b"], 50).tolist(), 0] and offsets.tolist() == [0, 2]
    r = post(url, "/v1/feedback", {"request_id": 1, "label": 1})
    assert r.status_code == 200 and r.json() == {"request_id": 1, "status": "joined"}
    joined = service.cache.take(10)
    assert joined.batch.request_ids.tolist() == [1] and joined.batch.labels.tolist() == [1.0]


def test_feedback_errors(node):
    url, _ = node
    post(url, "/v1/predict", {"requests": [req()]})
    assert post(url, "/v1/feedback", {"request_id": 0, "label": 0}).status_code == 200
    again = post(url, "/v1/feedback", {"request_id": 0, "label": 1})
    assert again.status_code == 409 and "no longer waiting" in again.json()["errors"]["request_id"]
    unknown = post(url, "/v1/feedback", {"request_id": 999, "label": 1})
    assert (
        unknown.status_code == 404
        and "Unknown request id" in unknown.json()["errors"]["request_id"]
    )
    bad = post(url, "/v1/feedback", {"request_id": "0", "label": 2, "x": 1})
    assert bad.status_code == 400
    assert set(bad.json()["errors"]) == {"request_id", "label", "x"}
    assert post(url, "/v1/feedback", {"request_id": True, "label": True}).status_code == 400


def test_predict_validation_reports_every_field(node):
    url, _ = node
    bad = {
        "requests": [
            {"sparse": {"user": 1.5, "tags": ["a"], "color": "red"}, "dense": [1, "x"]},
            {"sparse": {"tags": ["a", "b", "c", "d"]}, "dense": [1, 2, 3]},
            "nope",
            {"sparse": {"user": {"id": 1}, "tags": [None]}, "dense": [float("nan"), 1]},
        ]
    }
    r = requests.post(url + "/v1/predict", data=json.dumps(bad), timeout=10)
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert errors == {
        "requests[0].sparse.user": "Must be a string, an integer, null, or a list of them.",
        "requests[0].sparse.color": "Unknown feature.",
        "requests[0].dense": "Must be a list of 2 finite numbers.",
        "requests[1].sparse.user": "This feature is required (null or [] when missing).",
        "requests[1].sparse.tags": "At most 3 values per feature.",
        "requests[1].dense": "Must be a list of 2 finite numbers.",
        "requests[2]": 'Must be an object {"sparse": {...}, "dense": [...]}.',
        "requests[3].sparse.user": "Must be a string, an integer, null, or a list of them.",
        "requests[3].dense": "Must be a list of 2 finite numbers.",
    }


def test_request_level_errors(node):
    url, _ = node
    too_many = post(url, "/v1/predict", {"requests": [req()] * 5})
    assert (
        too_many.status_code == 413
        and "At most 4 requests" in too_many.json()["errors"]["requests"]
    )
    assert post(url, "/v1/predict", {"requests": []}).status_code == 400
    broken = post(url, "/v1/predict", b"{not json")
    assert broken.status_code == 400 and "Invalid JSON" in broken.json()["errors"]["body"]
    assert post(url, "/v1/nothing", {}).status_code == 404
    assert requests.put(url + "/v1/predict", data=b"{}", timeout=5).status_code == 405
    assert requests.get(url + "/v1/health", timeout=5).json() == {"status": "ok"}
    huge = post(url, "/v1/predict", b" " * (4 * 1024 * 1024 + 1))
    assert huge.status_code == 413
