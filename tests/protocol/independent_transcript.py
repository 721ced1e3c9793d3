#!/usr/bin/env python3
"""An independent implementation of docs/PROTOCOL.md (version 1), written from the document with
Python's hashlib and the `cryptography` package, that re-derives every byte of
tests/protocol/vectors/cohort-v1-transcript.json from its fixed inputs. It shares no code with
protocol/; if it and the C++ agree, the document is precise enough to build a client from.

Usage: independent_transcript.py TRANSCRIPT.json   (exit 0: all fields match; 77: skipped)
"""
import hashlib
import hmac as _hmac  # noqa: F401  (HMAC is written out below, per the Noise spec)
import json
import struct
import sys

try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives import serialization
except ImportError:
    print("python3 cryptography package not installed; skipping")
    sys.exit(77)

RAW = serialization.Encoding.Raw
PUB = serialization.PublicFormat.Raw
PRIV = serialization.PrivateFormat.Raw
NOENC = serialization.NoEncryption()


def blake2b(data):
    return hashlib.blake2b(data, digest_size=64).digest()


def hmac_blake2b(key, data):
    key = key.ljust(128, b"\0")
    inner = blake2b(bytes(k ^ 0x36 for k in key) + data)
    return blake2b(bytes(k ^ 0x5C for k in key) + inner)


def hkdf(ck, ikm, n):
    temp = hmac_blake2b(ck, ikm)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = hmac_blake2b(temp, prev + bytes([i]))
        out.append(prev)
    return out


class Cipher:
    def __init__(self, k=None):
        self.k, self.n = k, 0

    def nonce(self):
        return b"\0\0\0\0" + struct.pack("<Q", self.n)

    def encrypt(self, ad, pt):
        if self.k is None:
            return pt
        ct = ChaCha20Poly1305(self.k).encrypt(self.nonce(), pt, ad)
        self.n += 1
        return ct

    def decrypt(self, ad, ct):
        if self.k is None:
            return ct
        pt = ChaCha20Poly1305(self.k).decrypt(self.nonce(), ct, ad)
        self.n += 1
        return pt


class Symmetric:
    def __init__(self, name, prologue):
        self.h = name.ljust(64, b"\0") if len(name) <= 64 else blake2b(name)
        self.ck = self.h
        self.c = Cipher()
        self.mix_hash(prologue)

    def mix_hash(self, data):
        self.h = blake2b(self.h + data)

    def mix_key(self, ikm):
        self.ck, k = hkdf(self.ck, ikm, 2)
        self.c = Cipher(k[:32])

    def encrypt_and_hash(self, pt):
        ct = self.c.encrypt(self.h, pt)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ct):
        pt = self.c.decrypt(self.h, ct)
        self.mix_hash(ct)
        return pt

    def split(self):
        k1, k2 = hkdf(self.ck, b"", 2)
        return Cipher(k1[:32]), Cipher(k2[:32])


def x25519(secret):
    k = X25519PrivateKey.from_private_bytes(secret)
    return k, k.public_key().public_bytes(RAW, PUB)


def dh(priv, pub):
    return priv.exchange(X25519PublicKey.from_public_bytes(pub))


def identity_payload(ed_priv, static_pub):
    pk = ed_priv.public_key().public_bytes(RAW, PUB)
    return pk + ed_priv.sign(b"cohort-noise-static-key:" + static_pub)


def check_identity_payload(payload, static_pub):
    assert len(payload) == 96
    Ed25519PublicKey.from_public_bytes(payload[:32]).verify(payload[32:], b"cohort-noise-static-key:" + static_pub)
    return payload[:32]


def framed(m):
    return struct.pack(">H", len(m)) + m


