#!/usr/bin/env python3
"""Recomputes psi's known answers with an independent ristretto255 (RFC 9496) written from
the RFC in plain Python integers, and checks them against psi/src/crypto.rs.

    python3 psi/vectors/known_answers.py          # prints the values and checks them

It first checks itself against RFC 9496's own vectors (small multiples of the generator and
the hash-to-group map of Appendix A), then computes what psi's `known_answers` test pins:
H(salt, id) = from_uniform_bytes(SHA-512(domain || salt || len(id) as u64 LE || id)), the
guest's blinded points k_a·H and the tags SHA-256(tag domain || k_b·k_a·H)[:12], with
k = SHA-512(label) mod l. Exit status 1 on any mismatch. Slow (pure Python), but a second.
"""
import hashlib
import re
import sys
from pathlib import Path

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def is_negative(x):
    return (x % P) & 1


def ct_abs(x):
    return (-x) % P if is_negative(x) else x % P


def sqrt_ratio_m1(u, v):
    """(was_square, r) with r = sqrt(u/v) or sqrt(i·u/v), non-negative (RFC 9496 4.2)."""
    u, v = u % P, v % P
    v3 = v * v * v % P
    v7 = v3 * v3 * v % P
    r = u * v3 * pow(u * v7, (P - 5) // 8, P) % P
    check = v * r * r % P
    correct = check == u
    flipped = check == (-u) % P
    flipped_i = check == (-u * SQRT_M1) % P
    if flipped or flipped_i:
        r = r * SQRT_M1 % P
    return correct or flipped, ct_abs(r)


def inverse(x):
    return pow(x, P - 2, P)


# RFC 9496 fixes the odd ("negative") square root of a·d - 1; the other constants are even.
SQRT_AD_MINUS_ONE = -sqrt_ratio_m1(-D - 1, 1)[1] % P
INVSQRT_A_MINUS_D = sqrt_ratio_m1(1, -1 - D)[1]
ONE_MINUS_D_SQ = (1 - D * D) % P
D_MINUS_ONE_SQ = (D - 1) * (D - 1) % P


def add(p1, p2):
    """Extended twisted Edwards addition, a = -1."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * 2 * D * t2 % P
    d = z1 * 2 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


IDENTITY = (0, 1, 1, 0)


def multiply(k, point):
    result = IDENTITY
    while k:
        if k & 1:
            result = add(result, point)
        point = add(point, point)
        k >>= 1
    return result


def encode(point):
    """RFC 9496 4.3.2."""
    x0, y0, z0, t0 = point
    u1 = (z0 + y0) * (z0 - y0) % P
    u2 = x0 * y0 % P
    _, invsqrt = sqrt_ratio_m1(1, u1 * u2 * u2)
    den1 = invsqrt * u1 % P
    den2 = invsqrt * u2 % P
    z_inv = den1 * den2 * t0 % P
    if is_negative(t0 * z_inv):
        x, y, den_inv = y0 * SQRT_M1 % P, x0 * SQRT_M1 % P, den1 * INVSQRT_A_MINUS_D % P
    else:
        x, y, den_inv = x0, y0, den2
    if is_negative(x * z_inv):
        y = -y % P
    s = ct_abs(den_inv * (z0 - y))
    return s.to_bytes(32, "little")


def element(t):
    """The map of RFC 9496 4.3.4."""
    r = SQRT_M1 * t * t % P
    u = (r + 1) * ONE_MINUS_D_SQ % P
    v = (-1 - r * D) * (r + D) % P
    was_square, s = sqrt_ratio_m1(u, v)
    if not was_square:
        s = -ct_abs(s * t) % P
    c = P - 1 if was_square else r
    n = (c * (r - 1) * D_MINUS_ONE_SQ - v) % P
    w0 = 2 * s * v % P
    w1 = n * SQRT_AD_MINUS_ONE % P
    w2 = (1 - s * s) % P
    w3 = (1 + s * s) % P
    return (w0 * w3 % P, w2 * w1 % P, w1 * w3 % P, w0 * w2 % P)


def from_uniform_bytes(b):
    def field(half):
        return (int.from_bytes(half, "little") & (2**255 - 1)) % P

    return add(element(field(b[:32])), element(field(b[32:])))


def generator():
    y = 4 * inverse(5) % P
    x_squared = (y * y - 1) * inverse(D * y * y + 1) % P
    _, x = sqrt_ratio_m1(x_squared, 1)
    return (x, y, 1, x * y % P)


def rfc_vectors():
    """(small multiples, map vectors) from rfc9496.txt beside this script."""
    multiples, maps = [], []
    for line in (Path(__file__).resolve().parent / "rfc9496.txt").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "multiple":
            multiples.append(fields[2])
        elif fields and fields[0] == "map":
            maps.append((fields[1], fields[2]))
    return multiples, maps


def blind_key(label):
    return int.from_bytes(hashlib.sha512(label.encode()).digest(), "little") % L


def hash_to_point(salt, identifier):
    digest = hashlib.sha512(
        b"unseen/psi/v1/hash-to-ristretto255"
        + salt
        + len(identifier).to_bytes(8, "little")
        + identifier
    ).digest()
    return from_uniform_bytes(digest)


def tag(point):
    return hashlib.sha256(b"unseen/psi/v1/tag" + encode(point)).digest()[:12]


def pinned(name):
    """The hex strings of constant `name` in psi/src/crypto.rs."""
    source = (Path(__file__).resolve().parent.parent / "src" / "crypto.rs").read_text()
    block = re.search(name + r": \[&str; \d+\] = \[(.*?)\];", source, re.S).group(1)
    return re.findall(r'"([0-9a-f]+)"', block)


def main():
    failures = 0

    def check(what, got, want):
        nonlocal failures
        if got != want:
            failures += 1
            print(f"MISMATCH {what}: {got} != {want}")

    small_multiples, map_vectors = rfc_vectors()
    point = IDENTITY
    for i, want in enumerate(small_multiples):
        check(f"{i}·B", encode(point).hex(), want)
        point = add(point, generator())
    for i, (uniform, want) in enumerate(map_vectors):
        check(f"map vector {i}", encode(from_uniform_bytes(bytes.fromhex(uniform))).hex(), want)

    salt = b"unseen known-answer test salt 01"
    ka, kb = blind_key("known-answer guest"), blind_key("known-answer host")
    ids = ["91350100MA2XNAB43K", "customer-0001", "\u00e9"]
    blinded = [multiply(ka, hash_to_point(salt, i.encode())) for i in ids]
    single = [encode(p).hex() for p in blinded]
    tags = [tag(multiply(kb, p)).hex() for p in blinded]
    print("KNOWN_SINGLE", single)
    print("KNOWN_TAGS  ", tags)
    check("KNOWN_SINGLE", single, pinned("KNOWN_SINGLE"))
    check("KNOWN_TAGS", tags, pinned("KNOWN_TAGS"))
    if failures:
        sys.exit(1)
    print("psi's known answers agree with an independent ristretto255 (RFC 9496 vectors pass)")


if __name__ == "__main__":
    main()
