// The appliance's plugin kit for AssemblyScript.
//
// A plugin reaches the world only through these host functions (module
// "appliance"). Every file or network call carries the plugin's capability
// token; the broker checks it, resolves the path inside the shares, asks the
// policy, and only then acts. A call the plugin's grant does not cover stops
// the plugin with the reason.
import { JSON } from "assemblyscript-json/assembly";
export { JSON };

@external("appliance", "input_len") declare function _inputLen(): i32;
@external("appliance", "input") declare function _input(dst: usize): void;
@external("appliance", "capability_len") declare function _capabilityLen(): i32;
@external("appliance", "capability") declare function _capability(dst: usize): void;
@external("appliance", "call") declare function _call(ptr: usize, len: i32): i32;
@external("appliance", "result") declare function _result(dst: usize): void;
@external("appliance", "log") declare function _log(ptr: usize, len: i32): void;
@external("appliance", "output") declare function _output(ptr: usize, len: i32): void;

/** The JSON text the caller passed to this run (its "input" field). */
export function inputText(): string {
  const buf = new ArrayBuffer(_inputLen());
  _input(changetype<usize>(buf));
  return String.UTF8.decode(buf);
}

/** The input, parsed. */
export function input(): JSON.Obj {
  return <JSON.Obj>JSON.parse(inputText());
}

/** The input, when it is a JSON string. */
export function inputString(): string {
  const v = JSON.parse(inputText());
  return v.isString ? (<JSON.Str>v).valueOf() : "";
}

let _token: string | null = null;

/** This run's capability token (a Biscuit attenuated to the plugin's grant). */
export function capability(): string {
  if (_token == null) {
    const buf = new ArrayBuffer(_capabilityLen());
    _capability(changetype<usize>(buf));
    _token = String.UTF8.decode(buf);
  }
  return <string>_token;
}

/** Send one raw request (JSON text) to the broker; returns its JSON answer. */
export function callRaw(request: string): JSON.Obj {
  const req = String.UTF8.encode(request);
  const len = _call(changetype<usize>(req), req.byteLength);
  const buf = new ArrayBuffer(len);
  _result(changetype<usize>(buf));
  return <JSON.Obj>JSON.parse(String.UTF8.decode(buf));
}

/** A JSON string literal for `s`. */
export function quote(s: string): string {
  const parts = new Array<string>();
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c != 0x22 && c != 0x5c && c >= 0x20) continue;
    parts.push(s.substring(start, i));
    parts.push(c == 0x22 ? '\\"' : c == 0x5c ? "\\\\" : "\\u" + c.toString(16).padStart(4, "0"));
    start = i + 1;
  }
  parts.push(s.substring(start));
  return '"' + parts.join("") + '"';
}

let _quotedToken: string | null = null;

function request(op: string, fields: string): JSON.Obj {
  if (_quotedToken == null) _quotedToken = quote(capability());
  return callRaw(
    '{"op":' + quote(op) + ',"token":' + <string>_quotedToken + (fields.length ? "," + fields : "") + "}",
  );
}

/** Entries of a folder: [{name, type, size, mtime}]. */
export function list(resource: string): JSON.Obj {
  return request("file.list", '"resource":' + quote(resource));
}

export function stat(resource: string): JSON.Obj {
  return request("file.stat", '"resource":' + quote(resource));
}

export function read(resource: string, maxBytes: i32 = 65536): JSON.Obj {
  return request("file.read", '"resource":' + quote(resource) + ',"max_bytes":' + maxBytes.toString());
}

/** Proposes a write: it runs after the run ends, through policy and approval. */
export function write(resource: string, content: string): JSON.Obj {
  return request("file.write", '"resource":' + quote(resource) + ',"content":' + quote(content));
}

/** Proposes a move (see write). */
export function move(resource: string, to: string): JSON.Obj {
  return request("file.move", '"resource":' + quote(resource) + ',"to":' + quote(to));
}

/** Proposes a new folder (see write). */
export function mkdir(resource: string): JSON.Obj {
  return request("file.mkdir", '"resource":' + quote(resource) + ',"parents":true');
}

/** An HTTP request the broker makes for the plugin, to a host its manifest lists. */
export function http(method: string, url: string, body: string): JSON.Obj {
  return request(
    "http.request",
    '"method":' + quote(method) + ',"url":' + quote(url) + ',"body":' + quote(body),
  );
}

/** A line in the run's log (bounded: too many lines stop the plugin). */
export function log(message: string): void {
  const b = String.UTF8.encode(message);
  _log(changetype<usize>(b), b.byteLength);
}

/** Append to the run's output (bounded). */
export function output(text: string): void {
  const b = String.UTF8.encode(text);
  _output(changetype<usize>(b), b.byteLength);
}

/** Whether an answer is a success. */
export function ok(answer: JSON.Obj): bool {
  const v = answer.getBool("ok");
  return v != null && v.valueOf();
}

/** A number field (integer or float) of an object, or `fallback`. */
export function num(o: JSON.Obj, key: string, fallback: f64 = 0): f64 {
  const f = o.getFloat(key);
  if (f != null) return f.valueOf();
  const i = o.getInteger(key);
  if (i != null) return <f64>i.valueOf();
  return fallback;
}

/** A string field of an object, or "". */
export function str(o: JSON.Obj, key: string): string {
  const s = o.getString(key);
  return s == null ? "" : s.valueOf();
}
