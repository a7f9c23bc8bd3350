// The topology page's only script: long-poll /v2.0/alcor/topology and redraw.
// Names come from tenants, so every string goes in through textContent, never innerHTML.
"use strict";

const WAIT_SECONDS = 2; // sync state is not in the change log: refresh at least this often
const state = { rev: null, token: localStorage.getItem("alcor.token") || "" };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const slug = (s) => String(s).replace(/\s+/g, "-");
const badge = (text, cls) => el("span", { class: `badge ${slug(cls || text)}` }, text);

function portRow(p, hosts) {
  const host = p.host ? hosts[p.host] : null;
  return el("tr", { "data-port": p.id },
    el("td", {}, badge(p.status)),
    el("td", { class: "port-name" }, p.name || p.id.slice(0, 8)),
    el("td", {}, p.ips.join(", ") || "no IP"),
    el("td", { class: "meta" }, p.mac_address || ""),
    el("td", {}, p.host ? el("span", {}, "on ", el("b", {}, p.host), " ",
                            host ? badge(host.state) : "") : el("span", { class: "meta" }, "unbound")),
    el("td", { class: "meta" }, p.device_owner || ""));
}

function portTable(ports, hosts) {
  if (!ports.length) return el("div", { class: "empty" }, "no ports");
  return el("table", { class: "ports" }, el("tbody", {}, ...ports.map((p) => portRow(p, hosts))));
}

function vpcCard(v, hosts) {
  const card = el("article", { class: "vpc", "data-vpc": v.id },
    el("div", { class: "vpc-head" },
      el("span", { class: "vpc-name" }, v.name || "(unnamed)"),
      el("span", { class: "meta" }, `VNI ${v.vni}`),
      el("span", { class: "meta" }, `project ${v.project_id}`),
      v.shared ? el("span", { class: "meta" }, "shared") : null,
      el("span", { class: "id" }, v.id)));
  if (!v.subnets.length && !v.unaddressed_ports.length) card.append(el("div", { class: "empty" }, "no subnets"));
  for (const s of v.subnets) {
    card.append(el("div", { class: "subnet", "data-subnet": s.id },
      el("div", { class: "subnet-head" }, `${s.name ? s.name + " " : ""}${s.cidr}`,
        el("span", { class: "meta" }, ` gateway ${s.gateway_ip || "none"}`)),
      portTable(s.ports, hosts)));
  }
  if (v.unaddressed_ports.length) {
    card.append(el("div", { class: "subnet" }, el("div", { class: "subnet-head" }, "no subnet"),
      portTable(v.unaddressed_ports, hosts)));
  }
  return card;
}

function hostRow(h) {
  const rev = h.sync && h.sync.goal_rev !== undefined
    ? `${h.sync.applied_rev === null ? "–" : h.sync.applied_rev} / ${h.sync.goal_rev}` : "";
  const label = h.state === "lagging" ? `lagging ${h.lag}` : h.state;
  return el("tr", { "data-host": h.node_name },
    el("td", { class: "host-name" }, h.node_name),
    el("td", {}, h.local_ip || ""),
    el("td", {}, badge(label, h.state)),
    el("td", { class: "meta", title: "applied / goal rev" }, rev),
    el("td", {}, `${h.active}/${h.ports} active`));
}

function render(t) {
  const hosts = Object.fromEntries(t.hosts.map((h) => [h.node_name, h]));
  const ports = t.vpcs.flatMap((v) => v.subnets.flatMap((s) => s.ports).concat(v.unaddressed_ports));
  const active = ports.filter((p) => p.status === "ACTIVE").length;
  const synced = t.hosts.filter((h) => h.state === "in sync").length;
  const subnets = t.vpcs.reduce((n, v) => n + v.subnets.length, 0);
  document.getElementById("summary").replaceChildren(
    el("b", {}, t.vpcs.length), " VPCs · ", el("b", {}, subnets), " subnets · ",
    el("b", {}, ports.length), ` ports (${active} active) · `,
    el("b", {}, t.hosts.length), ` hosts (${synced} in sync) · rev ${t.rev}`,
    t.watermark === null ? "" : ` · delivered ${t.watermark}`);
  const vpcs = document.getElementById("vpcs");
  vpcs.replaceChildren(...(t.vpcs.length ? t.vpcs.map((v) => vpcCard(v, hosts))
    : [el("div", { class: "empty" }, "no VPCs yet")]));
  document.querySelector("#hosts tbody").replaceChildren(...t.hosts.map(hostRow));
  document.getElementById("routers").replaceChildren(...(t.routers.length
    ? t.routers.map((r) => el("li", { "data-router": r.id }, r.name || r.id, " ", badge(r.status)))
    : [el("li", { class: "empty" }, "none")]));
  document.body.dataset.rev = t.rev; // lets a test (or a curious operator) see what was drawn
}

function setConn(text, down) {
  const c = document.getElementById("conn");
  c.textContent = text;
  c.classList.toggle("down", !!down);
}

async function poll() {
  for (;;) {
    const q = state.rev === null ? "" : `?after=${state.rev}&wait=${WAIT_SECONDS}`;
    try {
      const headers = state.token ? { "X-Auth-Token": state.token } : {};
      const r = await fetch(`/v2.0/alcor/topology${q}`, { headers });
      if (r.status === 401 || r.status === 403) {
        document.getElementById("auth").hidden = false;
        document.getElementById("auth-msg").textContent = "an admin token is needed";
        setConn("not authorised", true);
        return; // resumes when a token is submitted
      }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const t = (await r.json()).topology;
      render(t);
      state.rev = t.rev;
      setConn(`live · updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      setConn(`controller unreachable (${e.message}); retrying`, true);
      state.rev = null;
      await new Promise((ok) => setTimeout(ok, 2000));
    }
  }
}

document.getElementById("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = document.getElementById("token").value;
  localStorage.setItem("alcor.token", state.token);
  document.getElementById("auth").hidden = true;
  poll();
});

poll();
