"""The TPM: every TPM 2.0 call of the appliance goes through this module.

One :class:`Tpm` holds one ESAPI connection (tpm2-pytss) behind a lock. The
TCTI comes from the configuration: ``device:/dev/tpmrm0`` on the Pi (the
kernel's resource manager), ``swtpm:host=127.0.0.1,port=N`` in development and
tests (raw TCP: no resource manager, three transient object slots, so every
transient object and session is flushed as soon as it is no longer needed).

Errors become :class:`TpmError` (HTTP 503, fail closed) with a reason a person
can act on: unreachable, dictionary-attack lockout, or the TPM's own code.
A lost connection is re-opened on the next call, so service resumes when the
TPM comes back.

What lives in the TPM (see docs/tpm.md):

* the **device key** at :data:`DEVICE_KEY_HANDLE`: ECC P-256, ECDSA/SHA-256,
  fixedTPM|fixedParent|sensitiveDataOrigin (never leaves the chip), noDA;
* two **NV counters**: :data:`EPOCH_NV_INDEX` (token epoch, bumped by
  ``revoke-all``) and :data:`BOOT_NV_INDEX` (bumped at every broker start).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The TSS logs every failed command at ERROR on stderr (a stopped TPM would
# flood the broker's journal with C-level noise on every call). Our own errors
# carry the reason; set TSS2_LOG=all+WARNING to see the library's view again.
os.environ.setdefault("TSS2_LOG", "all+NONE")

from cryptography.hazmat.primitives.asymmetric.utils import (  # noqa: E402
    encode_dss_signature,
)
from tpm2_pytss import (  # noqa: E402
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_ECC,
    TPM2_HC,
    TPM2_NT,
    TPM2_PT,
    TPM2_RC,
    TPM2_RH,
    TPM2_ST,
    TPM2_SU,
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMA_NV,
    TPMA_OBJECT,
    TPMA_PERMANENT,
    TPMA_STARTUP,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_NV_PUBLIC,
    TPMT_HA,
    TPMT_SIG_SCHEME,
    TPMT_TK_HASHCHECK,
    TSS2_Exception,
)

from appliance.errors import Unavailable  # noqa: E402

log = logging.getLogger("appliance.tpm")

# The storage primary is re-created on demand from this template (the same
# template always gives the same key), so it needs no persistent handle.
STORAGE_TEMPLATE = "ecc256:aes128cfb"
STORAGE_ATTRS = "userwithauth|restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|noda"

# Persistent handle of the device key, in the owner's range (0x81000000-0x8100FFFF
# in the TCG handle registry). Not 0x81010001: that is where the TCG EK profile,
# tpm2-tools and Windows keep the RSA endorsement key; 0x81000001 is the SRK that
# FAPI and tpm2-tools take.
DEVICE_KEY_HANDLE = 0x81000A01
DEVICE_KEY_TEMPLATE = "ecc256:ecdsa-sha256"
# fixedTPM|fixedParent: the key can never be duplicated out of this TPM;
# sensitiveDataOrigin: the TPM made the private part, nobody ever saw it;
# noDA: a machine key must not count towards (nor be blocked by) the
# dictionary-attack lockout, which an unclean power-off can trip.
DEVICE_KEY_ATTRS = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign|noda"
_DEVICE_REQUIRED = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.NODA
)

# NV counters, in the owner's NV range (0x01800000-0x01BFFFFF in the registry).
EPOCH_NV_INDEX = 0x01800A10  # token epoch: revoke-all increments it
BOOT_NV_INDEX = 0x01800A11  # incremented at every broker start
# Owner authorisation to write (so a process that can merely reach the TPM
# cannot bump the epoch once an owner password is set), anyone may read
# (AUTHREAD with the empty index auth), noDA (a machine counter).
COUNTER_ATTRS = (
    TPMA_NV.OWNERWRITE
    | TPMA_NV.OWNERREAD
    | TPMA_NV.AUTHREAD
    | TPMA_NV.NO_DA
    | (TPM2_NT.COUNTER << TPMA_NV.TPM2_NT_SHIFT)
)

_TCTI_LAYER = 10 << 16  # TSS2_TCTI_RC_LAYER
_ESYS_BAD_SEQUENCE = (7 << 16) | 7  # ESYS state broken by an aborted command


class TpmError(Unavailable):
    """The TPM cannot serve: privileged actions stop (fail closed)."""

    code = "tpm_unavailable"


def _is_connection_error(e: TSS2_Exception) -> bool:
    rc = int(e.rc or 0)
    text = str(e).lower()
    return (
        (rc & 0xFF0000) == _TCTI_LAYER
        or rc == _ESYS_BAD_SEQUENCE
        or "tcti" in text
        or "io failure" in text
    )


def describe(e: BaseException, tcti: str | None = None) -> str:
    """A reason a person can act on, from a TSS error."""
    if isinstance(e, TSS2_Exception):
        rc = e.rc & 0xFFF if e.rc else 0
        if e.rc == TPM2_RC.LOCKOUT or rc == (TPM2_RC.LOCKOUT & 0xFFF):
            return (
                "the TPM is in dictionary-attack lockout; wait for the lockout to end "
                "or clear it with the lockout authorisation (see docs/tpm.md)"
            )
        text = str(e)
        if _is_connection_error(e):
            where = f" at {tcti}" if tcti else ""
            return f"the TPM{where} is unreachable ({text})"
        return f"the TPM refused the command ({text})"
    return f"TPM error: {e}"


class Tpm:
    """One connection to one TPM, shared by the broker's threads.

    ``owner_auth`` is the owner hierarchy's authorisation if provisioning set
    one (the default, empty, is what a fresh TPM and swtpm have)."""

    def __init__(self, tcti: str, *, owner_auth: bytes | None = None):
        self.tcti = tcti
        self.lock = threading.RLock()
        self.owner_auth = owner_auth
        self._esapi: ESAPI | None = None
        # ESYS handles of persistent objects and NV indices, per connection
        # (metadata only: they take no TPM slot).
        self._device_tr: ESYS_TR | None = None
        self._nv_tr: dict[int, ESYS_TR] = {}
        self._manufacturer: str | None = None

    # -- connection ----------------------------------------------------------

    def _connect(self) -> ESAPI:
        if self._esapi is None:
            try:
                self._esapi = ESAPI(self.tcti)
                if self.owner_auth:
                    self._esapi.tr_set_auth(ESYS_TR.OWNER, self.owner_auth)
            except TSS2_Exception as e:
                self._drop()
                raise TpmError(describe(e, self.tcti)) from None
        return self._esapi

    @contextmanager
    def use(self) -> Iterator[ESAPI]:
        """The ESAPI context, under the lock; TSS errors become TpmError.

        Callers flush every transient handle they create before leaving."""
        with self.lock:
            esapi = self._connect()
            try:
                yield esapi
            except TSS2_Exception as e:
                if _is_connection_error(e):
                    self._drop()  # reconnect on the next call
                raise TpmError(describe(e, self.tcti)) from None

    def _drop(self) -> None:
        if self._esapi is not None:
            with contextlib.suppress(Exception):  # the connection is already broken
                self._esapi.close()
            self._esapi = None
        self._device_tr = None
        self._nv_tr = {}
        self._manufacturer = None

    def storage_primary(self, esapi: ESAPI) -> ESYS_TR:
        """A transient handle of the owner-hierarchy storage primary (caller flushes)."""
        template = TPM2B_PUBLIC.parse(STORAGE_TEMPLATE, objectAttributes=STORAGE_ATTRS)
        handle, *_ = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.OWNER)
        return handle

    def close(self) -> None:
        """Orderly stop: TPM2_Shutdown(STATE), so that the TPM saves its state and a
        power-off that follows is not counted against the dictionary-attack lockout.

        Sent to swtpm too (dev mirrors the Pi). The TPM keeps serving commands
        after it, so another process (or a later ``use()``) can go on."""
        with self.lock:
            if self._esapi is not None:
                try:
                    self._esapi.shutdown(TPM2_SU.STATE)
                except TSS2_Exception as e:
                    log.warning("TPM shutdown failed: %s", describe(e, self.tcti))
            self._drop()

    def _flush(self, esapi: ESAPI, *handles: ESYS_TR | None) -> None:
        """Flush transient objects/sessions; never masks the error being raised."""
        for h in handles:
            if h is None:
                continue
            try:
                esapi.flush_context(h)
            except TSS2_Exception as e:  # the TPM may be gone: nothing left to flush
                log.debug("flush of %s failed: %s", h, e)

    def _handle_exists(self, esapi: ESAPI, handle: int) -> bool:
        _, cap = esapi.get_capability(TPM2_CAP.HANDLES, handle, 1)
        handles = list(cap.data.handles)
        return bool(handles) and int(handles[0]) == handle

    # -- the device key ------------------------------------------------------

    def _device(self, esapi: ESAPI) -> ESYS_TR:
        """The ESYS handle of the persistent device key, checked once per connection."""
        if self._device_tr is not None:
            return self._device_tr
        if not self._handle_exists(esapi, DEVICE_KEY_HANDLE):
            raise TpmError(
                f"the TPM has no device key at handle {DEVICE_KEY_HANDLE:#x}; "
                "start the broker once to create it (a new key is a new identity: "
                "paired desktops must pair again)"
            )
        tr = esapi.tr_from_tpmpublic(DEVICE_KEY_HANDLE)
        public, _, _ = esapi.read_public(tr)
        area = public.publicArea
        ok = (
            area.type == TPM2_ALG.ECC
            and area.parameters.eccDetail.curveID == TPM2_ECC.NIST_P256
            and (area.objectAttributes & _DEVICE_REQUIRED) == _DEVICE_REQUIRED
            and not area.objectAttributes & TPMA_OBJECT.RESTRICTED
        )
        if not ok:
            esapi.tr_close(tr)
            raise TpmError(
                f"the key at TPM handle {DEVICE_KEY_HANDLE:#x} is not an appliance device "
                "key (wrong type or attributes); refusing to use it"
            )
        self._device_tr = tr
        return tr

    def ensure_device_key(self) -> bytes:
        """The device public key (PEM); created and made persistent on first use."""
        with self.use() as esapi:
            if self._handle_exists(esapi, DEVICE_KEY_HANDLE):
                public, _, _ = esapi.read_public(self._device(esapi))
                return public.to_pem()
            primary = key = None
            try:
                primary = self.storage_primary(esapi)
                template = TPM2B_PUBLIC.parse(
                    DEVICE_KEY_TEMPLATE, objectAttributes=DEVICE_KEY_ATTRS
                )
                private, public, *_ = esapi.create(primary, TPM2B_SENSITIVE_CREATE(), template)
                key = esapi.load(primary, private, public)
                self._device_tr = esapi.evict_control(ESYS_TR.OWNER, key, DEVICE_KEY_HANDLE)
            finally:
                self._flush(esapi, key, primary)
            log.info("created the TPM device key at handle %#x", DEVICE_KEY_HANDLE)
            return public.to_pem()

    def device_public_pem(self) -> bytes:
        """The device public key (PEM); TpmError if the key was never created."""
        with self.use() as esapi:
            public, _, _ = esapi.read_public(self._device(esapi))
            return public.to_pem()

    def device_public(self) -> TPM2B_PUBLIC:
        """The device key's public area (attributes, curve), for checks and tests."""
        with self.use() as esapi:
            public, _, _ = esapi.read_public(self._device(esapi))
            return public

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 over SHA-256(data) with the device key; a DER signature.

        The hash is computed here (the TPM would only be slower at it) and the
        digest signed with a null hashcheck ticket, which an unrestricted key
        accepts."""
        digest = hashlib.sha256(data).digest()
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = TPM2_ALG.SHA256
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        with self.use() as esapi:
            sig = esapi.sign(self._device(esapi), digest, scheme, ticket)
        ecdsa = sig.signature.ecdsa
        return encode_dss_signature(
            int.from_bytes(bytes(ecdsa.signatureR), "big"),
            int.from_bytes(bytes(ecdsa.signatureS), "big"),
        )

    # -- NV counters ---------------------------------------------------------

    def _counter(self, esapi: ESAPI, index: int) -> ESYS_TR:
        """The ESYS handle of counter ``index``, defined (and incremented once) if new."""
        tr = self._nv_tr.get(index)
        if tr is not None:
            return tr
        if not self._handle_exists(esapi, index):
            info = TPM2B_NV_PUBLIC(
                nvPublic=TPMS_NV_PUBLIC(
                    nvIndex=index,
                    nameAlg=TPM2_ALG.SHA256,
                    attributes=COUNTER_ATTRS,
                    dataSize=8,
                )
            )
            tr = esapi.nv_define_space(None, info, ESYS_TR.OWNER)
            # A counter cannot be read before its first increment (NV_UNINITIALIZED).
            esapi.nv_increment(tr, ESYS_TR.OWNER)
            log.info("defined TPM NV counter %#x", index)
        else:
            tr = esapi.tr_from_tpmpublic(index)
            public, _ = esapi.nv_read_public(tr)
            attrs = public.nvPublic.attributes
            if TPMA_NV(attrs).nt != TPM2_NT.COUNTER or (attrs & COUNTER_ATTRS) != COUNTER_ATTRS:
                esapi.tr_close(tr)
                raise TpmError(
                    f"TPM NV index {index:#x} exists but is not the appliance's counter "
                    "(wrong type or attributes); refusing to trust it"
                )
            if not attrs & TPMA_NV.WRITTEN:  # defined, then interrupted before the increment
                esapi.nv_increment(tr, ESYS_TR.OWNER)
        self._nv_tr[index] = tr
        return tr

    def counter_read(self, index: int) -> int:
        """The value of NV counter ``index`` (defined on first use)."""
        with self.use() as esapi:
            tr = self._counter(esapi, index)
            return int.from_bytes(bytes(esapi.nv_read(tr, 8, 0, auth_handle=tr)), "big")

    def counter_increment(self, index: int) -> int:
        """Add one to NV counter ``index``; the new value. Monotonic, survives power loss."""
        with self.use() as esapi:
            tr = self._counter(esapi, index)
            esapi.nv_increment(tr, ESYS_TR.OWNER)
            return int.from_bytes(bytes(esapi.nv_read(tr, 8, 0, auth_handle=tr)), "big")

    # -- PCRs ----------------------------------------------------------------

    def pcr_read(self, indices: list[int]) -> dict[int, bytes]:
        """SHA-256 bank values of the given PCRs."""
        wanted = sorted(set(indices))
        for i in wanted:
            if not 0 <= i <= 23:
                raise ValueError(f"PCR index {i} out of range 0-23")
        out: dict[int, bytes] = {}
        with self.use() as esapi:
            # The TPM returns at most eight digests per call: ask again for the rest.
            while len(out) < len(wanted):
                rest = [i for i in wanted if i not in out]
                sel = TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, rest)))
                _, got_sel, digests = esapi.pcr_read(sel)
                got = _selected(got_sel)
                if not got:
                    raise TpmError("the TPM has no SHA-256 PCR bank")
                for i, d in zip(got, digests, strict=True):
                    out[i] = bytes(d)
        return out

    def pcr_extend(self, index: int, digest: bytes) -> None:
        """Extend PCR ``index`` (SHA-256 bank) with a 32-byte digest."""
        if not 0 <= index <= 23:
            raise ValueError(f"PCR index {index} out of range 0-23")
        if len(digest) != 32:
            raise ValueError("a SHA-256 PCR takes a 32-byte digest")
        values = TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256)])
        values.digests[0].digest.sha256 = digest
        with self.use() as esapi:
            esapi.pcr_extend(ESYS_TR(ESYS_TR.PCR0 + index), values)

    # -- health and lockout --------------------------------------------------

    def _properties(self, esapi: ESAPI) -> dict[int, int]:
        _, cap = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.VAR, 18)
        return {int(p.property): int(p.value) for p in cap.data.tpmProperties}

    def status(self) -> dict[str, Any]:
        """For /healthz: reachable, lockout counter and limits, in_lockout, manufacturer.

        Never raises: an unreachable TPM is reported as such."""
        try:
            with self.use() as esapi:
                props = self._properties(esapi)
                if self._manufacturer is None:
                    _, cap = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.MANUFACTURER, 1)
                    raw = int(cap.data.tpmProperties[0].value).to_bytes(4, "big")
                    self._manufacturer = raw.rstrip(b"\0").decode("ascii", "replace")
                manufacturer = self._manufacturer
        except TpmError as e:
            return {"reachable": False, "tcti": self.tcti, "reason": e.reason}
        return _status_from_properties(props, self.tcti, manufacturer)

    def check(self) -> None:
        """Raise TpmError unless the TPM is reachable and not in lockout."""
        st = self.status()
        if not st["reachable"]:
            raise TpmError(st["reason"])
        if st["in_lockout"]:
            raise TpmError(lockout_reason(st))

    def reset_lockout(self, lockout_auth: bytes = b"") -> None:
        """TPM2_DictionaryAttackLockReset: clear the failure counter (recovery).

        A wrong ``lockout_auth`` locks the lockout hierarchy itself for the
        TPM's lockout-recovery time: do not guess."""
        with self.use() as esapi:
            esapi.tr_set_auth(ESYS_TR.LOCKOUT, lockout_auth)
            try:
                esapi.dictionary_attack_lock_reset(ESYS_TR.LOCKOUT)
            finally:
                esapi.tr_set_auth(ESYS_TR.LOCKOUT, b"")

    def loaded_handles(self) -> dict[str, list[int]]:
        """Transient objects and sessions currently in the TPM (hygiene checks)."""
        with self.use() as esapi:
            out = {}
            for name, first in (
                ("transient", TPM2_HC.TRANSIENT_FIRST),
                ("loaded_sessions", TPM2_HC.LOADED_SESSION_FIRST),
            ):
                _, cap = esapi.get_capability(TPM2_CAP.HANDLES, first, 64)
                out[name] = [int(h) for h in cap.data.handles]
            return out


