// The inbox: the plans that wait for your roles; decisions signed here with your own key.
import { ApiError, api, el, forgetToken, roles, signIn, token, watch, when } from "./common.js";

// PKCS#8 wrapping of a raw ed25519 private key (RFC 8410): the key file holds the raw 32 bytes.
const PKCS8_PREFIX = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

let signing = null; // { key: CryptoKey (not extractable), keyId }
let me = null;
// What was typed and opened, by plan id, kept across redraws.
const comments = new Map();
const edits = new Map();
const main = document.querySelector("main");
const plansRoot = document.getElementById("plans");

function bytesOf(base64) {
  return Uint8Array.from(atob(base64.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
}

function base64Of(bytes) {
  return btoa(String.fromCharCode(...bytes));
}

async function keyIdOf(publicRaw) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", publicRaw));
  return "ed25519:" + Array.from(digest.slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Import a key file as `fieldgate keys init` writes it; keep only a non-extractable key. */
async function importKeyFile(text) {
  let seed;
  try {
    seed = bytesOf(text.trim());
  } catch {
    seed = new Uint8Array();
  }
  if (seed.length !== 32) throw new Error("not a key file as `fieldgate keys init` writes it (the base64 of 32 bytes)");
  const der = new Uint8Array(48);
  der.set(PKCS8_PREFIX);
  der.set(seed, 16);
  const algorithm = { name: "Ed25519" };
  const probe = await crypto.subtle.importKey("pkcs8", der, algorithm, true, ["sign"]);
  const keyId = await keyIdOf(bytesOf((await crypto.subtle.exportKey("jwk", probe)).x));
  const key = await crypto.subtle.importKey("pkcs8", der, algorithm, false, ["sign"]);
  seed.fill(0);
  der.fill(0);
  return { key, keyId };
}

/** Sign exactly the bytes the server handed out (the canonical JSON the CLI signs). */
async function sign(payload) {
  const signature = await crypto.subtle.sign({ name: "Ed25519" }, signing.key, new TextEncoder().encode(payload));
  return base64Of(new Uint8Array(signature));
}

function showKeyState() {
  const state = document.getElementById("key-state");
  if (!signing) {
    state.className = me && me.key_id ? "" : "bad";
    state.textContent = me && me.key_id
      ? `no key loaded; your enrolled approver key is ${me.key_id}`
      : `no key loaded; ${me ? me.key_problem : ""}`;
    return;
  }
  const enrolled = me && me.key_id === signing.keyId;
  state.className = enrolled ? "good" : "bad";
  state.textContent = enrolled
    ? `key ${signing.keyId} loaded: your enrolled approver key`
    : `key ${signing.keyId} loaded, but it is not your enrolled approver key (${me && me.key_id ? me.key_id : me.key_problem}); decisions signed with it will not count`;
}

function notice(text, good) {
  let box = document.getElementById("notice");
  if (!box) {
    box = el("p", { id: "notice" });
    main.prepend(box);
  }
  box.className = good ? "good" : "bad";
  box.textContent = text;
}

async function decide(plan, decision) {
  if (!signing) return notice("load your key file first: decisions are signed in this page", false);
  const comment = comments.get(plan.plan_id) || "";
  try {
    const { payload } = await api(`/api/plans/${encodeURIComponent(plan.plan_id)}/to-sign`, { decision, comment, key_id: signing.keyId });
    const signature = await sign(payload);
    const result = await api(`/api/plans/${encodeURIComponent(plan.plan_id)}/decision`, { payload, signature });
    const verb = decision === "approve" ? "approval" : "rejection";
    if (result.refused) return notice(`${verb} of ${plan.plan_id} refused: ${result.refused}`, false);
    comments.delete(plan.plan_id);
    let tail = "";
    if (result.outcome === "rejected") tail = "rejected; nothing is sent to devices";
    else if (result.status === "queued") tail = "approved: the quorum is reached; queued for a worker";
    else if (result.status === "awaiting_approval") tail = `still missing ${roles(result.missing)}`;
    else tail = result.outcome || result.status;
    notice(result.counted
      ? `signed ${verb} of ${plan.plan_id}: counts — ${tail}`
      : `signed ${verb} of ${plan.plan_id}: does not count — ${(result.reasons || []).join("; ") || "see policy"}`,
    result.counted);
  } catch (error) {
    notice(`${plan.plan_id}: ${error.message}`, false);
  }
  refresh();
}

async function proposeEdit(plan, text) {
  if (!signing) return notice("load your key file first: edits are signed in this page", false);
  let draft;
  try {
    draft = JSON.parse(text);
  } catch (error) {
    return notice(`the edited plan is not JSON: ${error.message}`, false);
  }
  const comment = comments.get(plan.plan_id) || "";
  try {
    const asked = await api(`/api/plans/${encodeURIComponent(plan.plan_id)}/edit-to-sign`, { draft, comment, key_id: signing.keyId });
    const signature = await sign(asked.payload);
    const result = await api(`/api/plans/${encodeURIComponent(plan.plan_id)}/edit`, { payload: asked.payload, signature, draft: asked.draft });
    if (result.refused) return notice(`edit of ${plan.plan_id} refused: ${result.refused}`, false);
    edits.delete(plan.plan_id);
    comments.delete(plan.plan_id);
    notice(`signed edit of ${plan.plan_id}: now revision ${result.revision}, ${result.outcome || result.status}`, true);
  } catch (error) {
    notice(`${plan.plan_id}: ${error.message}`, false);
  }
  refresh();
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell) => el("td", {}, cell))))));
}

