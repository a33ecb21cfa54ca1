"""Certificates for the local control plane, and a kubeconfig with them embedded.

One run gets a fresh CA, an API-server serving certificate, an admin client certificate in
group `system:masters` and a service-account key pair (all ECDSA P-256, valid for 30 days).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVING_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
# 10.0.0.1 is the `kubernetes` Service's ClusterIP in --service-cluster-ip-range=10.0.0.0/24.
SERVING_IPS = ("127.0.0.1", "10.0.0.1")
ADMIN_USER = "torghut-admin"
ADMIN_GROUP = "system:masters"
_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files written by `write_pki`."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    builder = (
        _builder(subject, ca.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def write_pki(directory: Path, *, extra_ips: tuple[str, ...] = ()) -> Pki:
    """Generate the CA, certificates and keys into `directory` (created if missing).

    `extra_ips`: more IP SANs of the API server's serving certificate (the real node's IP, where pods reach it).
    """
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(*(directory / name for name in (
        "ca.crt", "ca.key", "apiserver.crt", "apiserver.key",
        "admin.crt", "admin.key", "sa.key", "sa.pub",
    )))  # fmt: skip

    ca_key = _key()
    ca_name = _name("torghut-localstack-ca")
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVING_DNS_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in (*SERVING_IPS, *extra_ips)]
    serving_key, admin_key, sa_key = _key(), _key(), _key()
    serving = _leaf(ca, ca_key, _name("kube-apiserver"), serving_key, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    admin = _leaf(ca, ca_key, _name(ADMIN_USER, ADMIN_GROUP), admin_key, ExtendedKeyUsageOID.CLIENT_AUTH)

    for cert, path in ((ca, pki.ca_cert), (serving, pki.serving_cert), (admin, pki.admin_cert)):
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for key, path in ((ca_key, pki.ca_key), (serving_key, pki.serving_key), (admin_key, pki.admin_key)):
        _write_key(path, key)
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki


def _load_ca(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pki.ca_key} is not an EC key")
    return ca, key


def issue(
    pki: Pki,
    cert_path: Path,
    key_path: Path,
    *,
    common_name: str,
    organization: str | None = None,
    server: bool = False,
    dns_names: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> None:
    """A leaf certificate from the run's CA: a client one (CN = user, O = group), or with `server` a serving one
    for `dns_names` and `ips`."""
    ca, ca_key = _load_ca(pki)
    key = _key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = _leaf(ca, ca_key, _name(common_name, organization), key, usage, sans)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def client_kubeconfig(server: str, ca_cert: Path, cert: Path, key: Path, *, user: str) -> dict[str, Any]:
    """A kubeconfig for one client certificate, everything embedded (the real node's kubelet, kube-proxy, ...)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}],
        "users": [{"name": user, "user": {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }


def kubeconfig(server: str, pki: Pki, *, name: str = "torghut-local") -> dict[str, Any]:
    """A kubeconfig for the admin user with every certificate and key embedded."""
    b64 = _b64

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_cert)}}],
        "users": [
            {
                "name": ADMIN_USER,
                "user": {
                    "client-certificate-data": b64(pki.admin_cert),
                    "client-key-data": b64(pki.admin_key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": ADMIN_USER, "namespace": "default"}}],
        "current-context": name,
    }
