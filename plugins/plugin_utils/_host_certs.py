# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""OpenSSH host certificates, checked against ``@cert-authority`` lines as ssh(1) checks them.

Large fleets trust a host CA instead of collecting every host key. Paramiko negotiates the
``*-cert-v01@openssh.com`` host-key algorithms and proves that the server holds the key the
certificate is for, but reads nothing else in the certificate: not who signed it, for which
names, until when. This module does that part, in OpenSSH's order and words (sshconnect.c
``check_host_key``, sshkey.c ``sshkey_cert_check_host``): the certificate key or its CA
``@revoked``; a CA listed ``@cert-authority`` for the host's known_hosts name; the CA's
signature (with an algorithm OpenSSH accepts by default: no SHA-1 ``ssh-rsa``); a host (not
user) certificate; within its validity period; a principal that matches the name the host
was reached by (principals may be wildcards); no critical options.

Pure Python except the signature check, which uses ``cryptography`` (already Paramiko's).
"""

from __future__ import annotations

import base64
import struct
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, List, Optional, Sequence, Tuple

from . import _known_hosts
from ._known_hosts import KnownHost

CERT_SUFFIX = "-cert-v01@openssh.com"
HOST_CERT = 2
USER_CERT = 1
FOREVER = 0xFFFFFFFFFFFFFFFF
#: The signature algorithms OpenSSH accepts from a CA by default (CASignatureAlgorithms) that
#: this module can verify; security-key CAs (``sk-*``) are OpenSSH's too but not verified here.
CA_SIGNATURE_ALGORITHMS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
#: OpenSSH refuses RSA keys below this size (SSH_RSA_MINIMUM_MODULUS_SIZE).
RSA_MINIMUM_BITS = 1024


class CertificateError(ValueError):
    """A blob that is not a certificate this module can read."""


class _Reader:
    """SSH wire format (RFC 4251): uint32, uint64, string, mpint."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CertificateError("truncated certificate")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def uint64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def string(self) -> bytes:
        return self.take(self.uint32())

    def text(self) -> str:
        try:
            return self.string().decode("utf-8")
        except UnicodeDecodeError:
            raise CertificateError("a name in the certificate is not UTF-8") from None

    def mpint(self) -> int:
        return int.from_bytes(self.string(), "big", signed=True)

    def done(self) -> bool:
        return self.pos == len(self.data)


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


#: Certificate type -> (plain key type, number of SSH strings/mpints in its public key).
_KEY_FIELDS = {
    "ssh-ed25519": 1,  # string pk
    "ecdsa-sha2-nistp256": 2,  # string curve, string Q
    "ecdsa-sha2-nistp384": 2,
    "ecdsa-sha2-nistp521": 2,
    "ssh-rsa": 2,  # mpint e, mpint n
}
#: Certificate type names that carry an RSA key: one per signature hash, one key type.
_RSA_CERT_NAMES = ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512")


@dataclass(frozen=True)
class HostCertificate:
    """The fields of an OpenSSH certificate (PROTOCOL.certkeys) that a client checks."""

    cert_type: str
    key_type: str  # the plain key type: ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa...
    key: bytes  # the plain public key blob (what @revoked and plain known_hosts lines hold)
    serial: int
    kind: int  # HOST_CERT or USER_CERT
    key_id: str
    principals: Tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: bytes
    extensions: bytes
    ca_key: bytes  # the signature key blob
    signature: bytes
    signed_data: bytes = field(repr=False)

    @property
    def key_b64(self) -> str:
        return base64.b64encode(self.key).decode("ascii")

    @property
    def ca_b64(self) -> str:
        return base64.b64encode(self.ca_key).decode("ascii")

    @property
    def ca_type(self) -> str:
        try:
            return _Reader(self.ca_key).text()
        except CertificateError:
            return "unknown"

    def describe(self) -> str:
        """OpenSSH's words: ``ID "web1" serial 7 CA ssh-ed25519 SHA256:…``."""
        return (
            f'{self.cert_type} ID "{self.key_id}" serial {self.serial} signed by CA {self.ca_type} '
            f"{_known_hosts.fingerprint(self.ca_b64)}"
        )

    def validity(self) -> str:
        return f"valid from {_when(self.valid_after)} to {_when(self.valid_before)}"


def _when(stamp: int) -> str:
    if stamp == FOREVER:
        return "forever"
    if stamp == 0:
        return "always"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(min(stamp, 253402300799)))


def is_certificate_type(name: str) -> bool:
    return name.endswith(CERT_SUFFIX)