function gateText(gate) {
  if (!gate || gate.min_success_rate === undefined) return "no gate";
  return `≥${Math.round(gate.min_success_rate * 100)}% healthy, ≤${gate.max_failures} failures, soak ${gate.soak_minutes || 0} min`;
}

function card(plan) {
  const verdict = plan.verdict || {};
  const dry = plan.dry_run || {};
  const reasons = new Map();
  for (const entry of plan.ignored) reasons.set(entry.approver, [...(reasons.get(entry.approver) || []), entry.reason]);
  const comment = el("textarea", { class: "comment", rows: 2, placeholder: "comment (signed with your decision)",
    oninput: (event) => comments.set(plan.plan_id, event.target.value) });
  comment.value = comments.get(plan.plan_id) || "";
  const draft = el("textarea", { class: "draft", rows: 14, spellcheck: "false",
    oninput: (event) => edits.set(plan.plan_id, event.target.value) });
  draft.value = edits.get(plan.plan_id) ?? JSON.stringify(plan.draft, null, 2);
  return el("section", { class: "card plan", "data-plan": plan.plan_id },
    el("h2", {}, `${plan.plan_id} r${plan.revision}: ${plan.module} ${plan.version} (${plan.intent})`),
    el("p", { class: "request" }, "requested by ", el("b", {}, plan.requested_by), ": “", plan.request, "”"),
    plan.description ? el("p", { class: "description" }, el("b", {}, "module: "), plan.description) : null,
    el("p", { class: "rationale" }, el("b", {}, "rationale: "), plan.rationale),
    table(["wave", "devices", "max parallel", "gate"],
      plan.waves.map((w, i) => [`${i + 1} ${w.name}`, w.devices ?? "?", w.max_parallel, gateText(w.gate)])),
    el("p", {}, el("b", {}, "schedule: "), plan.schedule, "; ", el("b", {}, "rollback to: "), plan.rollback),
    el("p", { class: "dry-run" }, el("b", {}, "dry run: "),
      `${dry.targets ?? 0} targets, about ${dry.predicted_minutes ?? "?"} min, blast radius ${dry.blast_radius ?? "?"} if the first wave fails`),
    plan.problems.map((p) => el("p", { class: "bad" }, "problem: ", p)),
    plan.warnings.map((w) => el("p", { class: "warn" }, "warning: ", w)),
    el("div", { class: "verdict" },
      el("p", {}, el("b", {}, "policy: "), verdict.allow ? el("span", { class: "good" }, "allowed") : el("span", { class: "bad" }, "denied"),
        verdict.allow ? ` with approvals: ${roles(verdict.approvals)}` : ""),
      (verdict.warn || []).map((w) => el("p", { class: "warn" }, "warn: ", w)),
      (verdict.approvals || []).map((n) => el("p", {}, `needs ${n.count}× ${n.role} — `, n.reason || ""))),
    el("h3", {}, "decisions"),
    plan.decisions.length
      ? table(["approver", "decision", "revision", "key", "at", "comment"],
        plan.decisions.map((d) => [d.approver, d.decision, d.this_revision ? "this one" : "an older one", d.key_id, when(d.at), d.comment || "-"]))
      : el("p", {}, "none yet"),
    el("p", { class: "counted" }, el("b", {}, "counted: "), plan.counted.join(", ") || "nobody yet"),
    [...reasons].map(([who, why]) => el("p", { class: "warn" }, "did not count: ", who, " — ", why.join("; "))),
    el("p", { class: "who-counts" }, el("b", {}, "whose decisions count: "),
      Object.entries(plan.who_counts).map(([role, people]) => `${role}: ${people.join(", ") || "nobody in the roster"}`).join("; ")),
    el("p", { class: "missing" }, el("b", {}, "missing: "), roles(plan.missing), el("b", {}, "  deadline: "), when(plan.deadline)),
    comment,
    el("div", { class: "actions" },
      el("button", { class: "approve", onclick: () => decide(plan, "approve") }, "Sign and approve"),
      el("button", { class: "reject", onclick: () => decide(plan, "reject") }, "Sign and reject"),
      el("a", { href: `/runs/${encodeURIComponent(plan.plan_id)}` }, "run page")),
    el("details", { class: "edit", open: edits.has(plan.plan_id),
      ontoggle: (event) => {
        if (event.target.open && !edits.has(plan.plan_id)) edits.set(plan.plan_id, draft.value);
        else if (!event.target.open) edits.delete(plan.plan_id);
      } },
      el("summary", {}, "Propose an edit"),
      el("p", {}, "The edited plan becomes a new revision: it is validated and decided by policy again, and needs approvals of its own."),
      draft,
      el("button", { class: "propose", onclick: () => proposeEdit(plan, draft.value) }, "Sign and propose edit")));
}

