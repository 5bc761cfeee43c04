#!/usr/bin/env python3
"""SecretFlow's ECDH-PSI (Curve25519) and unseen's PSI on the same ids, in one run.

    python3 -m venv /tmp/spu && /tmp/spu/bin/pip install spu==0.9.5
    /tmp/spu/bin/python benches/secretflow_psi.py --n 1000000

Both sides are two parties in one process on this machine's cores: SecretFlow as two threads
over its in-memory link (`spu.psi.psi_execute`, CSV in and out, as its API requires), unseen
through `cargo run --release --example psi` (ids in memory, messages through their wire form).
The ids are the same strings (those the example generates: `ent-…` common to both parties,
`p<party>-…` each party's own), and the script checks that both find the same intersection.
It prints the CPU, both times and peak memories, and the ratio.
"""

import argparse
import csv
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def party_ids(party, n, overlap):
    """The ids `examples/psi.rs` generates for `party`."""
    shared = round(overlap * n)
    return [f"ent-{i:010}" if i < shared else f"p{party}-{i:010}" for i in range(n)]


def cpu():
    model, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    wanted = [f for f in ("avx2", "avx512f", "avx512ifma", "sha_ni") if f in flags]
    return f"{model} [{' '.join(wanted)}], {os.cpu_count()} cores"


def secretflow(n, overlap, workdir):
    """Seconds for SecretFlow's two-party ECDH-PSI and the size of its intersection."""
    import spu.libspu.link as link
    import spu.psi as psi

    inputs, outputs = [], []
    for party in range(2):
        path = workdir / f"sf_in_{party}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id"])
            writer.writerows([i] for i in party_ids(party, n, overlap))
        inputs.append(path)
        outputs.append(workdir / f"sf_out_{party}.csv")

    desc = link.Desc()
    for party in range(2):
        desc.add_party(f"party{party}", f"127.0.0.1:{61530 + party}")
    contexts = [link.create_mem(desc, rank) for rank in range(2)]
    errors = []

    def run(rank):
        config = psi.PsiExecuteConfig(
            protocol_conf=psi.PsiProtocolConfig(
                protocol=psi.PsiProtocol.PROTOCOL_ECDH,
                receiver_rank=0,
                broadcast_result=True,
                ecdh_params=psi.EcdhParams(curve=psi.EllipticCurveType.CURVE_25519),
            ),
            input_params=psi.InputParams(
                path=str(inputs[rank]), selected_keys=["id"], keys_unique=True
            ),
            output_params=psi.OutputParams(path=str(outputs[rank]), disable_alignment=False),
        )
        try:
            psi.psi_execute(config, contexts[rank])
        except Exception as e:  # reported below, after both threads stopped
            errors.append(e)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise SystemExit(f"SecretFlow failed: {errors[0]}")
    with outputs[0].open() as f:
        intersection = sum(1 for _ in f) - 1
    return seconds, intersection


def unseen(n, overlap):
    """Seconds, intersection size and peak RSS (MiB) of unseen's two-party PSI."""
    out = subprocess.run(
        ["cargo", "run", "--quiet", "--release", "--example", "psi", "--",
         "--n", str(n), "--overlap", str(overlap), "--parties", "2"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout
    sys.stdout.write("".join(f"  unseen> {line}\n" for line in out.splitlines()))
    found = re.search(r"2 parties: ([\d.]+) s, intersection (\d+).*peak RSS so far (\d+) MiB", out)
    if not found:
        raise SystemExit(f"unexpected output from the psi example:\n{out}")
    return float(found[1]), int(found[2]), int(found[3])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="ids per party")
    parser.add_argument("--overlap", type=float, default=0.8, help="share of common ids")
    args = parser.parse_args()
    print(f"CPU: {cpu()}")
    print(f"two parties, {args.n} ids each, {args.overlap:.0%} common")
    # unseen first: its process is separate, so SecretFlow's memory does not count against it.
    unseen_seconds, unseen_common, unseen_rss = unseen(args.n, args.overlap)
    with tempfile.TemporaryDirectory() as workdir:
        sf_seconds, sf_common = secretflow(args.n, args.overlap, Path(workdir))
    sf_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if sf_common != unseen_common:
        raise SystemExit(f"intersections differ: SecretFlow {sf_common}, unseen {unseen_common}")
    print(f"SecretFlow ECDH-PSI (Curve25519): {sf_seconds:.1f} s, peak RSS {sf_rss:.0f} MiB "
          "(this Python process, CSV files included)")
    print(f"unseen PSI:                       {unseen_seconds:.1f} s, peak RSS {unseen_rss} MiB")
    print(f"intersection {unseen_common} on both; SecretFlow time / unseen time = "
          f"{sf_seconds / unseen_seconds:.2f}")


if __name__ == "__main__":
    main()
