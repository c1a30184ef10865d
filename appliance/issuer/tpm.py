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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_RC,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TSS2_Exception,
)

from appliance.errors import Unavailable

log = logging.getLogger("appliance.tpm")

# The storage primary is re-created on demand from this template (the same
# template always gives the same key), so it needs no persistent handle.
STORAGE_TEMPLATE = "ecc256:aes128cfb"
STORAGE_ATTRS = (
    "userwithauth|restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|noda"
)


class TpmError(Unavailable):
    """The TPM cannot serve: privileged actions stop (fail closed)."""

    code = "tpm_unavailable"


def describe(e: BaseException) -> str:
    """A reason a person can act on, from a TSS error."""
    if isinstance(e, TSS2_Exception):
        rc = e.rc & 0xFFF if e.rc else 0
        if e.rc == TPM2_RC.LOCKOUT or rc == (TPM2_RC.LOCKOUT & 0xFFF):
            return (
                "the TPM is in dictionary-attack lockout; wait for the lockout to end "
                "or clear it with the lockout authorisation (see docs/tpm.md)"
            )
        text = str(e)
        if "tcti" in text.lower() or "io failure" in text.lower():
            return f"the TPM is unreachable ({text})"
        return f"the TPM refused the command ({text})"
    return f"TPM error: {e}"


class Tpm:
    """One connection to one TPM, shared by the broker's threads."""

    def __init__(self, tcti: str):
        self.tcti = tcti
        self.lock = threading.RLock()
        self._esapi: ESAPI | None = None

    def _connect(self) -> ESAPI:
        if self._esapi is None:
            try:
                self._esapi = ESAPI(self.tcti)
            except TSS2_Exception as e:
                raise TpmError(describe(e)) from None
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
                if "tcti" in str(e).lower() or "io failure" in str(e).lower():
                    self._drop()  # reconnect on the next call
                raise TpmError(describe(e)) from None

    def _drop(self) -> None:
        if self._esapi is not None:
            try:
                self._esapi.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass
            self._esapi = None

    def storage_primary(self, esapi: ESAPI) -> ESYS_TR:
        """A transient handle of the owner-hierarchy storage primary (caller flushes)."""
        template = TPM2B_PUBLIC.parse(STORAGE_TEMPLATE, objectAttributes=STORAGE_ATTRS)
        handle, *_ = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.OWNER)
        return handle

    def close(self) -> None:
        """Orderly stop: TPM2_Shutdown(STATE) on a real device, so an unclean
        power-off is not counted against the dictionary-attack lockout."""
        with self.lock:
            if self._esapi is not None and self.tcti.startswith("device"):
                try:
                    from tpm2_pytss import TPM2_SU

                    self._esapi.shutdown(TPM2_SU.STATE)
                except TSS2_Exception as e:
                    log.warning("TPM shutdown failed: %s", describe(e))
            self._drop()
