// The gateway's JSON API as the page uses it: the bearer token (kept in localStorage), requests
// that say what went wrong, and server-sent events read through fetch so that the token
// travels in a header (EventSource cannot send one).

const TOKEN_KEY = "posttrain-token";

export function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

const listeners = new Set();

/** Called with (status, detail) after every answer that refuses the token (401, 403). */
export function onAuthProblem(listener) {
  listeners.add(listener);
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const t = token();
  if (t) h.authorization = "Bearer " + t;
  return h;
}

/** An API error carrying the HTTP status and the gateway's detail. */
export class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail);
    this.status = status;
    this.body = body;
  }
  /** True when the endpoint itself does not exist on this gateway (an older one). */
  get missingEndpoint() {
    return this.status === 404 && this.body && this.body.detail === "Not Found";
  }
}

async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return {detail: text};
  }
}

/** fetch with the token; the Response. */
export async function request(path, options = {}) {
  const response = await fetch(path, {...options, headers: headers(options.headers)});
  if (response.status === 401 || response.status === 403) {
    const body = await response.clone().json().catch(() => ({}));
    for (const listener of listeners) listener(response.status, body.detail || "");
  }
  return response;
}

/** GET a JSON document; throws ApiError on a non-2xx answer. */
export async function getJson(path, options = {}) {
  const response = await request(path, options);
  const body = await readBody(response);
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
    throw new ApiError(response.status, detail, body);
  }
  return body;
}

/** POST a body; {status, body} whatever the answer. */
export async function post(path, body, contentType, extraHeaders = {}) {
  const h = {...extraHeaders};
  if (contentType) h["content-type"] = contentType;
  const response = await request(path, {method: "POST", body, headers: h});
  return {status: response.status, ok: response.ok, body: await readBody(response)};
}

/**
 * Follow a server-sent event stream: onEvent(type, data) for each event (data parsed as JSON
 * where it is JSON). Resolves when the stream ends; rejects on an HTTP error (ApiError).
 * Aborted through `signal`.
 */
export async function follow(path, onEvent, signal) {
  const response = await request(path, {signal, headers: {accept: "text/event-stream"}});
  if (!response.ok || !response.body) {
    const body = await readBody(response);
    throw new ApiError(response.status, (body && body.detail) || response.statusText, body);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;  // a keep-alive comment
      const text = data.join("\n");
      let parsed = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // not JSON: handed on as text
      }
      onEvent(type, parsed);
    }
  }
}
