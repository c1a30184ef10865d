"""The PCR plan: what the sealed secrets are bound to, and who may change it.

At start the appliance measures its installed code into PCR 23. The update
publisher signs a PCR policy (``SignedPolicy``) for the code it ships with
the policy key (``PolicySigner``); a sealed secret names that key, not the
PCR values, so an update ships a newly signed policy instead of re-sealing
anything (``tpm_seal.py``). See docs/sealing.md for what this protects.

The publisher's tool::

    python -m appliance.issuer.pcr_policy measure TREE/appliance
    python -m appliance.issuer.pcr_policy authorize --key KEY TREE/appliance OUT.json
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CC,
    TPM2_SE,
    TPM2B_PUBLIC,
    TPMA_OBJECT,
    TPML_PCR_SELECTION,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
)

from appliance.errors import ApplianceError
from appliance.issuer.keys import key_id, read_secret, write_secret
from appliance.issuer.tpm import Tpm

log = logging.getLogger("appliance.tpm_seal")

POLICY_FORMAT = "appliance-pcr-policy-v1"

# PCR 23 is the PC Client "application support" PCR: free for software to
# use, and resettable at locality 0 (so is PCR 16, the debug PCR, which we
# leave alone). The Pi firmware measures nothing, so PCRs 0-15 stay zero
# unless something extends them. See docs/sealing.md for what follows.
MEASUREMENT_PCR = 23
DEFAULT_PCRS = [MEASUREMENT_PCR]
RESETTABLE_PCRS = frozenset({16, 23})


class SealError(ApplianceError):
    """A sealed secret could not be released: the broker must fail closed."""

    status = 503
    code = "unseal_refused"


# --------------------------------------------------------------------------
# PCR policy digests (software and TPM trial session agree; tests check it)


def _cc(code: int) -> bytes:
    return int(code).to_bytes(4, "big")


def pcr_selection(pcrs: Iterable[int]) -> TPML_PCR_SELECTION:
    """The SHA-256 bank selection of these PCRs."""
    pcrs = sorted(set(pcrs))
    if not pcrs or any(not 0 <= p <= 23 for p in pcrs):
        raise ValueError(f"bad PCR list {pcrs!r}")
    return TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(p) for p in pcrs))


def pcr_values_digest(pcr_values: dict[int, bytes]) -> bytes:
    """SHA-256 of the PCR values concatenated in ascending PCR order (TPM2_PolicyPCR,
    TPM2_Quote)."""
    return hashlib.sha256(b"".join(pcr_values[p] for p in sorted(pcr_values))).digest()


def software_pcr_policy_digest(pcr_values: dict[int, bytes]) -> bytes:
    """The policy digest of TPM2_PolicyPCR over these values, without a TPM.

    This is what the update publisher computes for the new code's PCR values."""
    sel = pcr_selection(pcr_values)
    return hashlib.sha256(
        b"\0" * 32 + _cc(TPM2_CC.PolicyPCR) + sel.marshal() + pcr_values_digest(pcr_values)
    ).digest()


def authorized_policy_digest(signer_name: bytes, policy_ref: bytes = b"") -> bytes:
    """The sealed object's authPolicy: PolicyAuthorize(signer, ref) then PolicyAuthValue."""
    d = hashlib.sha256(b"\0" * 32 + _cc(TPM2_CC.PolicyAuthorize) + signer_name).digest()
    d = hashlib.sha256(d + policy_ref).digest()
    return hashlib.sha256(d + _cc(TPM2_CC.PolicyAuthValue)).digest()


def pcr_policy_digest(
    tpm: Tpm, pcrs: list[int], pcr_values: dict[int, bytes] | None = None
) -> bytes:
    """The PolicyPCR digest for the current (or the given) PCR values, computed by
    the TPM in a trial session."""
    sel = pcr_selection(pcrs)
    want = b""  # empty: the TPM uses the current values
    if pcr_values is not None:
        if sorted(pcr_values) != sorted(set(pcrs)):
            raise ValueError("pcr_values must give exactly the selected PCRs")
        want = pcr_values_digest(pcr_values)
    with tpm.use() as esapi:
        session = esapi.start_auth_session(
            ESYS_TR.NONE,
            ESYS_TR.NONE,
            TPM2_SE.TRIAL,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            TPM2_ALG.SHA256,
        )
        try:
            esapi.policy_pcr(session, want, sel)
            return bytes(esapi.policy_get_digest(session))
        finally:
            esapi.flush_context(session)


def read_pcrs(tpm: Tpm, pcrs: list[int]) -> dict[int, bytes]:
    """Current SHA-256 values of these PCRs."""
    return tpm.pcr_read(pcrs)


# --------------------------------------------------------------------------
# Measuring the appliance's own code into a PCR


