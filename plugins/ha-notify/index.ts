// ha-notify: tells a home-automation service how many files wait in a folder.
// The HTTP request is made by the broker, and only to a host this plugin's
// manifest lists.
//
// input: {"folder": "share:docs/Inbox", "url": "http://hub.local:8123/api/notify"}
import * as appliance from "../sdk/index";
import { JSON } from "../sdk/index";

export function notify(): void {
  const args = appliance.input();
  const folder = appliance.str(args, "folder");
  const listed = appliance.list(folder);
  let count = 0;
  let names = "";
  if (appliance.ok(listed)) {
    const entries = (<JSON.Obj>listed.getObj("result")).getArr("entries");
    if (entries != null) {
      const items = entries.valueOf();
      for (let i = 0; i < items.length; i++) {
        const e = <JSON.Obj>items[i];
        if (appliance.str(e, "type") != "file") continue;
        if (count < 5) names += (count ? ", " : "") + appliance.str(e, "name");
        count++;
      }
    }
  }
  const message = count.toString() + " file(s) waiting in " + folder + (count ? ": " + names : "");
  const body = '{"title":"appliance","message":' + appliance.quote(message) + "}";
  const answer = appliance.http("POST", appliance.str(args, "url"), body);
  if (!appliance.ok(answer)) {
    appliance.output('{"sent":false,"reason":' + appliance.quote(appliance.str(answer, "reason")) + "}");
    return;
  }
  const status = appliance.num(<JSON.Obj>answer.getObj("result"), "status");
  appliance.log("notified: HTTP " + (<i32>status).toString());
  appliance.output('{"sent":true,"status":' + (<i32>status).toString() + ',"files":' + count.toString() + "}");
}
