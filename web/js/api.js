// Same-origin access to the REST API behind Apache at /api/.

const API_PREFIX = "/api/";

/** Error thrown for a non-2xx answer: the message is the API's own `detail` (or `error`). */
export class ApiError extends Error {
  constructor(message, status, code, detail) {
    super(message);
    this.name = "ApiError";
    this.status = status; // HTTP status, 0 when the request never got an answer
    this.code = code; // the API's stable error code, e.g. "invalid_parameter"
    this.detail = detail;
  }
}

/**
 * The URL of an API path ("/api/events" or just "events") with its query string.
 * Null, undefined and empty values are left out; arrays repeat the parameter (type=a&type=b).
 */
export function apiUrl(path, params) {
  const base = path.startsWith("/") ? path : API_PREFIX + path;
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    const values = Array.isArray(value) ? value : [value];
    for (const item of values) {
      if (item === null || item === undefined || item === "") continue;
      query.append(name, String(item));
    }
  }
  const text = query.toString();
  return text ? `${base}?${text}` : base;
}

function describe(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    // Validation problems: [{parameter, in, message}, ...]
    return detail
      .map((problem) =>
        problem && typeof problem === "object"
          ? [problem.parameter, problem.message].filter(Boolean).join(": ")
          : String(problem),
      )
      .join("; ");
  }
  return detail === undefined || detail === null ? "" : JSON.stringify(detail);
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy error page, say): the status line is all there is.
  }
  const message =
    (body && (describe(body.detail) || body.error)) ||
    `${response.status} ${response.statusText}`.trim();
  return new ApiError(message, response.status, body && body.error, body && body.detail);
}

/** GET an API path and return its parsed JSON; throws ApiError with the API's message. */
export async function getJSON(path, params, init = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path, params), {
      ...init,
      headers: { Accept: "application/json", ...(init.headers || {}) },
    });
  } catch (err) {
    throw new ApiError(err.message || "network error", 0, "network_error", null);
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}
