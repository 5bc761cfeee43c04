#!/usr/bin/env python3
"""Score enterprises with a joint model on the bank's node, as a platform would.

    pip install grpcio grpcio-tools
    python3 examples/python/score.py --node bank@127.0.0.1:7001 \
        --identity unseen-demo/certs/platform --model sme-credit 25115 2346

--node is NAME@HOST:PORT, NAME being the name in the node's certificate. --identity is a
directory with ca.crt, node.crt and node.key (from `unseen cert`); the bank's configuration
must list that certificate's name under [[scoring.clients]] for the model. Prints one JSON
object per id: probability of default, scorecard points and risk band, or the reason the id
could not be scored. The gRPC stubs are generated from node/proto at run time.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "node", "proto")


def load_stubs():
    out = tempfile.mkdtemp(prefix="unseen-stubs-")
    status = protoc.main([
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        os.path.join(PROTO_ROOT, "unseen", "v1", "scoring.proto"),
    ])
    if status != 0:
        sys.exit(f"protoc failed on {PROTO_ROOT}")
    sys.path.insert(0, out)
    return (importlib.import_module("unseen.v1.scoring_pb2"),
            importlib.import_module("unseen.v1.scoring_pb2_grpc"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True, help="NAME@HOST:PORT of the bank's node")
    parser.add_argument("--identity", required=True, help="directory with ca.crt, node.crt, node.key")
    parser.add_argument("--model", required=True)
    parser.add_argument("ids", nargs="+")
    args = parser.parse_args()

    name, _, address = args.node.partition("@")
    if not address:
        sys.exit("--node must be NAME@HOST:PORT")

    def read(file):
        with open(os.path.join(args.identity, file), "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("ca.crt"),
        private_key=read("node.key"),
        certificate_chain=read("node.crt"),
    )
    pb, rpc = load_stubs()
    options = [("grpc.ssl_target_name_override", name)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        stub = rpc.ScoringStub(channel)
        try:
            reply = stub.Score(pb.ScoreRequest(model_id=args.model, ids=args.ids), timeout=30)
        except grpc.RpcError as error:
            sys.exit(f"{error.code().name}: {error.details()}")
    for score in reply.scores:
        if score.status == pb.SCORE_STATUS_OK:
            band = pb.RiskBand.Name(score.band).removeprefix("RISK_BAND_").lower()
            print(json.dumps({"id": score.id, "probability": score.probability,
                              "points": score.points, "band": band}))
        else:
            print(json.dumps({"id": score.id, "error": score.error}))


if __name__ == "__main__":
    main()
