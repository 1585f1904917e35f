"""End-to-end sealing of what one party sends another through the server (design §4). No Flower here.

The server relays every party-to-party payload (a passive's embeddings to the active party; gradient rows, second
prototypes, their class mask, pseudo-label thresholds and the test-rows flag to a passive; a passive's embeddings
in the prediction round), so it must not be able to read, alter, replay or re-route them:

* **Keys.** Each party draws a fresh X25519 key pair per run (:func:`new_private`); only its public half travels,
  relayed by the server at set-up. The active party and each passive then derive one 256-bit key per pair with
  HKDF-SHA256 (:func:`pair_key`) over the X25519 shared secret, salted with the run's config fingerprint. The
  private half stays in the party's ``context.state`` until the pair keys are derived, then is dropped; the pair
  keys live in the party's state and its own checkpoint (a resumed run opens what the server's checkpoint holds).
* **Against an active server** (one that hands each party its own public key and sits in the middle): a node may
  hold a long-term key pair (:func:`write_key_file`, node-config ``key-file``) and pin its peers' long-term public
  keys (node-config ``pin-active-key`` on a passive, ``pin-passive-<k>-key`` on the active party). The pair key
  then also mixes the long-term X25519 secret in, which a server without the private key files cannot compute, and
  a pinned key that does not match what arrived is refused in one line (:func:`check_pin`). Per-run keys stay in
  use, so every run still gets fresh keys.
* **AEAD.** ChaCha20-Poly1305 (:func:`seal` / :func:`open_sealed`) with associated data binding the config
  fingerprint, the exchange, the phase, the sender and the receiver (:func:`associated_data`): a payload tampered
  with, replayed in another round or run, or handed to another party does not open, and the receiver stops with
  a one-line :class:`~flwr_vproto.protocol.ProtocolError` naming itself, the sender, the phase and the round.

Nonces are 96 random bits from the OS for every payload. A counter derived from (round, phase, direction) would
repeat under the same key whenever a round is sealed twice, which this protocol does by design: a round retried
from a checkpoint (``checkpoint.retries``) or resumed is re-sealed with different content, and a repeated nonce
under ChaCha20-Poly1305 gives the XOR of two plaintexts away and lets anyone forge. With random nonces the chance of
a repeat among the ~10^4 payloads of a long run is ~10^-20.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from flwr_vproto.protocol import ProtocolError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
LENGTH_BYTES = 8  # the plaintext's length, sealed with it, so padding can be told from content
OVERHEAD = NONCE_BYTES + TAG_BYTES + LENGTH_BYTES  # bytes a sealed payload adds to its plaintext (padding aside)
INFO = b"flwr_vproto seal v1"

# What a payload is, as the associated data and errors name it.
EMBEDDINGS = "embeddings"  # passive -> active, training exchanges
FOR_PASSIVE = "gradients"  # active -> passive: gradient rows, second prototypes, mask, threshold, test-rows flag
PREDICTION = "prediction embeddings"  # passive -> active, the prediction round


class KeyFileError(ValueError):
    """A key file or a pinned key that is missing or malformed (a configuration error of one node)."""


# ------------------------------------------------------------------------------------------------ keys
def new_private() -> bytes:
    """A fresh X25519 private key (32 bytes), from the OS."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_of(private: bytes) -> bytes:
    """The X25519 public key (32 bytes) of ``private``."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _hex_key(text: str, where: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{where}: expected {2 * KEY_BYTES} hex digits (an X25519 key), got {len(text)} "
                           f"character(s)")
    return key


def write_key_file(path: str | Path) -> bytes:
    """Create a long-term X25519 private key file (hex, readable by its owner only; never overwrites); returns the
    public key to give the peers that pin it."""
    private = new_private()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private.hex() + "\n")
    return public_of(private)


def read_key_file(path: str | Path, where: str) -> bytes:
    """The private key in a :func:`write_key_file` file; ``where`` names the node-config key in errors."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise KeyFileError(f"{where}={str(path)!r}: cannot read the key file ({err.strerror})") from None
    return _hex_key(text, f"{where}={str(path)!r}")


def check_pin(pinned: str | None, got: bytes | None, me: str, peer: str, node_key: str) -> None:
    """Refuse a peer's long-term public key that is not the one this node pinned (node-config ``node_key``)."""
    if pinned is None:
        return
    want = _hex_key(str(pinned), f"{me}: node-config {node_key}")
    if got is None:
        raise ProtocolError(f"{me}: node-config {node_key} pins {peer}'s public key, but {peer}'s key arrived without "
                            f"a long-term key (its node-config key-file is unset, or the server dropped it)")
    if got != want:
        raise ProtocolError(f"{me}: {peer}'s long-term public key {got.hex()[:16]}... is not the one pinned by "
                            f"node-config {node_key} ({want.hex()[:16]}...): refusing to talk to it")


