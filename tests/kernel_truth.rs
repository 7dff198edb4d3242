//! The proof: for every capture of real Linux TCP in `pcaps/`, the state tcpstate infers for
//! every endpoint at the end of the capture must equal the kernel's (`ss -tan` in the
//! namespace, taken before the capture stopped; a socket ss no longer lists is CLOSED), and
//! the facts the capture script knows (handshake outcome, first closer, who reset) must match.
//!
//! Endpoints the truth file marks `unknowable` (the kernel changed state silently, with no
//! packet to show it) are held to what the packets show (`passive_state`) instead, and listed.

mod common;

use common::{json_lines, pcaps_dir, tcpstate};
use std::collections::HashMap;

use serde_json::Value;

fn check_capture(name: &str) {
    let dir = pcaps_dir();
    let pcap = dir.join(format!("{name}.pcap"));
    let truth: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}.truth.json"))).expect("truth file"),
    )
    .expect("truth json");
    let pcap = pcap.to_str().unwrap();
    let mut problems: Vec<String> = Vec::new();

    // 1. Endpoint states at the end of the capture.
    let common::Run {
        stdout: out,
        stderr: err,
        code,
    } = tcpstate(&["states", "--all", "--format", "json", "-q", "-r", pcap]);
    assert_eq!(code, 0, "{name}: tcpstate states failed: {err}");
    // The latest connection on a 4-tuple speaks for it; earlier ones were superseded.
    let mut tool: HashMap<(String, String), (u64, String)> = HashMap::new();
    for row in json_lines(&out) {
        if row["state"] == "LISTEN" {
            continue;
        }
        let key = (
            row["local"].as_str().unwrap().to_string(),
            row["remote"].as_str().unwrap().to_string(),
        );
        let conn = row["conn"].as_u64().unwrap();
        let state = row["state"].as_str().unwrap().to_string();
        if tool.get(&key).is_none_or(|(c, _)| *c < conn) {
            tool.insert(key, (conn, state));
        }
    }
    let mut kernel: HashMap<(String, String), String> = HashMap::new();
    for s in truth["snapshot"]["sockets"].as_array().unwrap() {
        let key = (
            s["local"].as_str().unwrap().to_string(),
            s["remote"].as_str().unwrap().to_string(),
        );
        kernel.insert(key, s["state"].as_str().unwrap().to_string());
    }
    let mut unknowable: HashMap<(String, String), String> = HashMap::new();
    for u in truth["unknowable"].as_array().unwrap() {
        let key = (
            u["local"].as_str().unwrap().to_string(),
            u["remote"].as_str().unwrap().to_string(),
        );
        unknowable.insert(key, u["passive_state"].as_str().unwrap().to_string());
    }
    for key in kernel.keys() {
        if !tool.contains_key(key) {
            problems.push(format!(
                "kernel socket {} -> {} ({}) not seen by tcpstate",
                key.0, key.1, kernel[key]
            ));
        }
    }
    let mut compared = 0;
    for (key, (conn, got)) in &tool {
        let kernel_state = kernel
            .get(key)
            .cloned()
            .unwrap_or_else(|| "CLOSED".to_string());
        compared += 1;
        // Where no packet can show the kernel's state, what the packets show is also right.
        let passive = unknowable.get(key);
        if *got != kernel_state && passive != Some(got) {
            let also = passive
                .map(|p| format!(" (or {p}, all the packets can show)"))
                .unwrap_or_default();
            problems.push(format!(
                "{} -> {} (conn {conn}): tcpstate {got}, kernel {kernel_state}{also}",
                key.0, key.1
            ));
        }
    }
    assert!(compared > 0, "{name}: no endpoints compared");

    // 2. Per-connection facts, matched by (client, server) in order of appearance.
    let common::Run {
        stdout: out,
        stderr: err,
        code,
    } = tcpstate(&["conns", "--format", "json", "-q", "-r", pcap]);
    assert_eq!(code, 0, "{name}: tcpstate conns failed: {err}");
    let rows = json_lines(&out);
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for fact in truth["connections"].as_array().unwrap() {
        let client = fact["client"].as_str().unwrap().to_string();
        let server = fact["server"].as_str().unwrap().to_string();
        let nth = seen.entry((client.clone(), server.clone())).or_default();
        let matching: Vec<&Value> = rows
            .iter()
            .filter(|r| r["client"] == client.as_str() && r["server"] == server.as_str())
            .collect();
        let Some(row) = matching.get(*nth) else {
            problems.push(format!(
                "connection {client} -> {server} #{nth} not reported"
            ));
            continue;
        };
        *nth += 1;
        for field in ["handshake", "first_closer", "reset_by"] {
            if row[field] != fact[field] {
                problems.push(format!(
                    "{client} -> {server} (conn {}): {field} tcpstate {}, truth {}",
                    row["id"], row[field], fact[field]
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{name}: {} mismatches:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

test_each_capture!(check_capture);
