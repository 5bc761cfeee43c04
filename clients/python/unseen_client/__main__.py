"""unseen-score: score enterprises with a joint model on the bank's node, as a platform would.

    unseen-score --node bank@127.0.0.1:7001 --identity unseen-demo/certs/platform \
        --model sme-credit 25115 2346

Prints one JSON object per id: probability of default, scorecard points and risk band, or
the reason the id could not be scored.
"""

import argparse
import json
import sys

import grpc

from unseen_client import ScoringClient


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True, help="NAME@HOST:PORT of the bank's node")
    parser.add_argument("--identity", required=True,
                        help="directory with ca.crt, node.crt, node.key")
    parser.add_argument("--model", required=True)
    parser.add_argument("ids", nargs="+")
    args = parser.parse_args()
    try:
        with ScoringClient(args.node, args.identity) as client:
            scores = client.score(args.model, args.ids)
    except ValueError as error:
        sys.exit(str(error))
    except grpc.RpcError as error:
        sys.exit(f"{error.code().name}: {error.details()}")
    for score in scores:
        print(json.dumps(score))


if __name__ == "__main__":
    main()