def package_files(root: Path) -> list[Path]:
    """The files of an installed package directory that make up its code
    (byte-code caches left out: they change without the code changing)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    )


def measure_code(paths: list[Path], root: Path | None = None) -> bytes:
    """SHA-256 over the sorted relative paths and contents of these files.

    Deterministic: independent of the order given and of where the tree is
    installed (paths are taken relative to ``root``, by default their common
    parent). Each file contributes ``relpath NUL sha256(content) LF``, which is
    unambiguous (a renamed or moved file changes the measurement)."""
    if not paths:
        raise ValueError("nothing to measure")
    resolved = [Path(p).resolve() for p in paths]
    base = root.resolve() if root is not None else Path(os.path.commonpath(resolved))
    if len(resolved) == 1 and root is None:
        base = resolved[0].parent
    entries = sorted((p.relative_to(base).as_posix(), p) for p in resolved)
    h = hashlib.sha256(b"appliance-code-measurement-v1\n")
    for rel, p in entries:
        h.update(rel.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest() + b"\n")
    return h.digest()


def measure_installed_appliance() -> bytes:
    """The measurement of the running appliance package (what the broker
    extends into PCR 23 at start and the update publisher computes from the
    built tree)."""
    import appliance

    root = Path(appliance.__file__).resolve().parent
    return measure_code(package_files(root), root=root.parent)


def expected_pcr_value(measurement: bytes, initial: bytes = b"\0" * 32) -> bytes:
    """The SHA-256 PCR value after extending ``initial`` with ``measurement``."""
    return hashlib.sha256(initial + measurement).digest()


def extend_measurement(tpm: Tpm, pcr: int, digest: bytes) -> bytes:
    """Extend a PCR's SHA-256 bank with a 32-byte digest; returns the new value."""
    tpm.pcr_extend(pcr, digest)
    return tpm.pcr_read([pcr])[pcr]


def measure_at_start(tpm: Tpm, measurement: bytes, pcr: int = MEASUREMENT_PCR) -> bytes:
    """The start-up step: make ``pcr`` equal H(0 || measurement); return its value.

    A fresh boot has the PCR at zero: extend it. A restarted broker finds it
    already at the expected value: leave it. Anything else means something
    else extended it this boot: a resettable PCR (16, 23) is reset and
    re-extended (anyone at locality 0 could do the same, so refusing would
    protect nothing; see docs/sealing.md); any other PCR fails closed."""
    want = expected_pcr_value(measurement)
    current = read_pcrs(tpm, [pcr])[pcr]
    if current == want:
        return current
    if current != b"\0" * 32:
        if pcr not in RESETTABLE_PCRS:
            raise SealError(
                f"PCR {pcr} was already extended by something else this boot; "
                "reboot so the appliance measures first"
            )
        log.warning("PCR %d held a foreign value; resetting it before measuring", pcr)
        with tpm.use() as esapi:
            esapi.pcr_reset(ESYS_TR.PCR0 + pcr)
    return extend_measurement(tpm, pcr, measurement)


# --------------------------------------------------------------------------
# The policy key and signed policies


@dataclass(frozen=True)
class SignedPolicy:
    """A PCR policy approved by the policy key: the file shipped with an update
    and stored beside the sealed blobs. JSON-serialisable.

    ``signature`` is ES256 (DER, base64) over ``pcr_policy_digest || policy_ref``,
    i.e. over aHash = SHA-256(approvedPolicy || policyRef), exactly what
    TPM2_VerifySignature checks before TPM2_PolicyAuthorize."""

    pcrs: list[int]
    pcr_policy_digest: str  # hex
    policy_ref: str  # hex
    signature: str  # base64 DER ECDSA-SHA256
    signer_kid: str
    pcr_values_digest: str | None = None  # hex SHA-256 of the approved values, for humans
    pcr_values: dict[str, str] | None = None  # PCR -> hex, for humans
    note: str = ""
    format: str = POLICY_FORMAT
    extra: dict[str, str] = field(default_factory=dict)

    def message(self) -> bytes:
        return bytes.fromhex(self.pcr_policy_digest) + bytes.fromhex(self.policy_ref)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedPolicy:
        data = json.loads(text)
        if data.get("format") != POLICY_FORMAT:
            raise SealError(f"not a signed PCR policy (format {data.get('format')!r})")
        return cls(**data)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SignedPolicy:
        return cls.from_json(path.read_text())