def seal_message(cipher, cls, body):
    """Section 6: header || body over transport messages of at most 65519 plaintext bytes."""
    data = bytes([cls]) + struct.pack(">I", len(body)) + body
    out = b""
    for i in range(0, max(len(data), 1), 65519):
        ct = cipher.encrypt(b"", data[i:i + 65519])
        out += framed(ct)
    return out


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def main(path):
    t = json.load(open(path))
    inp = {k: bytes.fromhex(v) for k, v in t["inputs"].items()}
    got = {}
    init_ed = Ed25519PrivateKey.from_private_bytes(inp["initiator_ed25519_seed"])
    resp_ed = Ed25519PrivateKey.from_private_bytes(inp["responder_ed25519_seed"])
    got["initiator_peer_id"] = init_ed.public_key().public_bytes(RAW, PUB)
    got["responder_peer_id"] = resp_ed.public_key().public_bytes(RAW, PUB)
    pre = b"COHORT\x01\x01"
    got["initiator_preamble"] = got["responder_preamble"] = pre

    s_i, s_i_pub = x25519(inp["initiator_static_x25519"])
    e_i, e_i_pub = x25519(inp["initiator_ephemeral_x25519"])
    s_r, s_r_pub = x25519(inp["responder_static_x25519"])
    e_r, e_r_pub = x25519(inp["responder_ephemeral_x25519"])

    # Initiator and responder, Noise_XX, prologue = both preambles.
    name = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
    I, R = Symmetric(name, pre + pre), Symmetric(name, pre + pre)
    # -> e
    I.mix_hash(e_i_pub)
    m1 = e_i_pub + I.encrypt_and_hash(b"")
    R.mix_hash(m1[:32])
    assert R.decrypt_and_hash(m1[32:]) == b""
    # <- e, ee, s, es
    resp_payload = identity_payload(resp_ed, s_r_pub)
    m2 = e_r_pub
    R.mix_hash(e_r_pub)
    R.mix_key(dh(e_r, e_i_pub))
    m2 += R.encrypt_and_hash(s_r_pub)
    R.mix_key(dh(s_r, e_i_pub))
    m2 += R.encrypt_and_hash(resp_payload)
    I.mix_hash(m2[:32])
    I.mix_key(dh(e_i, m2[:32]))
    rs = I.decrypt_and_hash(m2[32:80])
    I.mix_key(dh(e_i, rs))
    assert check_identity_payload(I.decrypt_and_hash(m2[80:]), rs) == got["responder_peer_id"]
    # -> s, se
    init_payload = identity_payload(init_ed, s_i_pub)
    m3 = I.encrypt_and_hash(s_i_pub)
    I.mix_key(dh(s_i, e_r_pub))
    m3 += I.encrypt_and_hash(init_payload)
    ris = R.decrypt_and_hash(m3[:48])
    R.mix_key(dh(e_r, ris))
    assert check_identity_payload(R.decrypt_and_hash(m3[48:]), ris) == got["initiator_peer_id"]
    assert I.h == R.h
    got.update(message1_wire=framed(m1), message2_wire=framed(m2), message3_wire=framed(m3),
               responder_identity_payload=resp_payload, initiator_identity_payload=init_payload,
               handshake_hash=I.h)

    i_send, i_recv = I.split()
    r_recv, r_send = R.split()  # the responder receives with c1, sends with c2
    got["verdict_wire"] = seal_message(r_send, 2, b"\x00")
    # Envelope{id: 1 (field 1), heartbeat (field 20){sent_unix_ms: 1000 (1), status: "ok" (3)}}
    hb = b"\x08" + varint(1000) + b"\x1a\x02ok"
    env = b"\x08\x01" + varint(20 << 3 | 2) + varint(len(hb)) + hb
    got["first_envelope_bytes"] = env
    got["first_envelope_wire"] = seal_message(i_send, 0, env)

    body = bytes.fromhex(t["update_body"])  # any serialized GradientUpdate; we check the signing rule
    digest = hashlib.blake2b(b"cohort/signed-update/v1\x00" + body, digest_size=32).digest()
    got["update_signing_digest"] = digest
    got["update_signature"] = init_ed.sign(digest)  # Ed25519 is deterministic

    bad = [k for k, v in got.items() if v.hex() != t[k]]
    for k in bad:
        print(f"MISMATCH {k}:\n  vector      {t[k]}\n  independent {got[k].hex()}")
    print(f"{len(got) - len(bad)}/{len(got)} fields reproduced independently")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
