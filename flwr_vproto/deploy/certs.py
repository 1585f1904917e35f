"""Make the TLS certificates and SuperNode keys of a Flower deployment (``cryptography``, no ``openssl`` needed).

    flwr-vproto deploy certs certs/ --hosts superlink.example.org 10.0.0.5 --supernodes bank shop

writes into ``certs/``:

* ``ca.key``, ``ca.pem``: a certificate authority. ``ca.pem`` goes to every SuperNode and CLI user
  (``--root-certificates``, ``root-certificates`` in the CLI's ``config.toml``); ``ca.key`` stays offline with
  whoever runs the federation.
* ``superlink.key``, ``superlink.pem``: the SuperLink's key and certificate, signed by the CA, valid for
  ``localhost``, ``127.0.0.1`` and every ``--hosts`` name or IP (``flower-superlink --ssl-ca-certfile ca.pem
  --ssl-certfile superlink.pem --ssl-keyfile superlink.key``).
* ``<name>.key``, ``<name>.pub`` per SuperNode: the EC P-384 key pair Flower 1.42 authenticates SuperNodes with,
  in OpenSSH format. Each organisation should rather make its own pair (``--keys-only --supernodes bank``, or
  ``ssh-keygen -t ecdsa -b 384 -N "" -f bank``) and send only the ``.pub`` to the federation's operator, who
  registers it with ``flwr supernode register bank.pub <connection>``; the SuperNode starts with
  ``--auth-supernode-private-key bank.key``.

Private keys are written with mode 0600. Existing files are not overwritten unless ``--force``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write(path: Path, data: bytes, private: bool, force: bool) -> Path:
    if path.exists() and not force:
        raise SystemExit(f"{path} exists; pass --force to replace it")
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flwr-vproto federation CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: list[str],
                     days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The SuperLink's certificate: valid for ``hosts`` (DNS names or IPs), for TLS servers only."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    return key, cert


def make_supernode_keys(folder: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """``<name>.key`` / ``<name>.pub``: an EC P-384 pair in OpenSSH format, what ``flower-supernode`` loads."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return (_write(folder / f"{name}.key", private, True, force),
            _write(folder / f"{name}.pub", public + f" {name}\n".encode(), False, force))


def make_certs(folder: Path, hosts: list[str] | None = None, supernodes: list[str] | None = None,
               days: int = 365, force: bool = False) -> dict[str, Path]:
    """Everything above into ``folder``; returns the paths by name (``ca``, ``superlink-cert``, ``<node>-key``...)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ["localhost", "127.0.0.1", *[h for h in hosts or [] if h not in ("localhost", "127.0.0.1")]]
    ca_key, ca_cert = make_ca(days)
    key, cert = make_server_cert(ca_key, ca_cert, names, days)
    pem = serialization.Encoding.PEM
    out = {
        "ca-key": _write(folder / "ca.key", _pem_key(ca_key), True, force),
        "ca": _write(folder / "ca.pem", ca_cert.public_bytes(pem), False, force),
        "superlink-key": _write(folder / "superlink.key", _pem_key(key), True, force),
        "superlink-cert": _write(folder / "superlink.pem", cert.public_bytes(pem), False, force),
    }
    for node in supernodes or []:
        out[f"{node}-key"], out[f"{node}-pub"] = make_supernode_keys(folder, node, force)
    return out