def parse(blob: bytes) -> HostCertificate:
    """Read a certificate blob (as the server sends it, or base64-decoded from a ``-cert.pub``)."""
    r = _Reader(blob)
    cert_type = r.text()
    if not is_certificate_type(cert_type):
        raise CertificateError(f"{cert_type} is not a certificate type")
    base = cert_type[: -len(CERT_SUFFIX)]
    key_type = "ssh-rsa" if base in _RSA_CERT_NAMES else base
    if key_type not in _KEY_FIELDS:
        raise CertificateError(f"{cert_type} certificates are not supported")
    r.string()  # nonce
    start = r.pos
    for _field in range(_KEY_FIELDS[key_type]):
        r.string()
    key = _string(key_type.encode()) + blob[start : r.pos]
    serial = r.uint64()
    kind = r.uint32()
    key_id = r.text()
    principals_blob = _Reader(r.string())
    principals: List[str] = []
    while not principals_blob.done():
        principals.append(principals_blob.text())
    valid_after = r.uint64()
    valid_before = r.uint64()
    critical = r.string()
    extensions = r.string()
    r.string()  # reserved
    ca_key = r.string()
    signed_end = r.pos
    signature = r.string()
    if not r.done():
        raise CertificateError("trailing data after the certificate's signature")
    return HostCertificate(
        cert_type,
        key_type,
        key,
        serial,
        kind,
        key_id,
        tuple(principals),
        valid_after,
        valid_before,
        critical,
        extensions,
        ca_key,
        signature,
        blob[:signed_end],
    )


# -- the CA's signature ------------------------------------------------------------------------


def _signature_error(cert: HostCertificate) -> Optional[str]:
    """None when the CA's signature over the certificate is valid, else why not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    sig = _Reader(cert.signature)
    try:
        algorithm = sig.text()
        raw = sig.string()
        ca = _Reader(cert.ca_key)
        ca_type = ca.text()
        if algorithm not in CA_SIGNATURE_ALGORITHMS:
            return f"Certificate signed with disallowed algorithm ({algorithm})"
        if ca_type == "ssh-ed25519" and algorithm == "ssh-ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(ca.string()).verify(raw, cert.signed_data)
            return None
        if ca_type.startswith("ecdsa-sha2-") and algorithm == ca_type:
            curves = {
                "nistp256": (ec.SECP256R1(), hashes.SHA256()),
                "nistp384": (ec.SECP384R1(), hashes.SHA384()),
                "nistp521": (ec.SECP521R1(), hashes.SHA512()),
            }
            curve_name = ca.text()
            if curve_name not in curves or ca_type != f"ecdsa-sha2-{curve_name}":
                return f"the CA's key has an unknown curve ({curve_name})"
            curve, digest = curves[curve_name]
            public = ec.EllipticCurvePublicKey.from_encoded_point(curve, ca.string())
            rs = _Reader(raw)
            public.verify(encode_dss_signature(rs.mpint(), rs.mpint()), cert.signed_data, ec.ECDSA(digest))
            return None
        if ca_type == "ssh-rsa" and algorithm.startswith("rsa-sha2-"):
            e, n = ca.mpint(), ca.mpint()
            if n.bit_length() < RSA_MINIMUM_BITS:
                return f"the CA's RSA key is too small ({n.bit_length()} bits)"
            digest_for = {"rsa-sha2-256": hashes.SHA256(), "rsa-sha2-512": hashes.SHA512()}
            rsa.RSAPublicNumbers(e, n).public_key().verify(
                raw, cert.signed_data, padding.PKCS1v15(), digest_for[algorithm]
            )
            return None
        return f"the CA's {ca_type} key cannot make {algorithm} signatures"
    except InvalidSignature:
        return "the CA's signature on the certificate is invalid"
    except (CertificateError, ValueError) as e:
        return f"the CA's key or signature cannot be read ({e})"


# -- the verdict -------------------------------------------------------------------------------


class CertStatus(str, Enum):
    ACCEPTED = "accepted"
    #: No ``@cert-authority`` line for this host names the certificate's CA: ssh then checks
    #: the plain key against known_hosts (its "Retry with plain key").
    NO_CA = "no_ca"
    #: A CA is listed for the host but the certificate fails a check: refused unless the plain
    #: key is known (ssh falls back to it too).
    INVALID = "invalid"
    #: The certificate's key or its CA is ``@revoked``: refused, no fallback.
    REVOKED = "revoked"


@dataclass
class CertVerdict:
    status: CertStatus
    reason: str = ""
    entry: Optional[KnownHost] = None  # the CA line that matched, or the @revoked line
    cert: Optional[HostCertificate] = None


def _principal_matches(principal: str, name: str) -> bool:
    """ssh matches host certificate principals as patterns (``*.example.com``)."""
    return _known_hosts.glob(principal.lower(), name.lower())


def check(
    blob: bytes, entries: Iterable[KnownHost], name: str, principal_names: Sequence[str], now: Optional[float] = None
) -> CertVerdict:
    """Check the host certificate ``blob`` the server offered.

    ``name`` is the known_hosts name (``host`` or ``[host]:port``) the CA lines must match;
    ``principal_names`` are what the host was reached by (the address or name given, and a
    host key alias if any): one must be a listed principal.
    """
    entries = list(entries)
    try:
        cert = parse(blob)
    except CertificateError as e:
        return CertVerdict(CertStatus.INVALID, f"the host certificate cannot be read ({e})")
    for key, what in ((cert.key_b64, "host key"), (cert.ca_b64, "certificate authority")):
        revoked = _known_hosts.revoked(entries, key)
        if revoked is not None:
            return CertVerdict(
                CertStatus.REVOKED, f"the certificate's {what} is marked @revoked in {revoked.where}", revoked, cert
            )
    ca = next((e for e in _known_hosts.cert_authorities(entries, name) if e.key == cert.ca_b64), None)
    if ca is None:
        listed = _known_hosts.cert_authorities(entries, name)
        reason = f"no @cert-authority line for {name} lists its CA {_known_hosts.fingerprint(cert.ca_b64)}" + (
            f" (lines for other CAs: {', '.join(e.where for e in listed)})" if listed else ""
        )
        return CertVerdict(CertStatus.NO_CA, reason, None, cert)
    reason = _invalid(cert, principal_names, time.time() if now is None else now)
    if reason:
        return CertVerdict(CertStatus.INVALID, reason, ca, cert)
    return CertVerdict(CertStatus.ACCEPTED, "", ca, cert)


def _invalid(cert: HostCertificate, principal_names: Sequence[str], now: float) -> str:
    """OpenSSH's reason for refusing a certificate from a listed CA, or ""."""
    signature = _signature_error(cert)
    if signature:
        return signature
    if cert.kind != HOST_CERT:
        return "Certificate invalid: not a host certificate" + (
            " (a user certificate)" if cert.kind == USER_CERT else ""
        )
    if now < cert.valid_after:
        return f"Certificate invalid: not yet valid ({cert.validity()})"
    if now >= cert.valid_before:
        return f"Certificate invalid: expired ({cert.validity()})"
    if not cert.principals:
        return "Certificate lacks principal list"
    if not any(_principal_matches(p, n) for p in cert.principals for n in principal_names):
        return (
            f"Certificate invalid: name is not a listed principal ({' or '.join(principal_names)} not in "
            f"{', '.join(cert.principals)})"
        )
    if cert.critical_options:
        return "Certificate contains unsupported critical options"
    return ""