async function refresh() {
  try {
    const [plans, runs] = await Promise.all([api("/api/plans"), api("/api/runs")]);
    const focused = document.activeElement;
    const focusedPlan = focused && focused.closest ? focused.closest("[data-plan]") : null;
    if (focusedPlan && focused.tagName === "TEXTAREA") return; // do not pull the text away while typing
    plansRoot.replaceChildren(
      el("h2", { class: "count" }, plans.length ? `${plans.length} plan${plans.length === 1 ? "" : "s"} waiting for your roles` : "no plans are waiting for your roles"),
      ...plans.map(card));
    document.getElementById("run-list").replaceChildren(...runs.map((r) =>
      el("li", {}, el("a", { href: `/runs/${encodeURIComponent(r.plan_id)}` }, r.plan_id), ` ${r.status}${r.outcome ? `, ${r.outcome}` : ""} — `, r.request)));
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      forgetToken();
      return signIn(main, "the server did not accept that token");
    }
    notice(error.message, false);
  }
}

async function start() {
  if (!token()) return signIn(main);
  try {
    me = await api("/api/me");
  } catch (error) {
    forgetToken();
    return signIn(main, error instanceof ApiError && error.status === 401 ? "the server did not accept that token" : error.message);
  }
  document.getElementById("who").textContent = `signed in as ${me.person} (${me.roles.join(", ") || "no roles"})`;
  showKeyState();
  document.getElementById("key-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (!file) return;
    try {
      signing = await importKeyFile(await file.text());
    } catch (error) {
      signing = null;
      notice(`cannot load that key: ${error.message}`, false);
    }
    showKeyState();
  });
  await refresh();
  watch(refresh);
}

start();