def signer_public(public_pem: bytes) -> TPM2B_PUBLIC:
    """The policy key as a TPM public area (for TPM2_LoadExternal and its name)."""
    public = TPMT_PUBLIC.from_pem(
        public_pem, objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH
    )
    # pytss encodes the point's coordinates in their minimal length, so about
    # one key in 128 gets a 31-byte coordinate that the TPM refuses: always
    # give the full 32 bytes of a P-256 coordinate.
    key = serialization.load_pem_public_key(public_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("the policy key must be an ECC P-256 public key")
    numbers = key.public_numbers()
    public.unique.ecc.x = numbers.x.to_bytes(32, "big")
    public.unique.ecc.y = numbers.y.to_bytes(32, "big")
    return TPM2B_PUBLIC(publicArea=public)


def signer_name(public_pem: bytes) -> bytes:
    """The TPM name (nameAlg || SHA-256(TPMT_PUBLIC)) of the policy key."""
    return bytes(signer_public(public_pem).publicArea.get_name())


class PolicySigner:
    """The key that authorises PCR policies.

    In production the update publisher holds it (offline, or in its own HSM)
    and the box only knows its public half. In development it is a software
    key in a file of mode 0600 in the keys directory: UNSAFE, and logged so."""

    def __init__(self, private: ec.EllipticCurvePrivateKey, *, unsafe: bool = True):
        self._private = private
        self.unsafe = unsafe
        self.key_id = key_id(self.public_pem())

    @classmethod
    def load_or_create(cls, path: Path) -> PolicySigner:
        """The development policy key at ``path`` (created once, mode 0600)."""
        if path.exists():
            key = serialization.load_pem_private_key(read_secret(path), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise SealError(f"{path} is not an ECC policy key")
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = ec.generate_private_key(ec.SECP256R1())
            write_secret(
                path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        signer = cls(key, unsafe=True)
        log.warning(
            "UNSAFE development policy key %s in %s: in production the update "
            "publisher holds this key and the box has only its public half",
            signer.key_id,
            path,
        )
        return signer

    def public_pem(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def authorize(
        self,
        pcr_policy_digest: bytes,
        policy_ref: bytes = b"",
        *,
        pcrs: list[int] | None = None,
        pcr_values: dict[int, bytes] | None = None,
        note: str = "",
    ) -> SignedPolicy:
        """Sign a PolicyPCR digest (aHash = H(digest || policyRef))."""
        if len(pcr_policy_digest) != 32:
            raise ValueError("a SHA-256 policy digest is 32 bytes")
        if pcrs is None:
            pcrs = sorted(pcr_values) if pcr_values else list(DEFAULT_PCRS)
        signature = self._private.sign(pcr_policy_digest + policy_ref, ec.ECDSA(hashes.SHA256()))
        return SignedPolicy(
            pcrs=sorted(set(pcrs)),
            pcr_policy_digest=pcr_policy_digest.hex(),
            policy_ref=policy_ref.hex(),
            signature=base64.b64encode(signature).decode(),
            signer_kid=self.key_id,
            pcr_values_digest=pcr_values_digest(pcr_values).hex() if pcr_values else None,
            pcr_values={str(k): v.hex() for k, v in sorted(pcr_values.items())}
            if pcr_values
            else None,
            note=note,
        )

    def authorize_pcr_values(
        self, pcr_values: dict[int, bytes], policy_ref: bytes = b"", note: str = ""
    ) -> SignedPolicy:
        """What the update publisher runs: approve these PCR values (no TPM needed)."""
        return self.authorize(
            software_pcr_policy_digest(pcr_values),
            policy_ref,
            pcrs=sorted(pcr_values),
            pcr_values=pcr_values,
            note=note,
        )


def main(argv: list[str] | None = None) -> int:
    """The update publisher's tool: measure a built appliance tree and sign the
    PCR policy for it.

        python -m appliance.issuer.pcr_policy measure TREE/appliance
        python -m appliance.issuer.pcr_policy authorize --key KEY TREE/appliance OUT.json
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m appliance.issuer.pcr_policy")
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="print the code measurement and expected PCR value")
    m.add_argument("package", type=Path, help="the appliance package directory")
    a = sub.add_parser("authorize", help="sign a PCR policy for this code")
    a.add_argument("--key", type=Path, required=True, help="the policy key (PEM)")
    a.add_argument("--pcr", type=int, default=MEASUREMENT_PCR)
    a.add_argument("--policy-ref", default="", help="hex policyRef (default empty)")
    a.add_argument("package", type=Path)
    a.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    package = args.package.resolve()
    measurement = measure_code(package_files(package), root=package.parent)
    value = expected_pcr_value(measurement)
    if args.cmd == "measure":
        print(f"measurement {measurement.hex()}\nPCR value   {value.hex()}")
        return 0
    signer = PolicySigner.load_or_create(args.key)
    policy = signer.authorize_pcr_values(
        {args.pcr: value},
        bytes.fromhex(args.policy_ref),
        note=f"code measurement {measurement.hex()}",
    )
    policy.save(args.out)
    print(f"signed policy for PCR {args.pcr} = {value.hex()} by {signer.key_id} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