def _selected(sel: TPML_PCR_SELECTION) -> list[int]:
    """PCR indices selected in the SHA-256 bank of a selection, in order."""
    out: list[int] = []
    for s in sel.pcrSelections[: sel.count]:
        if s.hash != TPM2_ALG.SHA256:
            continue
        for byte_i in range(s.sizeofSelect):
            for bit in range(8):
                if s.pcrSelect[byte_i] & (1 << bit):
                    out.append(byte_i * 8 + bit)
    return out


def _status_from_properties(
    props: dict[int, int], tcti: str, manufacturer: str | None = None
) -> dict[str, Any]:
    """The /healthz view from TPM_PT_* values (split out so it can be checked alone)."""
    permanent = props.get(int(TPM2_PT.PERMANENT), 0)
    counter = props.get(int(TPM2_PT.LOCKOUT_COUNTER), 0)
    max_tries = props.get(int(TPM2_PT.MAX_AUTH_FAIL), 0)
    return {
        "reachable": True,
        "tcti": tcti,
        "manufacturer": manufacturer,
        "lockout_counter": counter,
        "max_tries": max_tries,
        "lockout_interval_s": props.get(int(TPM2_PT.LOCKOUT_INTERVAL), 0),
        "lockout_recovery_s": props.get(int(TPM2_PT.LOCKOUT_RECOVERY), 0),
        "in_lockout": bool(permanent & TPMA_PERMANENT.INLOCKOUT),
        # Whether the TPM's last stop was a TPM2_Shutdown (close()); False after a
        # power cut or a killed broker: worth knowing when the lockout counter rises.
        "last_shutdown_orderly": bool(
            props.get(int(TPM2_PT.STARTUP_CLEAR), 0) & TPMA_STARTUP.CLEAR_ORDERLY
        ),
    }


def lockout_reason(st: dict[str, Any]) -> str:
    """What a person reads when the TPM is in dictionary-attack lockout."""
    return (
        f"the TPM is in dictionary-attack lockout ({st['lockout_counter']} failed "
        f"authorisations, limit {st['max_tries']}); it forgives one failure every "
        f"{st['lockout_interval_s']} s, or clear it now with `tpm2_dictionarylockout -c` "
        "and the lockout authorisation (see docs/tpm.md)"
    )
