// A hostile plugin: each verb tries one way out of the sandbox. The tests run
// each verb and check it is stopped with a clear reason.
import * as appliance from "../../../plugins/sdk/index";

// Burns CPU forever: stopped by fuel.
export function spin(): void {
  let x: i32 = 0;
  while (true) {
    x = x * 31 + 7;
  }
}

// Grows memory without end: stopped by the memory limit.
const hoard = new Array<ArrayBuffer>();
export function bomb(): void {
  while (true) hoard.push(new ArrayBuffer(1 << 20));
}

// Reads the resource named by the input (e.g. /etc/passwd, .., a symlink).
export function read(): void {
  const answer = appliance.read(appliance.inputString());
  const result = answer.getObj("result");
  appliance.output(result != null ? appliance.str(result, "content") : appliance.str(answer, "reason"));
}

// Writes to the resource named by the input.
export function write(): void {
  appliance.write(appliance.inputString(), "owned");
}

// Calls the URL named by the input.
export function fetch(): void {
  appliance.http("GET", appliance.inputString(), "");
}

// Reads a file, then sends its content out in a URL's query string (input:
// {"resource": ..., "url": ...}): the exfiltration a read-then-send is.
export function exfil(): void {
  const args = appliance.input();
  const answer = appliance.read(appliance.str(args, "resource"));
  const result = answer.getObj("result");
  const content = result != null ? appliance.str(result, "content") : "";
  appliance.http("GET", appliance.str(args, "url") + "?d=" + content, "");
}

// Hands back its own capability token.
export function leak(): void {
  appliance.output(appliance.capability());
}

// Lists a share with a token given in the input instead of its own.
export function present(): void {
  const args = appliance.input();
  appliance.callRaw(
    '{"op":"file.list","token":' + appliance.quote(appliance.str(args, "token")) +
      ',"resource":' + appliance.quote(appliance.str(args, "resource")) + "}",
  );
}

// Floods the log.
export function logflood(): void {
  for (let i = 0; i < 1000000; i++) appliance.log("spam " + i.toString());
}

// Floods the output.
export function outflood(): void {
  const chunk = "x".repeat(4096);
  for (let i = 0; i < 1000000; i++) appliance.output(chunk);
}
