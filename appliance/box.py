"""One place that wires the box: every part built from the configuration.

``open_box`` is what ``appliance up`` runs and what the tests run; a test
hands in what it wants to control (a key store, a panel on gpiozero's mock
pins, a clock for the approval queue and the panel) instead of sleeping or
patching. The parts are built in the order each needs the last; if one
cannot be built, those already built are closed again and the reason is
raised (fail closed: no broker runs half-made).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from appliance.approval import ApprovalQueue, Panel
from appliance.approval.gpio import make_panel
from appliance.approval.receipts import ReceiptStore
from appliance.audit import AuditLog
from appliance.broker.clients import Clients
from appliance.broker.evaluate import Evaluator
from appliance.broker.executor import Executor
from appliance.broker.files import FileOps
from appliance.broker.plans import PlanStore
from appliance.broker.quota import ReadQuota
from appliance.broker.recovery import recover
from appliance.broker.retention import Retention
from appliance.broker.scope import Shares
from appliance.broker.service import Broker
from appliance.broker.snapshots import SnapshotStore
from appliance.broker.state import Parts
from appliance.broker.storage import Storage
from appliance.broker.tasks import TaskStore
from appliance.config import Config
from appliance.db import Database
from appliance.issuer.choose import open_keystore
from appliance.issuer.keys import KeyStore, ephemeral_signer
from appliance.issuer.statement import BootChain
from appliance.issuer.tokens import TokenService
from appliance.plugins.host import PluginHost
from appliance.policy import PolicyEngine

log = logging.getLogger("appliance.broker")

Clock = Callable[[], float]


def open_box(
    config: Config,
    *,
    keystore: KeyStore | None = None,
    panel: Panel | None = None,
    clock: Clock = time.monotonic,
    now: Clock = time.time,
) -> Broker:
    """Build every part from ``config`` and start the broker on them.

    ``keystore``: the key store to use (default: the one the configuration
    chooses, opened here and closed with the broker). ``panel``: the
    approval panel (default: the one the configuration names, on ``clock``).
    ``clock``: the monotonic clock of the approval queue (arming delay,
    deadlines, lockouts, the pairing window) and of a panel built here.
    ``now``: the wall clock retention counts days on."""
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.ExitStack() as stack:
        if keystore is None:
            opened = open_keystore(config)
            stack.callback(opened.close)
            keystore = opened.keystore
        parts = _parts(config, keystore, panel, clock, now, stack)
        recover(parts.plans, parts.files, parts.shares, parts.audit, parts.retention)
        rollback = _rollback(parts.audit, keystore.boot_count)
        # Earlier snapshots adopted, interrupted purges finished, expired
        # items purged; then every purge_interval_s.
        parts.retention.start()
        # From here on the broker owns every part: broker.close() closes them,
        # a panel handed in last (a failed start leaves that one open, so
        # `appliance up` can retry with its pins still claimed).
        owned = contextlib.ExitStack()
        if panel is not None:
            owned.callback(panel.close)
        owned.enter_context(stack.pop_all())
        broker = Broker(parts, rollback=rollback, close=owned.close)
    try:
        broker.start()
    except BaseException:
        broker.close()
        raise
    return broker


def _parts(
    config: Config,
    keystore: KeyStore,
    panel: Panel | None,
    clock: Clock,
    now: Clock,
    stack: contextlib.ExitStack,
) -> Parts:
    storage = Storage(
        config.state_dir,
        low_free_bytes=config.retention.low_free_bytes,
        reserve_bytes=config.retention.reserve_bytes,
    )
    # A full disk: the reserve makes room for the entries of reads and approvals.
    db = Database(config.db_path, on_full=storage.release)
    stack.callback(db.close)
    signer = keystore.device_signer()
    audit = AuditLog(
        config.audit_dir,
        signer,
        signer_label=keystore.label,
        boot_count=keystore.boot_count,
        session_signer=ephemeral_signer(unsafe=keystore.unsafe),
        on_full=storage.release,
    )
    stack.callback(audit.close)
    policy = PolicyEngine.load(config.policy_dir)
    tokens = TokenService(keystore, db, ttl_s=config.token_ttl_s)
    tokens.sync_epoch(keystore.epoch())
    chain = BootChain(keystore, tokens)
    shares = Shares(config.shares, config.limits)
    snapshots = SnapshotStore(config.snapshots_dir)
    files = FileOps(shares, snapshots, config.limits)
    retention = Retention(
        db=db,
        files=files,
        snapshots=snapshots,
        audit=audit,
        settings=config.retention,
        state_dir=config.state_dir,
        now=now,
    )
    stack.callback(retention.close)
    plans = PlanStore(db)
    receipts = ReceiptStore(db, signer, keystore.label)
    if panel is None:
        panel = make_panel(config.panel, dev=config.dev, clock=clock)
        stack.callback(panel.close)
    approvals = ApprovalQueue(config.approvals, panel, clock=clock)
    stack.callback(approvals.close)
    panel.connect(approvals)
    clients = Clients(db, keystore.secret("credential_pepper"), sorted(config.shares))
    evaluator = Evaluator(shares, policy, clients, ReadQuota(config.limits.read_bytes_per_minute))
    return Parts(
        config=config,
        keystore=keystore,
        signer=signer,
        db=db,
        audit=audit,
        policy=policy,
        tokens=tokens,
        chain=chain,
        shares=shares,
        snapshots=snapshots,
        files=files,
        retention=retention,
        storage=storage,
        plans=plans,
        task_store=TaskStore(db),
        clients=clients,
        receipts=receipts,
        panel=panel,
        approvals=approvals,
        plugins=PluginHost(
            config=config,
            tokens=tokens,
            shares=shares,
            files=files,
            evaluator=evaluator,
            audit=audit,
        ),
        evaluator=evaluator,
        executor=Executor(
            clients=clients,
            chain=chain,
            tokens=tokens,
            shares=shares,
            files=files,
            plans=plans,
            receipts=receipts,
            audit=audit,
            retention=retention,
            storage=storage,
        ),
    )


def _rollback(audit: AuditLog, boot_count: int) -> str | None:
    """The log's newest checkpoint must come from the previous start (or this
    one): an older one means the log was put back to an earlier copy."""
    last = audit.latest_checkpoint()
    if last["boot_count"] >= boot_count - 1:
        return None
    reason = (
        f"the audit log's newest checkpoint is from start {last['boot_count']}, "
        f"but the TPM counts {boot_count - 1} earlier ones (boots, on the box): "
        "the log was rolled back"
    )
    log.error("%s", reason)
    audit.append(
        "broker.audit_rollback", {"log_boot_count": last["boot_count"], "boot_count": boot_count}
    )
    return reason
