// organise-by-date: proposes moving each file of a folder into a folder named
// after the month it was last changed (YYYY-MM). It reads only file metadata;
// the moves it proposes run after the run, once policy (and a press) allow.
//
// input: {"source": "share:photos/Inbox", "dest": "share:photos/By date"}
import * as appliance from "../sdk/index";
import { JSON } from "../sdk/index";

// Days since 1970-01-01 to a civil year and month (Howard Hinnant's algorithm).
function yearMonth(seconds: f64): string {
  const z = <i64>Math.floor(seconds / 86400) + 719468;
  const era = (z >= 0 ? z : z - 146096) / 146097;
  const doe = z - era * 146097;
  const yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const mp = (5 * doy + 2) / 153;
  const m = mp < 10 ? mp + 3 : mp - 9;
  const y = yoe + era * 400 + (m <= 2 ? 1 : 0);
  return y.toString() + "-" + (m < 10 ? "0" : "") + m.toString();
}

export function propose(): void {
  const args = appliance.input();
  const source = appliance.str(args, "source");
  const dest = appliance.str(args, "dest");
  const listed = appliance.list(source);
  if (!appliance.ok(listed)) {
    appliance.output('{"error":' + appliance.quote(appliance.str(listed, "reason")) + "}");
    return;
  }
  const entries = (<JSON.Obj>listed.getObj("result")).getArr("entries");
  const made = new Set<string>();
  let moves = 0;
  if (entries != null) {
    const items = entries.valueOf();
    for (let i = 0; i < items.length; i++) {
      const e = <JSON.Obj>items[i];
      if (appliance.str(e, "type") != "file") continue;
      const name = appliance.str(e, "name");
      const folder = dest + "/" + yearMonth(appliance.num(e, "mtime"));
      if (!made.has(folder)) {
        made.add(folder);
        appliance.mkdir(folder);
      }
      appliance.move(source + "/" + name, folder + "/" + name);
      moves++;
    }
  }
  appliance.log("proposed " + moves.toString() + " moves into " + made.size.toString() + " folders");
  appliance.output('{"moves":' + moves.toString() + ',"folders":' + made.size.toString() + "}");
}
