// The benchmark plugin: a verb that does nothing (instantiation cost) and one
// that stats a file n times (host call cost).
import * as appliance from "../../plugins/sdk/index";

export function noop(): void {}

export function stats(): void {
  const args = appliance.input();
  const resource = appliance.str(args, "resource");
  const n = <i32>appliance.num(args, "n");
  for (let i = 0; i < n; i++) appliance.stat(resource);
}
