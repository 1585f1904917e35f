"""``flwr-vproto deploy certs`` (:mod:`flwr_vproto.deploy.certs`): a CA, a SuperLink certificate it signed for the
right hosts, SuperNode key pairs in the format Flower 1.42 loads (``load_ssh_private_key`` /
``load_ssh_public_key`` of an EC key on a NIST curve)."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwr_vproto.deploy import certs
from flwr_vproto.deploy.cli import main


def test_make_certs(tmp_path):
    made = certs.make_certs(tmp_path, hosts=["superlink.example.org", "10.0.0.5"], supernodes=["bank"])
    ca = x509.load_pem_x509_certificate(made["ca"].read_bytes())
    server = x509.load_pem_x509_certificate(made["superlink-cert"].read_bytes())
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "superlink.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("10.0.0.5")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(made["superlink-key"].read_bytes(), None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()

    private = serialization.load_ssh_private_key(made["bank-key"].read_bytes(), None)
    public = serialization.load_ssh_public_key(made["bank-pub"].read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert all(made[k].stat().st_mode & 0o077 == 0 for k in ("ca-key", "superlink-key", "bank-key"))

    with pytest.raises(SystemExit, match="exists; pass --force"):
        certs.make_certs(tmp_path)
    assert certs.make_certs(tmp_path, force=True)["ca"].read_bytes() != ca.public_bytes(serialization.Encoding.PEM)


def test_the_certs_command_makes_an_organisations_own_key_pair_only(tmp_path, capsys):
    assert main(["certs", str(tmp_path), "--keys-only", "--supernodes", "bank"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.key", "bank.pub"]  # no CA, no certificate
    assert f"bank-key: {tmp_path / 'bank.key'}" in capsys.readouterr().out
    public = serialization.load_ssh_public_key((tmp_path / "bank.pub").read_bytes())
    assert public.public_numbers() == serialization.load_ssh_private_key(
        (tmp_path / "bank.key").read_bytes(), None).public_key().public_numbers()
