//! What the CLI prints for people: tables for lists, `key: value` lines for
//! one record, times as dates with how long ago; `--json` prints what the
//! HTTP API served instead.

use comfy_table::{presets::NOTHING, Cell, Table};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Field names that hold a time in epoch milliseconds.
fn is_time(key: &str) -> bool {
    key.ends_with("At")
        || key.ends_with("Until")
        || matches!(
            key,
            "ts" | "until" | "lastHeartbeat" | "lastActive" | "windowEnds" | "at"
        )
}

/// Epoch milliseconds as a date and how long ago (or from now).
pub(crate) fn when(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    let date = humantime::format_rfc3339_seconds(at).to_string();
    let now = SystemTime::now();
    let rel = match now.duration_since(at) {
        Ok(d) => format!("{} ago", short(d)),
        Err(e) => format!("in {}", short(e.duration())),
    };
    format!("{date} ({rel})")
}

/// How long ago, alone (for table cells).
pub(crate) fn ago(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    match SystemTime::now().duration_since(at) {
        Ok(d) => format!("{} ago", short(d)),
        Err(e) => format!("in {}", short(e.duration())),
    }
}

fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{:.1} h", s as f64 / 3600.0),
        _ => format!("{:.1} d", s as f64 / 86400.0),
    }
}

/// One value as a table cell or a line's value.
fn scalar(key: &str, v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if is_time(key) && n.as_u64().is_some_and(|t| t > 1_000_000_000_000) => {
            when(n.as_u64().unwrap_or(0))
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{}", (f * 1000.0).round() / 1000.0),
            _ => n.to_string(),
        },
        Value::Bool(b) => b.to_string(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => a
            .iter()
            .map(|x| scalar("", x))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// A list of records as a table: `columns` are (header, JSON pointer).
pub(crate) fn table(items: &[Value], columns: &[(&str, &str)]) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(columns.iter().map(|(h, _)| Cell::new(h)));
    for item in items {
        t.add_row(columns.iter().map(|(_, p)| {
            let key = p.rsplit('/').next().unwrap_or("");
            let v = item.pointer(p).unwrap_or(&Value::Null);
            match v.as_u64() {
                Some(ms) if is_time(key) && ms > 1_000_000_000_000 => Cell::new(ago(ms)),
                Some(0) if is_time(key) => Cell::new("-"),
                _ => Cell::new(scalar(key, v)),
            }
        }));
    }
    t.to_string()
}

/// One record as `key: value` lines, nested objects indented, lists of
/// records as tables.
pub(crate) fn record(v: &Value) -> String {
    let mut out = String::new();
    lines(v, 0, &mut out);
    out
}

fn lines(v: &Value, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    let Value::Object(map) = v else {
        out.push_str(&format!("{pad}{}\n", scalar("", v)));
        return;
    };
    for (k, v) in map {
        match v {
            Value::Object(_) => {
                out.push_str(&format!("{pad}{k}:\n"));
                lines(v, depth + 1, out);
            }
            Value::Array(a) if a.iter().any(Value::is_object) => {
                out.push_str(&format!("{pad}{k}:\n"));
                let mut cols: Vec<String> = Vec::new();
                for item in a {
                    for key in item.as_object().into_iter().flat_map(|o| o.keys()) {
                        if !cols.contains(key) {
                            cols.push(key.clone());
                        }
                    }
                }
                let pointers: Vec<String> = cols.iter().map(|c| format!("/{c}")).collect();
                let spec: Vec<(&str, &str)> = cols
                    .iter()
                    .zip(&pointers)
                    .map(|(c, p)| (c.as_str(), p.as_str()))
                    .collect();
                for l in table(a, &spec).lines() {
                    out.push_str(&format!("{pad}  {l}\n"));
                }
            }
            _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(k, v))),
        }
    }
}
