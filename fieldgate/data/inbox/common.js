// What both pages share: the bearer token, the API, DOM building and live updates.
// Untrusted text only ever becomes DOM text (textContent); the CSP forbids markup from strings.

const TOKEN_KEY = "fieldgate-inbox-token";

/** The bearer token: taken once from the link's #token=… (never sent to a server), then kept
 * for this tab only. */
export function token() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function detailOf(body) {
  if (!body) return "";
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return body.refused || JSON.stringify(body);
}

/** Call the inbox API as the signed-in person; a refusal comes back as its JSON body. */
export async function api(path, body) {
  const init = { headers: { Authorization: `Bearer ${token() || ""}` } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (response.status === 422 && data && data.refused) return data;
  if (!response.ok) throw new ApiError(response.status, detailOf(data) || response.statusText);
  return data;
}

/** An element with attributes and children; strings become text nodes, never markup. */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function roles(needs) {
  return (needs || []).map((n) => `${n.count}× ${n.role}`).join(", ") || "none";
}

export function when(iso) {
  if (!iso) return "-";
  const at = new Date(iso);
  return at.toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

/** The sign-in box, shown when there is no token or the server refused it. */
export function signIn(root, why) {
  const input = el("input", { id: "token", type: "password", autocomplete: "off", placeholder: "fgi_…", size: 48 });
  root.replaceChildren(
    el("section", { class: "card", id: "sign-in" },
      el("h2", {}, "Sign in"),
      why ? el("p", { class: "bad" }, why) : null,
      el("p", {}, "Paste the token `fieldgate serve token --as YOU` printed, or open the link it printed."),
      input,
      el("button", { id: "sign-in-button", onclick: () => {
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        location.reload();
      } }, "Sign in")));
}

/** Call ``onChange`` whenever the store changes (server-sent events over fetch, so the
 * bearer token goes in a header and never in a URL); reconnects after a drop. */
export function watch(onChange) {
  let timer = null;
  const changed = () => {
    clearTimeout(timer);
    timer = setTimeout(onChange, 100);
  };
  async function listen() {
    try {
      const response = await fetch("/api/events", { headers: { Authorization: `Bearer ${token() || ""}` } });
      if (!response.ok) throw new ApiError(response.status, response.statusText);
      document.body.dataset.live = "yes";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const message = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (/^event: change$/m.test(message)) changed();
        }
      }
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return;
    }
    document.body.dataset.live = "no";
    setTimeout(listen, 2000);
  }
  listen();
}
