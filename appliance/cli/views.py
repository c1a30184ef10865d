"""What the CLI shows people: each answer of the box, rendered with rich.

Each ``*_view`` takes the value a command prints with ``--json`` (or its
typed form) and returns a renderer for ``Output.result``. Data from the box
goes through ``plain`` (literal text, never markup).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from appliance.cli.output import plain
from appliance.client import Plan, Task, press_sentence

Render = Callable[[Console], None]

STYLE = {
    "done": "green",
    "ok": "green",
    "approved": "green",
    "pending_approval": "yellow",
    "pending": "yellow",
    "running": "cyan",
    "planning": "cyan",
    "planned": "cyan",
    "denied": "red",
    "refused": "red",
    "failed": "red",
    "expired": "red",
    "skipped": "dim",
    "undone": "magenta",
}
RISK = {"low": "green", "medium": "yellow", "high": "bold red"}
PLAN_SAYS = {
    "pending_approval": "waits for the press on the box",
    "running": "running",
    "done": "done",
    "denied": "denied: nothing was done",
    "expired": "expired: nobody pressed in time; nothing was done",
    "failed": "failed",
}


def status(value: str, label: str | None = None) -> Text:
    return Text(label or value, style=STYLE.get(value, ""))


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def table(*columns: str) -> Table:
    t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for c in columns:
        t.add_column(c)
    return t


def grid() -> Table:
    """Two columns, no header: a key, its value."""
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    return t


def hint(console: Console, *lines: str) -> None:
    for line in lines:
        console.print(Text("→ ", style="cyan") + plain(line))


# ---------------------------------------------------------------------- plans
def plan_lines(plan: Plan, console: Console) -> None:
    for i, a in enumerate(plan.actions, 1):
        line = Text(f"{i:>3}. ") + Text(a.verb, style="bold") + " " + plain(a.resource)
        to = a.params.get("to") or a.params.get("name")
        if to:
            line += Text(" → ") + plain(to)
        line += Text("  ") + Text(f"{a.risk} risk", style=RISK.get(a.risk, ""))
        if a.status not in ("planned",):
            line += Text("  ") + status(a.status)
        console.print(line)
        if a.decision == "deny" or (plan.status == "denied" and a.reasons):
            for reason in a.reasons:
                console.print(Text("       ") + plain(reason), style="red")
        result_lines(a.verb, a.result, console)


def result_lines(verb: str, result: dict[str, Any] | None, console: Console) -> None:
    if not result:
        return
    pad = "       "
    if verb == "file.list":
        for e in result.get("entries", []):
            name = f"{e.get('name')}{'/' if e.get('type') == 'dir' else ''}"
            console.print(Text(pad) + plain(name) + Text(f"  {e.get('size', 0)} bytes", "dim"))
    elif verb == "file.stat":
        console.print(
            Text(pad)
            + plain(
                f"{result.get('type')}, {result.get('size')} bytes, "
                f"modified {when(result.get('mtime'))}"
            )
        )
    elif verb == "file.read":
        more = ", truncated" if result.get("truncated") else ""
        console.print(
            Text(
                pad + f"{result.get('length')} of {result.get('size')} bytes"
                f" ({result.get('encoding')}){more}:",
                "dim",
            )
        )
        console.print(plain(result.get("content", "")))
    elif "error" in result:
        console.print(Text(pad) + plain(result["error"]), style="red")


def plan_view(plan: Plan) -> Render:
    def render(console: Console) -> None:
        says = PLAN_SAYS.get(plan.status, plan.status)
        console.print(
            Text("Plan ")
            + Text(plan.plan_id, style="bold")
            + Text(": ")
            + status(plan.status, says)
        )
        plan_lines(plan, console)
        if plan.error:
            console.print(Text("   ") + plain(plan.error), style="red")
        if plan.waiting_for_press:
            hint(console, press_sentence(plan.code), f"then: appliance plan {plan.plan_id}")
        elif plan.status == "done" and any(a.undoable for a in plan.actions):
            hint(console, f"to undo: appliance undo {plan.plan_id}  (needs a press on the box)")

    return render


def task_view(task: Task) -> Render:
    def render(console: Console) -> None:
        console.print(Text("Task ") + Text(task.task_id, style="bold") + ": " + status(task.status))
        if task.model:
            console.print(Text("   model: ") + plain(task.model.get("id")), style="dim")
        if task.error:
            console.print(Text("   ") + plain(task.error), style="red")
        if task.plan is not None:
            plan_view(task.plan)(console)

    return render


PROPOSAL_WORDS = {"question": "the box asks", "refused": "the box cannot do this"}
SAID = ("kind", "explanation", "confidence", "compact")


def proposal_lines(event: dict[str, Any]) -> Text:
    """The model's own words on a task (its explanation, question or reason),
    its confidence and the compact plan it wrote; the actions follow."""
    conf = event.get("confidence")
    sure = f" (confidence {conf:.2f})" if isinstance(conf, int | float) else ""
    label = PROPOSAL_WORDS.get(str(event.get("event")), "the box's model")
    line = Text(f"{label}{sure}: ", style="bold") + plain(event.get("explanation", ""))
    if event.get("event") == "planned":
        for said in str(event.get("compact", "")).splitlines()[2:]:
            line += Text("\n   | ", style="dim") + plain(said)
    return line


def event_line(event: dict[str, Any]) -> Text:
    detail = {k: v for k, v in event.items() if k not in ("event", "time", *SAID) and v}
    line = status(str(event.get("event")))
    for key, value in list(detail.items())[:4]:
        line += Text(f"  {key}=", style="dim") + plain(value)
    return line


# ---------------------------------------------------------------------- the box
def panel_view(shown: dict[str, Any]) -> Render:
    def render(console: Console) -> None:
        current = shown.get("pending")
        if not current:
            console.print("nothing is waiting for approval")
            return
        shown_now = grid()
        shown_now.add_row("shown", plain(current["summary"]))
        shown_now.add_row("code", Text(f"{current['code']}  (the requester sees the same code)"))
        shown_now.add_row("expires", Text(f"in {current.get('expires_in_s', 0):.0f} s"))
        for w in shown.get("waiting", []):
            shown_now.add_row("waiting", plain(f"{w['summary']} (code {w['code']})"))
        console.print(shown_now)

    return render


def press_view(answer: dict[str, Any]) -> Render:
    def render(console: Console) -> None:
        result = answer["result"]
        shown = answer["shown"]
        console.print(plain(f"{answer['decision']}: {shown['summary']}  (code {shown['code']})"))
        if result.get("accepted"):
            console.print(plain(result["reason"]), style="green")
        else:
            console.print(plain(f"ignored: {result['reason']}"), style="red")

    return render


def clients_view(answer: dict[str, Any]) -> Render:
    def render(console: Console) -> None:
        if "revoked" in answer:
            console.print(
                plain(f"revoked {answer['revoked']}: its credential is refused from now on")
            )
            return
        t = table("client", "name", "paired", "state")
        for c in answer.get("clients", []):
            state = (
                status("refused", f"revoked {when(c['revoked'])}")
                if c.get("revoked")
                else (status("ok", "active"))
            )
            t.add_row(
                plain(c["client_id"]),
                plain(c.get("shown", c["name"])),
                when(c.get("created")),
                state,
            )
        console.print(t if answer.get("clients") else "no desktop is paired")

    return render


def plugins_view(answer: dict[str, Any]) -> Render:
    def render(console: Console) -> None:
        if "plugins" not in answer:
            for key, value in answer.items():
                console.print(Text(f"{key}: ", style="bold") + plain(value))
            return
        t = table("plugin", "version", "verbs", "may read / write / call", "state")
        for p in answer["plugins"]:
            caps = p.get("capabilities") or {}
            reach = " / ".join(",".join(caps.get(k, [])) or "-" for k in ("read", "write", "hosts"))
            state = status(p.get("status", "ok"), p.get("status", "ok"))
            if p.get("error"):
                state += Text(": ") + plain(p["error"].get("reason"))
            t.add_row(
                plain(p["name"]),
                plain(p.get("version", "")),
                plain(", ".join(p.get("verbs", []))),
                plain(reach),
                state,
            )
        console.print(t if answer["plugins"] else "no plugin is installed")

    return render


def status_view(answer: dict[str, Any]) -> Render:
    def render(console: Console) -> None:
        rows_shown = grid()
        signer = answer.get("signer", "")
        if answer.get("unsafe_signer"):
            signer += " (UNSAFE development key)"
        panel = answer.get("panel") or {}
        pending = answer.get("pending_approval")
        rows = [
            ("mode", answer.get("mode")),
            ("signer", signer),
            ("device key", answer.get("device_key_id")),
            ("panel", panel.get("name")),
            ("shares", ", ".join(f"{n} = {p}" for n, p in (answer.get("shares") or {}).items())),
            ("waiting", f"{pending['summary']} (code {pending['code']})" if pending else "nothing"),
            ("queued", answer.get("waiting_approvals")),
            (
                "pairing window",
                f"{answer['pairing_window_s']:.0f} s left"
                if answer.get("pairing_window_s")
                else "closed",
            ),
            ("lockouts", len(answer.get("lockouts") or [])),
            ("audit log", f"{answer.get('audit_size')} entries"),
            ("epoch", answer.get("epoch")),
        ]
        for key, value in rows:
            rows_shown.add_row(key, plain(value))
        console.print(rows_shown)

    return render


def lines_view(ok: Iterable[str], notes: Iterable[str] = (), bad: Iterable[str] = ()) -> Render:
    """Checks that passed (ok), notes, and problems, one per line."""

    def render(console: Console) -> None:
        for line in ok:
            console.print(Text("ok: ", style="green") + plain(line))
        for line in notes:
            console.print(Text("note: ", style="yellow") + plain(line))
        for line in bad:
            console.print(Text("PROBLEM: ", style="bold red") + plain(line))

    return render


def discovered_view(found: list[dict[str, Any]]) -> Render:
    def render(console: Console) -> None:
        if not found:
            console.print("no box answered on this network")
            hint(console, "is it on and on the same network? or pair with --url and --fingerprint")
            return
        t = table("box", "address", "fingerprint", "api", "state")
        t.columns[1].no_wrap = True
        for f in found:
            fp = f.get("fingerprint") or "-"
            api = ",".join(str(v) for v in f.get("api_versions") or []) or "?"
            where = f.get("url") or ", ".join(f["addresses"])
            short = fp[:11] + "…" if len(fp) > 12 else fp
            t.add_row(plain(f["name"]), plain(where), plain(short), plain(api), status(f["status"]))
        console.print(t)
        for f in found:
            if f["status"] == "ok":
                console.print(plain(f"{f['name']}: certificate {f['fingerprint']}"))
            else:
                console.print(Text("refused ", style="red") + plain(f"{f['name']}: {f['problem']}"))
        hint(console, "pair with: appliance pair  (compare the fingerprint with the box's console)")

    return render
