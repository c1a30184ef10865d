// A plugin that speaks broken Unicode: each verb puts a lone surrogate (half
// of a UTF-16 pair, which AssemblyScript strings may hold and encode as
// WTF-8) or a number JSON cannot carry where the broker reads it. The tests
// check each is refused with a reason, and the run's end is audited.
import * as appliance from "../../../plugins/sdk/index";

const LONE = String.fromCharCode(0xdcae);

// In the URL of a web request.
export function url(): void {
  appliance.http("GET", "http://127.0.0.1:9/a" + LONE, "");
}

// In the body of a web request.
export function body(): void {
  appliance.http("POST", "http://127.0.0.1:9/a", "x" + LONE);
}

// In the content of a proposed write.
export function write(): void {
  appliance.write("share:docs/new.txt", "x" + LONE);
}

// In its output, escaped as JSON spells it.
export function output(): void {
  appliance.output('{"said": "\\udcae"}');
}

// NaN in its output.
export function nan(): void {
  appliance.output('{"value": NaN}');
}