def pair_key(own_private: bytes, peer_public: bytes, fingerprint: str, *, own_static: bytes | None = None,
             peer_static: bytes | None = None) -> bytes:
    """The key a party shares with one peer: HKDF-SHA256 over the per-run X25519 secret (and, when both hold a
    long-term key, the long-term one), salted with the config fingerprint; the same on both sides."""
    secret = X25519PrivateKey.from_private_bytes(own_private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    publics = sorted([public_of(own_private), peer_public])
    if own_static is not None and peer_static is not None:
        secret += X25519PrivateKey.from_private_bytes(own_static).exchange(
            X25519PublicKey.from_public_bytes(peer_static))
        publics += sorted([public_of(own_static), peer_static])
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=fingerprint.encode(), info=INFO + b"".join(publics))
    return hkdf.derive(secret)


def static_key(node_config: Mapping[str, Any], me: str) -> bytes | None:
    """This node's long-term private key (node-config ``key-file``), if it has one."""
    path = node_config.get("key-file")
    return read_key_file(str(path), f"{me}: node-config key-file") if path else None


def publics(private: bytes, node_config: Mapping[str, Any], me: str) -> tuple[bytes, bytes | None]:
    """What a party announces: its per-run public key and, with a ``key-file``, its long-term one."""
    static = static_key(node_config, me)
    return public_of(private), None if static is None else public_of(static)


def learn_peer(own_private: bytes, keys: tuple[bytes | None, bytes | None], node_config: Mapping[str, Any],
               me: str, peer: str, pin: str, binding: str) -> bytes:
    """The key ``me`` shares with ``peer``, from the public keys the server relayed, once the long-term one has
    been checked against this node's pin (node-config ``pin``), if any."""
    public, static = keys
    if public is None or len(public) != KEY_BYTES:
        raise ProtocolError(f"{me}: {peer}'s public key did not arrive at set-up (a server or party of another "
                            f"version?)")
    check_pin(node_config.get(pin), static, me, peer, pin)
    return pair_key(own_private, public, binding, own_static=static_key(node_config, me), peer_static=static)


# ------------------------------------------------------------------------------------------------ AEAD
def associated_data(fingerprint: str, rnd: int, phase: str, sender: str, receiver: str) -> bytes:
    """What a sealed payload is bound to: the run's config, its exchange (round), what it is, who sent it to whom."""
    return "\x1f".join(["flwr_vproto", fingerprint, str(int(rnd)), phase, sender, receiver]).encode()


def seal(key: bytes, plaintext: bytes, aad: bytes, *, size: int | None = None) -> bytes:
    """nonce || ChaCha20-Poly1305(length || plaintext || zero padding); ``size``: pad the plaintext to that many
    bytes, so that the sealed length says nothing a padded-to payload would not (e.g. whether a flag was set)."""
    pad = max(0, (size or 0) - len(plaintext))
    nonce = os.urandom(NONCE_BYTES)
    body = struct.pack(">Q", len(plaintext)) + plaintext + bytes(pad)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, body, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes, *, receiver: str, sender: str, phase: str, rnd: int) -> bytes:
    """Inverse of :func:`seal`; anything that does not authenticate is refused in one line."""
    try:
        if len(blob) < OVERHEAD:
            raise InvalidTag
        body = ChaCha20Poly1305(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise ProtocolError(f"{receiver}: the sealed {phase} payload from {sender} for round {rnd} does not open "
                            f"(tampered with, replayed from another round or run, or re-routed): refused") from None
    (length,) = struct.unpack(">Q", body[:LENGTH_BYTES])
    return body[LENGTH_BYTES:LENGTH_BYTES + length]


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m flwr_vproto.sealing keygen PATH``: write a long-term key file, print its public key (pin it)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "keygen":
        print("usage: python -m flwr_vproto.sealing keygen PATH   (writes a private key file, prints its public "
              "key for the peers' node-config pin-*-key)", file=sys.stderr)
        return 2
    try:
        public = write_key_file(args[1])
    except FileExistsError:
        print(f"{args[1]} exists: not overwriting a key file", file=sys.stderr)
        return 1
    print(public.hex())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
