"""A platform's client of an unseen bank node's scoring service.

    from unseen_client import ScoringClient
    with ScoringClient("bank@127.0.0.1:7001", "certs/platform") as client:
        for score in client.score("sme-credit", ["25115", "2346"]):
            print(score)

The node is NAME@HOST:PORT, NAME being the name in its certificate; the identity is a
directory with ca.crt, node.crt and node.key (from `unseen cert`), whose certificate name the
bank lists under [[scoring.clients]] for the model. The gRPC stubs are generated from the
.proto shipped with this package the first time they are needed, into a cache directory
($XDG_CACHE_HOME or ~/.cache, under unseen-client/), and reused from there.
"""

import hashlib
import importlib
import os
import shutil
import sys
import tempfile

import grpc

_PROTO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "proto")
_PROTO = os.path.join("unseen", "v1", "scoring.proto")
_stubs = None


def _cache_dir():
    """Stubs for this .proto, made by this grpcio-tools for this protobuf runtime."""
    from importlib.metadata import version

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.sha256()
    with open(os.path.join(_PROTO_ROOT, _PROTO), "rb") as f:
        key.update(f.read())
    for package in ("grpcio-tools", "protobuf"):
        key.update(f"\0{package} {version(package)}".encode())
    return os.path.join(base, "unseen-client", key.hexdigest()[:16])


def _generate(out):
    """Generates the stubs into `out` whole, or not at all (another process may race)."""
    from grpc_tools import protoc

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="stubs-", dir=parent)
    try:
        status = protoc.main([
            "protoc",
            f"-I{_PROTO_ROOT}",
            f"--python_out={work}",
            f"--grpc_python_out={work}",
            os.path.join(_PROTO_ROOT, _PROTO),
        ])
        if status != 0:
            raise RuntimeError(f"protoc failed on {os.path.join(_PROTO_ROOT, _PROTO)}")
        try:
            os.replace(work, out)
        except OSError:
            pass  # another process put the same stubs there first
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stubs():
    """The scoring service's message and stub modules (generated once, then cached)."""
    global _stubs
    if _stubs is None:
        out = _cache_dir()
        if not os.path.isfile(os.path.join(out, "unseen", "v1", "scoring_pb2_grpc.py")):
            _generate(out)
        sys.path.insert(0, out)
        try:
            _stubs = (importlib.import_module("unseen.v1.scoring_pb2"),
                      importlib.import_module("unseen.v1.scoring_pb2_grpc"))
        finally:
            sys.path.remove(out)
    return _stubs


class ScoringClient:
    """A mutually authenticated connection to a bank node's scoring service."""

    def __init__(self, node, identity):
        name, _, address = node.partition("@")
        if not address:
            raise ValueError(f"node {node!r}: expected NAME@HOST:PORT")

        def read(file):
            with open(os.path.join(identity, file), "rb") as f:
                return f.read()

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read("ca.crt"),
            private_key=read("node.key"),
            certificate_chain=read("node.crt"),
        )
        options = [("grpc.ssl_target_name_override", name)]
        self._channel = grpc.secure_channel(address, credentials, options=options)
        self._pb, rpc = stubs()
        self._stub = rpc.ScoringStub(self._channel)

    def score(self, model, ids, timeout=30):
        """One dict per id: probability of default, scorecard points and risk band, or the
        reason the id could not be scored. Raises grpc.RpcError when the call fails."""
        pb = self._pb
        reply = self._stub.Score(pb.ScoreRequest(model_id=model, ids=list(ids)), timeout=timeout)
        scores = []
        for score in reply.scores:
            if score.status == pb.SCORE_STATUS_OK:
                band = pb.RiskBand.Name(score.band).removeprefix("RISK_BAND_").lower()
                scores.append({"id": score.id, "probability": score.probability,
                               "points": score.points, "band": band})
            else:
                scores.append({"id": score.id, "error": score.error})
        return scores

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()
