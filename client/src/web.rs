//! `tessera web --listen ADDR`: a small read-only status page (what `tessera status` shows:
//! health, servers with state and fill, replication and repair, mounts, workers and their last
//! errors, recent events), refreshed every 5 s, and the same as JSON at `/status.json`. Plain HTTP on loopback
//! only: the page has no authentication of its own (the admin certificate is this command's).

use crate::admin::{human, Admin, StatusJson};
use anyhow::bail;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use tessera_common::http::{self, Reply};

pub async fn serve(admin: Admin, listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    if !listen.ip().is_loopback() {
        bail!("--listen {listen}: the page has no authentication, so it listens on loopback only (127.0.0.1 or [::1]); reach it from elsewhere through an SSH tunnel");
    }
    let admin = Arc::new(admin);
    let bound = http::serve(listen, move |path| {
        let admin = admin.clone();
        async move {
            let page = |r: anyhow::Result<StatusJson>, f: fn(&StatusJson) -> String| match r {
                Ok(s) => f(&s),
                Err(e) => error_page(&format!("{e:#}")),
            };
            match path.as_str() {
                "/" => Reply::ok("text/html; charset=utf-8", page(admin.report().await, render)),
                "/status.json" => match admin.report().await {
                    Ok(s) => Reply::ok("application/json", serde_json::to_string_pretty(&s).unwrap_or_default()),
                    Err(e) => Reply { status: "503 Service Unavailable", content_type: "text/plain; charset=utf-8", body: format!("{e:#}\n") },
                },
                _ => Reply::not_found("the page is at /, its data at /status.json"),
            }
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("--listen {listen}: cannot listen: {e}"))?;
    Ok(bound)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}th{background:#f4f4f4}\
.ok{color:#176f2c}.warn{color:#9a6700}.bad{color:#b42318}.health{font-size:1.2em;font-weight:600}\
.bar{width:120px;height:10px;background:#eee;display:inline-block;vertical-align:middle}.bar i{display:block;height:100%;background:#3b7dd8}\
.small{color:#666}";

fn page(title: &str, body: &str) -> String {
    format!("<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\"><title>{title}</title><style>{STYLE}</style></head><body>{body}</body></html>")
}

fn error_page(why: &str) -> String {
    page("Tessera: unreachable", &format!("<h1>Tessera cluster</h1><p class=\"health bad\" id=\"health\">metadata service unreachable: {}</p>", esc(why)))
}

/// The health line: what is wrong, worst first, or that nothing is.
fn health(s: &StatusJson) -> (&'static str, String) {
    let mut bad = Vec::new();
    let mut warn = Vec::new();
    if s.meta_state != "ok" {
        bad.push(format!("metadata {}", s.meta_state));
    }
    if s.blocks.missing > 0 {
        bad.push(format!("{} blocks missing", s.blocks.missing));
    }
    let down = s.nodes.iter().filter(|n| n.state == "down").count();
    if down > 0 {
        warn.push(format!("{down} server(s) down"));
    }
    let full = s.nodes.iter().filter(|n| n.full && n.state == "up").count();
    if full > 0 {
        warn.push(format!("{full} server(s) full"));
    }
    if s.blocks.under_replicated > 0 {
        warn.push(format!("{} blocks under-replicated", s.blocks.under_replicated));
    }
    let failing = s.workers.iter().filter(|w| w.status.consecutive_errors > 0).count();
    if failing > 0 {
        warn.push(format!("{failing} worker(s) failing"));
    }
    match (bad.is_empty(), warn.is_empty()) {
        (false, _) => ("bad", [bad, warn].concat().join(", ")),
        (true, false) => ("warn", warn.join(", ")),
        (true, true) => ("ok", format!("healthy: {} servers up, every block has its {} copies", s.nodes.iter().filter(|n| n.state == "up").count(), s.replicas)),
    }
}

fn render(s: &StatusJson) -> String {
    let mut b = String::new();
    let (class, line) = health(s);
    let _ = write!(b, "<h1>Tessera cluster</h1><p class=\"health {class}\" id=\"health\">{}</p>", esc(&line));
    let _ = write!(
        b,
        "<p id=\"summary\">{} files · {} logical, {} stored · dedup ratio {:.2} · ring version {}</p>",
        s.files,
        human(s.bytes.logical),
        human(s.bytes.stored),
        s.bytes.dedup_ratio,
        s.ring_version
    );
    b += "<h2>Servers</h2><table id=\"servers\"><tr><th>id</th><th>zone</th><th>address</th><th>state</th><th>fill</th><th>used</th><th>free</th><th>blocks</th><th>last heartbeat</th></tr>";
    for n in &s.nodes {
        let fill = if n.capacity == 0 { 0.0 } else { n.used as f64 * 100.0 / n.capacity as f64 };
        let state = match (n.draining && n.state != "out", n.full && n.state == "up") {
            (true, _) => format!("{}/drain", n.state),
            (false, true) => "up/full".into(),
            _ => n.state.clone(),
        };
        let class = if state == "up" { "ok" } else if n.state == "up" { "warn" } else { "bad" };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{state}</td><td><span class=\"bar\"><i style=\"width:{fill:.1}%\"></i></span> {fill:.1}%</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s ago</td></tr>",
            esc(&n.id),
            esc(&n.zone),
            esc(&n.addr),
            human(n.used),
            human(n.free),
            n.blocks,
            n.last_heartbeat_ms as f64 / 1000.0
        );
    }
    b += "</table>";
    let _ = write!(
        b,
        "<h2>Replication</h2><p id=\"replication\">{} copies of each block · {} blocks: {} under-replicated, {} missing, {} misplaced · repair: {} copies waiting to be sent</p>",
        s.replicas, s.blocks.total, s.blocks.under_replicated, s.blocks.missing, s.blocks.misplaced, s.repair_pending
    );
    if !s.meta_servers.is_empty() {
        b += "<h2>Metadata servers</h2><table id=\"meta\"><tr><th>id</th><th>address</th><th>role</th><th>term</th><th>log</th><th>commit</th><th>applied</th><th>lag</th></tr>";
        for m in &s.meta_servers {
            let applied = m.applied_index.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                m.id,
                esc(&m.addr),
                esc(&m.role),
                m.term,
                m.log_index,
                m.commit_index,
                applied,
                m.lag
            );
        }
        b += "</table>";
    }
    b += "<h2>Mounts</h2><table id=\"mounts\"><tr><th>session</th><th>certificate</th><th>client</th><th>address</th><th>since</th><th>last heartbeat</th><th>open files</th><th>locks</th></tr>";
    for m in &s.mounts {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s ago</td><td>{}</td><td>{}</td></tr>",
            m.session,
            esc(&m.cert),
            esc(&m.client),
            esc(if m.addr.is_empty() { "-" } else { &m.addr }),
            esc(&m.since),
            m.last_heartbeat_ms as f64 / 1000.0,
            m.open_files,
            m.locks
        );
    }
    b += "</table>";
    b += "<h2>Workers and their last errors</h2><table id=\"workers\"><tr><th>node</th><th>worker</th><th>state</th><th>passes</th><th>errors</th><th>progress</th><th>last error</th></tr>";
    for w in &s.workers {
        let st = &w.status;
        let err = st.last_error.as_deref().map(|e| format!("{}{}", if st.consecutive_errors > 0 { "" } else { "(since recovered) " }, e)).unwrap_or_default();
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"small\">{}</td><td class=\"{}\">{}</td></tr>",
            esc(&w.node),
            esc(&st.name),
            esc(&st.state),
            st.passes,
            st.errors,
            esc(&st.progress),
            if st.consecutive_errors > 0 { "bad" } else { "small" },
            esc(&err)
        );
    }
    b += "</table><h2>Recent events</h2><table id=\"events\"><tr><th>when</th><th>what</th></tr>";
    for e in s.events.iter().rev().take(30) {
        let _ = write!(b, "<tr><td class=\"small\">{}</td><td>{}</td></tr>", esc(&e.at), esc(&e.what));
    }
    b += "</table><p class=\"small\">Refreshed every 5 s · the same data: <a href=\"/status.json\">/status.json</a> · <code>tessera status</code></p>";
    page("Tessera", &b)
}