def certificate_types(key_types: Iterable[str]) -> List[str]:
    """The certificate host-key algorithms for ``key_types`` (plain names), in their order."""
    return [f"{t}{CERT_SUFFIX}" for t in key_types if not is_certificate_type(t)]


def verify_offer(
    entries: Iterable[KnownHost],
    name: str,
    principal_names: Sequence[str],
    keytype: str,
    key: str,
    cert_blob: Optional[bytes] = None,
    now: Optional[float] = None,
) -> Tuple[_known_hosts.Verdict, Optional[CertVerdict]]:
    """The decision on what the server offered, as ssh makes it: a certificate from a listed CA
    is enough; a revoked certificate key or CA ends it; otherwise the plain key must be known
    (ssh's "Retry with plain key"). ``keytype`` and ``key`` are the plain key's; the certificate
    verdict (when one was offered) says why a certificate did not do, for the error message."""
    entries = list(entries)
    cert: Optional[CertVerdict] = None
    if cert_blob is not None:
        cert = check(cert_blob, entries, name, principal_names, now)
        if cert.status is CertStatus.ACCEPTED:
            return _known_hosts.Verdict(_known_hosts.Status.KNOWN, cert.entry), cert
        if cert.status is CertStatus.REVOKED:
            return _known_hosts.Verdict(_known_hosts.Status.REVOKED, cert.entry), cert
    return _known_hosts.verify(entries, name, keytype, key), cert


def prefers_certificates(entries: Iterable[KnownHost], name: str) -> bool:
    """Whether to ask for a host certificate first: a CA is trusted for ``name`` (ssh always
    asks first; we ask only then, so a plain-key fleet negotiates exactly as before)."""
    return bool(_known_hosts.cert_authorities(entries, name))
