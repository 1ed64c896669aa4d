//! Text renderings of the API's JSON. They read fields leniently (a missing field prints as
//! empty) so a newer server with more fields never breaks an older client.

use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn compact(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// One task as aligned `name value` lines.
pub fn task(t: &Value) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("id", s(&t["id"]).into()),
        ("type", s(&t["type"]).into()),
        ("status", s(&t["status"]).into()),
        ("priority", s(&t["priority"]).into()),
        (
            "attempts",
            format!("{}/{}", compact(&t["attempts"]), compact(&t["max_attempts"])),
        ),
        ("timeout", format!("{} s", compact(&t["timeout_seconds"]))),
        ("created", s(&t["created_at"]).into()),
        ("updated", s(&t["updated_at"]).into()),
    ];
    for (name, field) in [
        ("run at", "run_at"),
        ("started", "started_at"),
        ("finished", "finished_at"),
    ] {
        if let Some(v) = t[field].as_str() {
            rows.push((name, v.into()));
        }
    }
    if t["cancel_requested"].as_bool() == Some(true) {
        rows.push(("cancel", "requested".into()));
    }
    rows.push(("payload", compact(&t["payload"])));
    if !t["result"].is_null() {
        rows.push(("result", compact(&t["result"])));
    }
    if !t["error"].is_null() {
        rows.push((
            "error",
            format!("{}: {}", s(&t["error"]["kind"]), s(&t["error"]["message"])),
        ));
    }
    rows.iter()
        .map(|(k, v)| format!("{k:<9} {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `{"tasks", "next_cursor"}` as a table.
pub fn task_list(page: &Value) -> String {
    let tasks = page["tasks"].as_array().map(Vec::as_slice).unwrap_or_default();
    if tasks.is_empty() {
        return "no tasks".into();
    }
    let mut lines = vec![format!(
        "{:<26}  {:<16}  {:<8}  {:<9}  {:>8}  CREATED",
        "ID", "TYPE", "PRIORITY", "STATUS", "ATTEMPTS"
    )];
    for t in tasks {
        lines.push(format!(
            "{:<26}  {:<16}  {:<8}  {:<9}  {:>8}  {}",
            s(&t["id"]),
            s(&t["type"]),
            s(&t["priority"]),
            s(&t["status"]),
            format!("{}/{}", compact(&t["attempts"]), compact(&t["max_attempts"])),
            s(&t["created_at"]),
        ));
    }
    if let Some(next) = page["next_cursor"].as_str() {
        lines.push(format!("more: --cursor {next}"));
    }
    lines.join("\n")
}

/// `{"events": [...]}` as a timeline, one line per event.
/// One line per type: name, target kind, timeout and attempts (default/max), highest priority,
/// whether a payload schema applies.
pub fn types(body: &Value) -> String {
    let types = body["types"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut lines = vec![format!(
        "{:<24}  {:<7}  {:<9}  {:<8}  {:<8}  {}",
        "TYPE", "TARGET", "TIMEOUT", "ATTEMPTS", "PRIORITY", "SCHEMA"
    )];
    let bounds = |b: &Value| format!("{}/{}", compact(&b["default"]), compact(&b["max"]));
    for t in types {
        let line = format!(
            "{:<24}  {:<7}  {:<9}  {:<8}  {:<8}  {}",
            s(&t["name"]),
            s(&t["target"]),
            bounds(&t["timeout_seconds"]),
            bounds(&t["max_attempts"]),
            s(&t["max_priority"]),
            if t["payload_schema"].is_null() { "-" } else { "yes" }
        );
        lines.push(line.trim_end().to_owned());
    }
    lines.join("\n")
}

pub fn events(body: &Value) -> String {
    let events = body["events"].as_array().map(Vec::as_slice).unwrap_or_default();
    events
        .iter()
        .map(|e| {
            let change = match (e["from"].as_str(), e["to"].as_str()) {
                (Some(f), Some(t)) => format!("{f} -> {t}"),
                (None, Some(t)) => format!("-> {t}"),
                _ => String::new(),
            };
            let attempt = e["attempt"]
                .as_u64()
                .map(|a| format!("attempt {a}"))
                .unwrap_or_default();
            let line = format!(
                "{:>3}  {}  {:<16}  {:<20}  {:<10}  {}",
                compact(&e["seq"]),
                s(&e["at"]),
                s(&e["type"]),
                change,
                attempt,
                s(&e["detail"])
            );
            line.trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line of `wait` progress.
pub fn progress(t: &Value) -> String {
    let mut line = format!(
        "{} {} {} (attempt {}/{})",
        s(&t["id"]),
        s(&t["type"]),
        s(&t["status"]),
        compact(&t["attempts"]),
        compact(&t["max_attempts"])
    );
    if let Some(kind) = t["error"]["kind"].as_str() {
        line.push_str(&format!(" last error: {kind}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failed_task_shows_its_error_and_no_result() {
        let text = task(&json!({
            "id": "01JD", "type": "fail", "status": "failed", "priority": "high",
            "attempts": 1, "max_attempts": 1, "timeout_seconds": 60, "payload": {"times": 5},
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:01Z",
            "error": {"kind": "deliberate_failure", "message": "attempt 1 of the first 5 fails"}
        }));
        assert!(text.contains("status    failed"), "{text}");
        assert!(text.contains("attempts  1/1"), "{text}");
        assert!(
            text.contains("error     deliberate_failure: attempt 1 of the first 5 fails"),
            "{text}"
        );
        assert!(!text.contains("result"), "{text}");
    }

    #[test]
    fn events_read_as_a_timeline() {
        let text = events(&json!({"events": [
            {"seq": 1, "at": "t1", "type": "submitted", "to": "queued"},
            {"seq": 2, "at": "t2", "type": "started", "from": "queued", "to": "running", "attempt": 1},
        ]}));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("submitted") && lines[0].contains("-> queued"));
        assert!(lines[1].contains("queued -> running") && lines[1].contains("attempt 1"));
    }

    #[test]
    fn an_empty_page_says_so_and_a_cursor_is_shown() {
        assert_eq!(task_list(&json!({"tasks": [], "next_cursor": null})), "no tasks");
        let text = task_list(&json!({"tasks": [{"id": "A"}], "next_cursor": "abc"}));
        assert!(text.ends_with("more: --cursor abc"), "{text}");
    }
}
