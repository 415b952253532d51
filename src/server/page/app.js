// The wasnap page: a list of instances, one instance's question, its
// version tree and what is inside a version. Everything comes from the
// JSON API; /api/events says when to look again.
"use strict";

const $ = (id) => document.getElementById(id);
let selected = null;        // instance id
let selectedVersion = null; // version number

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body instanceof Blob || body instanceof ArrayBuffer) {
    options.body = body;
  } else if (body !== undefined) {
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error(data && data.error ? data.error : response.statusText);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function badge(state) { return el("span", { class: "badge " + state }, state); }

function when(ms) {
  const left = ms - Date.now();
  const at = new Date(ms).toLocaleString();
  if (left <= 0) return at + " (due)";
  const s = Math.round(left / 1000);
  const text = s < 60 ? s + "s" : s < 3600 ? Math.round(s / 60) + " min" :
    s < 86400 ? Math.round(s / 3600) + " h" : Math.round(s / 86400) + " days";
  return at + " (in " + text + ")";
}

function valueOf(item) {
  if (item.value !== undefined) return item.value;
  if (item.value_base64 !== undefined) return "(" + item.value_base64.length + " base64 bytes)";
  return "";
}

// What an instance waits for, in a few words.
function waitingFor(inst) {
  switch (inst.state) {
    case "sleeping": return "wakes " + when(inst.wake_at);
    case "suspended": {
      const q = valueOf(inst) || "(a bare suspension)";
      return inst.timer === "deadline" ? q + " — deadline " + when(inst.wake_at) : q;
    }
    case "running": return "running…";
    case "finished": return "done";
    default: return valueOf(inst);
  }
}

// The answers a question offers as buttons: a trailing "[a/b]" names
// them; a yes/no question ("…?", approval, permission) gets true/false,
// what the article's workflow.send(True) sends.
function choices(question) {
  const hint = /\[([^\[\]\/]+)\/([^\[\]\/]+)\]\s*$/.exec(question);
  if (hint) return [hint[1].trim(), hint[2].trim()];
  if (/\?\s*$/.test(question) || /approv|permission|confirm|allow/i.test(question)) {
    return ["true", "false"];
  }
  return null;
}

async function refreshList() {
  const list = await api("GET", "/api/instances");
  const body = $("instances").querySelector("tbody");
  body.replaceChildren();
  for (const inst of list.slice().reverse()) {
    const row = el("tr", { "data-instance": inst.id, onclick: () => select(inst.id) },
      el("td", {}, String(inst.id)),
      el("td", {}, badge(inst.state)),
      el("td", {}, waitingFor(inst)));
    if (inst.id === selected) row.classList.add("selected");
    body.append(row);
  }
  $("no-instances").hidden = list.length > 0;
}

async function refreshModules() {
  const modules = await api("GET", "/api/modules");
  const select = $("module-select");
  const current = select.value;
  select.replaceChildren(el("option", { value: "" }, modules.length ? "(choose)" : "(none yet)"));
  for (const m of modules) {
    select.append(el("option", { value: m.module }, m.module.slice(0, 12) + " (" + m.bytes + " bytes)"));
  }
  select.value = current;
}

async function select(id) {
  if (selected !== id) selectedVersion = null;
  selected = id;
  for (const row of $("instances").querySelectorAll("tbody tr")) {
    row.classList.toggle("selected", Number(row.dataset.instance) === id);
  }
  await refreshDetail();
}

async function refreshDetail() {
  if (selected === null) return;
  const [inst, versions] = await Promise.all([
    api("GET", "/api/instances/" + selected),
    api("GET", "/api/instances/" + selected + "/versions"),
  ]);
  $("nothing").hidden = true;
  $("detail").hidden = false;
  $("detail-title").replaceChildren("Instance " + inst.id + " ", badge(inst.state));
  // Redrawn only when something changed, so that a half-typed answer
  // survives the page's periodic refresh.
  const signature = JSON.stringify([inst.id, inst.state, inst.head, inst.wake_at, versions.length]);
  if (signature !== rendered) {
    rendered = signature;
    renderPending(inst);
    renderTree(inst, versions);
    $("version-card").hidden = true;
    if (selectedVersion !== null) {
      const v = versions.find((v) => v.version === selectedVersion);
      if (v) renderVersion(inst, v);
    }
  }
}
let rendered = null;

function replyBox(label, onSend) {
  const input = el("input", { type: "text", id: "reply-text", placeholder: "your answer" });
  const send = el("button", { class: "primary", id: "reply-send", onclick: () => onSend(input.value) }, label);
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") onSend(input.value); });
  return el("div", {}, input, send);
}

function renderPending(inst) {
  const box = $("pending");
  box.replaceChildren();
  $("answer-status").textContent = "";
  if (inst.state === "suspended") {
    const question = valueOf(inst);
    box.append(el("div", { class: "muted" }, "The workflow asks:"),
      el("div", { class: "question", id: "question" }, question || "(nothing: a bare suspension)"));
    if (inst.timer === "deadline") {
      box.append(el("p", {}, "Answer before " + when(inst.wake_at) + ", or it goes on without an answer. ",
        el("button", { id: "deadline-now", onclick: () => answer(inst, { wake: true }) }, "Let the deadline pass now")));
    }
    const options = choices(question);
    if (options) {
      box.append(el("div", {},
        el("button", { class: "yes", id: "answer-yes", onclick: () => answer(inst, { reply: options[0] }) }, options[0]),
        el("button", { class: "no", id: "answer-no", onclick: () => answer(inst, { reply: options[1] }) }, options[1])));
    }
    box.append(replyBox(options ? "Send another answer" : "Send answer", (text) => answer(inst, { reply: text })));
  } else if (inst.state === "sleeping") {
    box.append(el("p", { class: "question" }, "Sleeping until " + when(inst.wake_at)),
      el("p", { class: "muted" }, "The server wakes it then, even after a restart."),
      el("button", { id: "wake-now", onclick: () => answer(inst, { wake: true }) }, "Wake it now"));
  } else if (inst.state === "running") {
    box.append(el("p", {}, "Running…"));
  } else if (inst.state === "finished") {
    box.append(el("p", {}, "The workflow has finished. Pick an earlier version below to branch from it."));
  } else if (inst.state === "failed") {
    box.append(el("p", {}, "The last run failed. Pick an earlier version below to try again from there."));
  }
}

async function answer(inst, body, version = inst.head, branch = false) {
  const status = $("answer-status");
  status.className = "status";
  status.textContent = "Running…";
  try {
    const after = await api("POST", "/api/instances/" + inst.id + "/resume",
      Object.assign({ version, branch }, body));
    selectedVersion = null;
    await Promise.all([refreshList(), refreshDetail()]);
    $("answer-status").className = "status";
    $("answer-status").textContent = "Done: instance " + after.id + " is " + after.state + ".";
  } catch (e) {
    status.className = "status error";
    status.textContent = e.message;
  }
}

function describe(v) {
  switch (v.state) {
    case "sleeping": return "sleeps until " + new Date(v.wake_at).toLocaleTimeString();
    case "suspended": return "“" + valueOf(v) + "”" + (v.timer === "deadline" ? " (with a deadline)" : "");
    case "finished": return "finished";
    case "failed": return "failed: " + (v.message || "");
    default: return v.state;
  }
}

function renderTree(inst, versions) {
  const children = new Map();
  for (const v of versions) {
    const key = v.parent === null ? 0 : v.parent;
    if (!children.has(key)) children.set(key, []);
    children.get(key).push(v);
  }
  const build = (parent) => {
    const list = el("ul");
    for (const v of children.get(parent) || []) {
      const node = el("span", { class: "node", "data-version": v.version, onclick: () => { selectedVersion = v.version; renderVersion(inst, v); markSelected(); } },
        el("b", {}, "v" + v.version), " ", badge(v.state), " ", describe(v));
      if (v.version === inst.head) node.classList.add("head");
      const item = el("li", {});
      if (v.parent !== null) {
        item.append(el("div", { class: "reply" }, v.reply !== undefined && v.reply !== "" ? "answered “" + v.reply + "”" : "continued"));
      }
      item.append(node);
      if (children.has(v.version)) item.append(build(v.version));
      list.append(item);
    }
    return list;
  };
  const tree = $("tree");
  tree.replaceChildren(...build(0).children);
  markSelected();
}

function markSelected() {
  for (const node of document.querySelectorAll(".node")) {
    node.classList.toggle("selected", Number(node.dataset.version) === selectedVersion);
  }
}

async function renderVersion(inst, v) {
  $("version-card").hidden = false;
  $("version-title").replaceChildren("Version " + v.version + " ", badge(v.state));
  const actions = $("version-actions");
  actions.replaceChildren();
  const inspection = $("inspection");
  inspection.replaceChildren();
  const facts = el("p", { class: "muted" }, "Committed " + new Date(v.created_ms).toLocaleString() +
    (v.parent !== null ? ", resumed from v" + v.parent : "") +
    ", stored in " + v.stored_bytes + " new bytes.");
  actions.append(facts);
  if (v.state !== "suspended" && v.state !== "sleeping") return;
  actions.append(el("a", { href: "/api/instances/" + inst.id + "/versions/" + v.version + "/snapshot", download: "", id: "download" }, "Download snapshot"));
  const branch = el("div", { id: "branch" }, el("h3", {}, "Answer this version again (a branch)"));
  const options = v.state === "suspended" ? choices(valueOf(v)) : null;
  if (options) {
    for (const [i, option] of options.entries()) {
      branch.append(el("button", { class: i === 0 ? "yes" : "no", id: "branch-" + option, onclick: () => answer(inst, { reply: option }, v.version, true) }, option));
    }
  }
  branch.append(replyBox("Branch with this answer", (text) => answer(inst, { reply: text, wake: v.state === "sleeping" }, v.version, true)));
  actions.append(branch);
  try {
    const view = await api("GET", "/api/instances/" + inst.id + "/versions/" + v.version + "/inspect");
    inspection.append(el("h3", {}, "Suspended in " + view.suspended_in));
    for (const c of view.coroutines) {
      const name = c.id === 0 ? "main" : "coroutine " + c.id;
      inspection.append(el("div", {}, el("b", {}, name), " — " + c.state + (c.running ? ", the one that suspended" : "") +
        ", " + c.stack_bytes + " stack bytes"));
      const frames = el("ol", { class: "frames", start: "0" });
      for (const f of c.frames) {
        const values = f.values.map(([n, val]) => n + "=" + val).join(" ");
        frames.append(el("li", {}, f.name, values ? el("span", { class: "values" }, "  " + values) : null));
      }
      inspection.append(frames);
    }
    for (const [i, m] of view.memories.entries()) {
      const share = m.page_count ? Math.round(100 * m.pages_in_use / m.page_count) : 0;
      inspection.append(el("div", {}, "Memory " + i + ": " + m.pages_in_use + " of " + m.page_count +
        " pages in use (" + m.bytes_in_use + " of " + m.bytes + " bytes)"),
        el("div", { class: "meter" }, el("div", { style: "width:" + share + "%" })));
    }
  } catch (e) {
    inspection.append(el("p", { class: "status error" }, e.message));
  }
}

async function startWorkflow() {
  const status = $("start-status");
  status.className = "status";
  try {
    let module = $("module-select").value;
    const file = $("module-file").files[0];
    const args = $("start-args").value.trim();
    if (file && /\.(js|py)$/.test(file.name)) {
      // A script: the server starts it in its language's runtime.
      status.textContent = "Starting " + file.name + "…";
      const script = { name: file.name, source: await file.text() };
      await started(await api("POST", "/api/instances",
        { script, args: args ? args.split(/\s+/) : [] }));
      return;
    }
    if (file) {
      status.textContent = "Uploading " + file.name + "…";
      module = (await api("POST", "/api/modules", file)).module;
    }
    if (!module) throw new Error("choose a module or script file first");
    status.textContent = "Starting…";
    await started(await api("POST", "/api/instances",
      { module, args: args ? args.split(/\s+/) : (file ? [file.name] : []) }));
  } catch (e) {
    status.className = "status error";
    status.textContent = e.message;
  }
}

/** Shows the instance just started. */
async function started(inst) {
  $("start-status").textContent = "Started instance " + inst.id + ".";
  $("module-file").value = "";
  await Promise.all([refreshList(), refreshModules()]);
  await select(inst.id);
}

let pendingRefresh = null;
function refreshSoon() {
  if (pendingRefresh) return;
  pendingRefresh = setTimeout(async () => {
    pendingRefresh = null;
    try { await Promise.all([refreshList(), refreshDetail()]); } catch (e) { /* the next event retries */ }
  }, 150);
}

function listen() {
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => $("live").classList.add("on"));
  events.addEventListener("error", () => $("live").classList.remove("on"));
  events.addEventListener("change", refreshSoon);
  events.addEventListener("resync", refreshSoon);
}

$("start-button").addEventListener("click", startWorkflow);
refreshList();
refreshModules();
listen();
// Relative times ("in 3 s") age; redraw them now and then.
setInterval(refreshSoon, 5000);
