// The console's only way to the server: the public REST API with the signed-in admin token.
// Errors come back as ApiError carrying the server's {"error","message"}.

const TOKEN_KEY = "lockerd.console.token";
const KIND_KEY = "lockerd.console.kind"; // "password" (a session from /api/login) or "token"
const WHO_KEY = "lockerd.console.who";
const ME_KEY = "lockerd.console.me"; // GET /api/me of a password sign-in

export class ApiError extends Error {
  constructor(status, code, message, reason = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.reason = reason; // e.g. "offline", "out_of_service" on a refused open
  }
}

export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  kind: () => sessionStorage.getItem(KIND_KEY),
  who: () => sessionStorage.getItem(WHO_KEY),
  me: () => JSON.parse(sessionStorage.getItem(ME_KEY) || "null"),
  save(token, kind, who, me = null) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(KIND_KEY, kind);
    sessionStorage.setItem(WHO_KEY, who);
    if (me) sessionStorage.setItem(ME_KEY, JSON.stringify(me));
  },
  clear() {
    for (const key of [TOKEN_KEY, KIND_KEY, WHO_KEY, ME_KEY]) sessionStorage.removeItem(key);
  },
};

// Called with a message when the server stops accepting the token (401).
let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

function errorOf(status, body) {
  if (body && typeof body === "object" && body.message) {
    return new ApiError(status, body.error || String(status), body.message, body.reason || null);
  }
  return new ApiError(status, String(status), `the server answered HTTP ${status}`);
}

// One request; resolves to the parsed JSON answer (null for 204), rejects with ApiError.
export async function request(method, path, body, { token = session.token(), quiet401 = false } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, "network", `cannot reach the server (${error.message})`);
  }
  const text = await response.text();
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  if (!response.ok) {
    const error = errorOf(response.status, parsed);
    if (response.status === 401 && !quiet401) onUnauthorized("Your sign-in is no longer accepted; please sign in again.");
    throw error;
  }
  return parsed;
}

export const get = (path, options) => request("GET", path, undefined, options);
export const post = (path, body, options) => request("POST", path, body, options);
export const patch = (path, body) => request("PATCH", path, body);
export const del = (path) => request("DELETE", path);

export const enc = encodeURIComponent;

// The query string of an object, leaving out empty values.
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
// Calls onData(parsed JSON) for every `data:` event until the signal aborts; rejects on error.
export async function stream(path, onData, signal, onOpen = () => {}) {
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${session.token()}`, Accept: "text/event-stream" },
    cache: "no-store",
    signal,
  });
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    throw errorOf(response.status, body);
  }
  onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue;
      try {
        onData(JSON.parse(data));
      } catch {
        // a malformed point is skipped; the stream goes on
      }
    }
  }
}
