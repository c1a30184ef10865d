"""The broker's configuration: where state lives, which shares exist, the limits.

One frozen dataclass, built from CLI flags (``appliance up``) or a TOML file,
so every part reads the same numbers.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

# The default policies ship in deploy/policies/ of the source tree; an image
# installs them to /etc/appliance/policies.
_SOURCE_POLICIES = Path(__file__).resolve().parents[1] / "deploy" / "policies"
DEFAULT_POLICY_DIR = (
    _SOURCE_POLICIES if _SOURCE_POLICIES.is_dir() else Path("/etc/appliance/policies")
)


PRODUCTION_AGENT_SOCKET = Path("/run/appliance-agent/agent.sock")


@dataclass(frozen=True)
class Limits:
    read_bytes: int = 1 << 20  # file.read answers at most this many bytes
    write_bytes: int = 1 << 20  # file.write accepts at most this many bytes
    body_bytes: int = 2 << 20  # any HTTP request body
    intents_per_plan: int = 256
    list_entries: int = 10_000
    name_bytes: int = 255  # one path component
    path_bytes: int = 4096  # a whole resource
    requests_per_second: float = 50.0  # per client, token bucket refill
    burst: int = 100  # per client, token bucket size
    tasks_per_client: int = 2  # tasks one client may have open (waiting, planning, running)
    task_queue: int = 32  # tasks waiting for the model, all clients together
    read_bytes_per_minute: int = 32 << 20  # file content one client may read per minute
    # Read results keep their content this long, then only its digest and size
    # (the content is in the share already); read-only plans keep their
    # actions this long, then only the plan's summary.
    read_results_s: float = 600.0


@dataclass(frozen=True)
class ApprovalSettings:
    timeout_s: float = 120.0  # no answer before this means deny
    arming_delay_s: float = 1.0  # presses this soon after a request appears are ignored
    queue_size: int = 8  # requests waiting behind the one shown
    per_requester: int = 3  # open requests (shown or waiting) from one requester
    # Pairing requests (from devices not yet paired) wait in a line of their
    # own: at most this many, one per address, and a paired desktop's request
    # is always shown before them, so a flood of them never holds one up.
    pairing_queue: int = 2
    # Against approval fatigue: this many denied or expired requests from one
    # requester within lockout_window_s lock it out for lockout_s (0: never).
    lockout_after: int = 3
    lockout_window_s: float = 600.0
    lockout_s: float = 900.0
    pairing_window_s: float = 120.0  # how long a long hold on the idle button opens pairing
    # Trusted arming (docs/console.md): a plan is approved by no press until
    # the owner's console has shown it when it deletes anything, changes
    # anything derived from file content, sends anything off the box, has
    # more than console_steps steps (0: any number), or has a step of
    # console_risk or above ("": no such threshold). The desktop that asks
    # chooses what its own screen says; only the box's own rendering counts.
    console_deletes: bool = True
    console_content: bool = True
    console_network: bool = True
    console_steps: int = 8
    console_risk: str = "high"


@dataclass(frozen=True)
class ConsoleSettings:
    """The box's own web console (docs/console.md)."""

    # How long a signed-in console stays signed in; its owner pairing ends
    # with it, and signing in again takes a press.
    session_s: float = 12 * 3600.0


@dataclass(frozen=True)
class PanelSettings:
    """The physical panel: pins (BCM numbers) and gesture timings.

    ``kind``: "auto" (production: gpio; development: virtual), "gpio" or
    "virtual". See hardware/pinmap.md for the wiring."""

    kind: str = "auto"
    button_pin: int = 17  # to GND; the internal pull-up holds it high
    led_pin: int = 27  # through a resistor to the LED's anode
    led_pwm: bool = True  # PWMLED (breathing); False: plain on/off LED
    rgb_pins: tuple[int, int, int] | None = None  # optional RGB LED (R, G, B)
    rgb_common_anode: bool = False
    debounce_s: float = 0.03  # a level must hold this long to count
    hold_s: float = 1.0  # hold at least this long to approve
    double_tap_s: float = 0.5  # second tap within this of the first's release: deny
    pairing_hold_s: float = 5.0  # hold this long while idle: open the pairing window
    outcome_s: float = 2.0  # how long the LED shows approved/denied/expired


@dataclass(frozen=True)
class PluginLimits:
    """What one plugin run may use (see docs/plugins.md)."""

    fuel: int = 200_000_000  # wasm instructions, roughly; then the run stops
    memory_bytes: int = 32 << 20  # linear memory
    output_bytes: int = 64 << 10
    log_lines: int = 200
    log_line_bytes: int = 1024
    calls: int = 2000  # host calls per run
    seconds: float = 30.0  # wall clock, checked at each host call (fuel bounds the rest)
    proposals: int = 256  # changes one run may propose (a plan's size)
    http_timeout_s: float = 5.0
    http_response_bytes: int = 64 << 10
    token_ttl_s: float = 120.0  # the run's capability


