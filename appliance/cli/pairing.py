"""Pairing a desktop with a box, by address or found on the LAN (mDNS).

``appliance pair --url URL --fingerprint FP`` pairs with the box the owner
named. Without ``--url`` the box is found (``appliance.discovery``): every
answer is checked by connecting to it, and only a box whose certificate has
the fingerprint its announcement carries is offered; that certificate is
the one pinned (the pairing itself runs over it, so the box that answers
the pairing is the one that was checked). Several boxes: it asks which.
After the press, the device key the box serves must be the one announced
(``dk``), or nothing is saved.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rich.console import Console
from rich.prompt import IntPrompt
from rich.text import Text

from appliance.cli.output import OK, REFUSED, UNREACHABLE, Output, UsageError, plain
from appliance.cli.views import discovered_view, hint, lines_view
from appliance.client import ApplianceClient, NotTheBox, Unreachable, press_sentence
from appliance.client.pinning import same_fingerprint


def _found(out: Output, timeout: float) -> list[Any]:
    from appliance.discovery import browse, check

    with out.waiting("looking for boxes on this network (mDNS)"):
        boxes = browse(timeout)
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(check, boxes))


def cmd_discover(args: argparse.Namespace, out: Output) -> int:
    checked = _found(out, args.timeout)
    answer = [c.to_json() for c in checked]
    out.result(answer, discovered_view(answer))
    if any(c.ok for c in checked):
        return OK
    return REFUSED if checked else UNREACHABLE


def _choose(args: argparse.Namespace, out: Output) -> Any:
    """The one box to pair with: found, checked, and (if several) chosen."""
    checked = _found(out, args.listen)
    for c in checked:
        if not c.ok:
            out.say(
                Text("refused ", style="red")
                + plain(f"{c.found.name} ({', '.join(c.found.addresses)}): {c.problem}")
            )
    ok = [c for c in checked if c.ok]
    if args.box:
        ok = [
            c
            for c in ok
            if args.box in (c.found.name, c.found.instance)
            or same_fingerprint(args.box, c.found.fingerprint or "")
        ]
    if args.fingerprint:
        ok = [c for c in ok if same_fingerprint(args.fingerprint, c.found.fingerprint or "")]
    if not ok:
        why = "no box on this network answered" if not checked else "no box could be trusted"
        raise Unreachable(
            f"{why}{' with that name or fingerprint' if args.box or args.fingerprint else ''}; "
            "pair with --url https://ADDRESS:8443 --fingerprint FP (the box's console shows both)"
        )
    if len(ok) == 1:
        return ok[0]
    out.say("several boxes answer:")
    for i, c in enumerate(ok, 1):
        out.say(plain(f"  {i}. {c.found.name} at {c.url}  fingerprint {c.found.fingerprint}"))
    try:
        pick = IntPrompt.ask(
            "which box (its console shows its fingerprint)",
            console=out.err,
            choices=[str(i) for i in range(1, len(ok) + 1)],
        )
    except EOFError:
        raise UsageError("several boxes answer: choose one with --box NAME") from None
    return ok[pick - 1]


def _grant(args: argparse.Namespace) -> dict[str, Any] | None:
    """What this desktop asks to be allowed (None: the box's default, to read
    every share and change none); the box shows it with the code."""
    if not (args.read or args.write or args.audit or args.days):
        return None
    shares = {s: "read" for s in args.read or []} | {s: "read-write" for s in args.write or []}
    grant: dict[str, Any] = {"shares": shares or None, "audit": args.audit}
    if args.days:
        grant["expires_in_s"] = int(args.days * 86400)
    return grant


def cmd_pair(args: argparse.Namespace, out: Output) -> int:
    chosen = None
    if args.url:
        client = ApplianceClient(args.url, fingerprint=args.fingerprint)
    else:
        chosen = _choose(args, out)
        out.say(
            plain(
                f"pairing with {chosen.found.name} at {chosen.url}, certificate "
                f"{chosen.found.fingerprint} (the same as on the box's console?)"
            )
        )
        # The certificate just checked is the only one trusted from here on.
        client = ApplianceClient(
            chosen.url,
            fingerprint=chosen.found.fingerprint,
            certificate_pem=chosen.certificate_pem,
        )
    out.say(f"asking {client.url} to pair as {args.name!r}...")
    with out.waiting("waiting for the press on the box") as update:

        def on_code(code: str) -> None:
            out.say(
                f"verification code {code}: {press_sentence(code)} (In development: "
                "`appliance panel approve`. A box with a button listens only after a "
                "5-second hold opened its pairing window.)"
            )
            update(f"waiting for the press on the box (code {code})")

        paired = client.pair(args.name, grant=_grant(args), timeout=args.timeout, on_code=on_code)
    keys = client.pin_device()
    announced = chosen.found.device_key_id if chosen else None
    if announced and keys["device_key"].get("kid") != announced:
        raise NotTheBox(
            f"the box signs with device key {keys['device_key'].get('kid')}, but its "
            f"announcement named {announced}: nothing was saved"
        )
    client.save(args.credentials, name=chosen.found.name if chosen else None)
    answer = {
        "client_id": paired.client_id,
        "url": client.url,
        "fingerprint": client.fingerprint,
        "device_key_id": keys["device_key"].get("kid"),
        "credentials": str(args.credentials),
    }

    def render(console: Console) -> None:
        lines_view(
            [
                f"paired as {paired.client_id} with {client.url}",
                (
                    f"pinned its certificate {client.fingerprint} and "
                    if client.fingerprint
                    else "plain HTTP (development, loopback): no certificate to pin; pinned "
                )
                + f"device key {answer['device_key_id']}",
                f"credential saved to {args.credentials}",
            ]
        )(console)
        hint(console, "next: appliance verify, or give your agent `appliance mcp` (docs/mcp.md)")

    out.result(answer, render)
    return OK
