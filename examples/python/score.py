#!/usr/bin/env python3
"""Score enterprises with a joint model on the bank's node, as a platform would, with the
Python client in clients/python/ (`pip install ./clients/python`):

    python3 examples/python/score.py bank@127.0.0.1:7001 unseen-demo/certs/platform \
        sme-credit 25115 2346
"""

import sys

from unseen_client import ScoringClient

if len(sys.argv) < 5:
    sys.exit(__doc__)
node, identity, model, *ids = sys.argv[1:]
with ScoringClient(node, identity) as client:
    for score in client.score(model, ids):
        print(score)