@dataclass(frozen=True)
class RetentionSettings:
    """How long, and within how much room, the box keeps what undo needs: the
    shares' trash and the snapshot store (docs/files.md, "Retention").

    Items older than ``days`` are purged (each purge audited); an action that
    would keep more than the budget is refused before it changes anything.
    The budget is ``budget_bytes``, or when that is 0, ``budget_share`` of
    the data partition (the file system of the state directory)."""

    days: float = 30.0
    budget_bytes: int = 0
    budget_share: float = 0.25
    purge_interval_s: float = 3600.0  # how often expired items are looked for
    # The state partition: below low_free_bytes free, changes are refused (507)
    # while reads and approvals go on, on room kept back in a reserve file.
    low_free_bytes: int = 64 << 20
    reserve_bytes: int = 16 << 20  # ~20,000 entries of reads and approvals


@dataclass(frozen=True)
class Config:
    state_dir: Path
    shares: dict[str, Path] = field(default_factory=dict)
    dev: bool = False
    host: str = "127.0.0.1"
    port: int = 8443
    tls: bool = True
    token_ttl_s: float = 30.0
    policy_dir: Path = field(default_factory=lambda: DEFAULT_POLICY_DIR)
    # Key store: "auto" (production: TPM; development: TPM if reachable or
    # swtpm installed, else the unsafe development key), "tpm" or "dev".
    keystore: str = "auto"
    tpm_tcti: str | None = None  # e.g. "device:/dev/tpmrm0", "swtpm:host=127.0.0.1,port=2321"
    seal_pcrs: tuple[int, ...] = (23,)  # PCRs the sealed secrets are bound to
    # The model agent: its socket, the uid it must run as (None: any), how
    # long a plan may take before the task fails.
    agent_socket: Path | None = None  # default STATE/agent.sock
    agent_uid: int | None = None
    agent_timeout_s: float = 120.0
    limits: Limits = field(default_factory=Limits)
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    # Plugin publishers the owner trusts: name -> Ed25519 public key (base64 of
    # the 32 raw bytes). A plugin signed by anyone else does not load.
    plugin_publishers: dict[str, str] = field(default_factory=dict)
    plugin_limits: PluginLimits = field(default_factory=PluginLimits)
    panel: PanelSettings = field(default_factory=PanelSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def audit_dir(self) -> Path:
        return self.state_dir / "audit"

    @property
    def snapshots_dir(self) -> Path:
        return self.state_dir / "snapshots"

    @property
    def plugins_dir(self) -> Path:
        return self.state_dir / "plugins"

    @property
    def agent_socket_path(self) -> Path:
        # Production: the agent runs as its own user, which cannot enter the
        # broker's 0700 state directory; its unit makes /run/appliance-agent.
        if self.agent_socket is not None:
            return self.agent_socket
        return self.state_dir / "agent.sock" if self.dev else PRODUCTION_AGENT_SOCKET

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "control.sock"


def load_toml(path: Path) -> dict:
    """Read a TOML config file into keyword arguments for :class:`Config`."""
    with path.open("rb") as f:
        raw = tomllib.load(f)
    out: dict = {}
    if "state_dir" in raw:
        out["state_dir"] = Path(raw["state_dir"])
    if "shares" in raw:
        out["shares"] = {name: Path(p) for name, p in raw["shares"].items()}
    if "policy_dir" in raw:
        out["policy_dir"] = Path(raw["policy_dir"])
    if "seal_pcrs" in raw:
        out["seal_pcrs"] = tuple(raw["seal_pcrs"])
    if "agent_socket" in raw:
        out["agent_socket"] = Path(raw["agent_socket"])
    for key in (
        "dev",
        "host",
        "port",
        "tls",
        "token_ttl_s",
        "keystore",
        "tpm_tcti",
        "agent_uid",
        "agent_timeout_s",
    ):
        if key in raw:
            out[key] = raw[key]
    if "limits" in raw:
        out["limits"] = Limits(**raw["limits"])
    if "approvals" in raw:
        out["approvals"] = ApprovalSettings(**raw["approvals"])
    if "plugin_publishers" in raw:
        out["plugin_publishers"] = dict(raw["plugin_publishers"])
    if "plugin_limits" in raw:
        out["plugin_limits"] = PluginLimits(**raw["plugin_limits"])
    if "retention" in raw:
        out["retention"] = RetentionSettings(**raw["retention"])
    if "console" in raw:
        out["console"] = ConsoleSettings(**raw["console"])
    if "panel" in raw:
        panel = dict(raw["panel"])
        if panel.get("rgb_pins") is not None:
            panel["rgb_pins"] = tuple(panel["rgb_pins"])
        out["panel"] = PanelSettings(**panel)
    return out
