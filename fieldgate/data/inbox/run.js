// A run's status page: waves, devices per state, approvals and outcome, updated live.
import { ApiError, api, el, forgetToken, roles, signIn, token, watch, when } from "./common.js";

const main = document.getElementById("run");
const planId = decodeURIComponent(location.pathname.split("/").pop());

async function refresh() {
  let run;
  try {
    run = await api(`/api/runs/${encodeURIComponent(planId)}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      forgetToken();
      return signIn(main, "the server did not accept that token");
    }
    return main.replaceChildren(el("p", { class: "bad" }, error.message));
  }
  const state = run.outcome ? `${run.status}, ${run.outcome}` : run.status;
  main.replaceChildren(
    el("section", { class: "card", "data-run": run.plan_id },
      el("h2", {}, `${run.plan_id}${run.revision ? ` r${run.revision}` : ""}: ${run.module ?? "?"} ${run.version ?? ""}`),
      el("p", {}, "requested by ", el("b", {}, run.actor), ": “", run.request, "”"),
      el("p", { class: "state" }, el("b", {}, "state: "),
        el("span", { class: run.outcome === "completed" ? "good" : run.outcome ? "bad" : "" }, state)),
      run.reasons.length ? el("p", { class: "reasons" }, run.reasons.join("; ")) : null,
      run.status === "awaiting_approval" ? el("p", {}, el("b", {}, "waiting for: "), roles(run.missing)) : null,
      el("p", {}, el("b", {}, "counted approvals: "), run.counted.join(", ") || "none"),
      el("table", { class: "waves" },
        el("thead", {}, el("tr", {}, ["wave", "status", "devices", "applied", "failed", "unreachable", "gate"].map((h) => el("th", {}, h)))),
        el("tbody", {}, run.waves.map((w, i) => el("tr", { class: `wave ${w.status}` },
          [`${i + 1} ${w.name}`, w.status, w.devices, w.applied, w.failed, w.unreachable, w.gate || "-"].map((c) => el("td", {}, c)))))),
      el("h3", {}, "last events"),
      el("ul", { class: "events" }, run.events.map((e) => el("li", {}, `#${e.seq} ${when(e.at)} ${e.kind} by `, e.actor)))));
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
}

async function start() {
  if (!token()) return signIn(main);
  try {
    const me = await api("/api/me");
    document.getElementById("who").textContent = `signed in as ${me.person}`;
  } catch (error) {
    forgetToken();
    return signIn(main, error.message);
  }
  await refresh();
  watch(refresh);
}

start();
