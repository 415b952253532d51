//! Instances, versions and inspections as the API shows them.
//!
//! Values and replies are strings when they are UTF-8, else base64 under
//! `value_base64` / `reply_base64`. Times are milliseconds since the Unix
//! epoch.

use serde_json::{Map, Value, json};

use crate::executor::script;
use crate::runtime::Timer;
use crate::snapshot::CoroutineState;
use crate::snapshot::inspect::Inspection;
use crate::store::{InstanceInfo, InstanceState, VersionInfo, VersionKind, hex};

/// The state an instance is shown in: `running` while a run of it is
/// requested or in progress, `sleeping` when its head is a sleep, else
/// its head's kind.
pub fn instance_state(info: &InstanceInfo) -> &'static str {
    if info.pending || info.leased_by.is_some() || info.state == InstanceState::Created {
        return "running";
    }
    match (info.state, info.timer) {
        (InstanceState::Suspended, Some(Timer::Sleep { .. })) => "sleeping",
        (state, _) => state.as_str(),
    }
}

/// `{"id", "module", "state", "head", "value", "wake_at", ...}`. An
/// instance started from a script shows it as it was given: `"script":
/// {"name", "bytes"}` and the script's own `"args"`, without its text
/// (which every listing would otherwise repeat).
pub fn instance(info: &InstanceInfo) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), json!(info.id));
    object.insert("module".into(), json!(hex(&info.module_hash)));
    object.insert("state".into(), json!(instance_state(info)));
    object.insert("head".into(), json!(info.head));
    put_bytes(
        &mut object,
        "value",
        info.last_value.as_deref().unwrap_or_default(),
    );
    object.insert("wake_at".into(), json!(info.timer.map(Timer::wake_at)));
    object.insert("timer".into(), json!(info.timer.map(timer_kind)));
    match script::started_by(&info.args) {
        Some(start) => {
            let script = json!({ "name": start.name, "bytes": start.source.len() });
            object.insert("script".into(), script);
            object.insert("args".into(), json!(start.args));
        }
        None => {
            object.insert("args".into(), json!(info.args));
        }
    }
    object.insert("created_ms".into(), json!(info.created_ms));
    Value::Object(object)
}

/// `{"version", "parent", "state", "value", "reply", ...}`.
pub fn version(v: &VersionInfo) -> Value {
    let state = match (v.kind, v.timer) {
        (VersionKind::Suspended, Some(Timer::Sleep { .. })) => "sleeping",
        (kind, _) => kind.as_str(),
    };
    let mut object = Map::new();
    object.insert("version".into(), json!(v.number));
    object.insert("parent".into(), json!(v.parent));
    object.insert("state".into(), json!(state));
    put_bytes(&mut object, "value", &v.value);
    put_bytes(&mut object, "reply", &v.reply);
    object.insert("wake_at".into(), json!(v.timer.map(Timer::wake_at)));
    object.insert("timer".into(), json!(v.timer.map(timer_kind)));
    object.insert("created_ms".into(), json!(v.created_ms));
    object.insert("memory_bytes".into(), json!(v.memory_bytes));
    object.insert("stored_bytes".into(), json!(v.stored_bytes));
    object.insert("exit_status".into(), json!(v.exit_status));
    object.insert("message".into(), json!(v.message));
    Value::Object(object)
}

/// The `inspect` view of a suspended version.
pub fn inspection(inspection: &Inspection) -> Value {
    let coroutines: Vec<Value> = inspection
        .coroutines
        .iter()
        .map(|c| {
            let frames: Vec<Value> = c
                .frames
                .iter()
                .map(|f| {
                    json!({
                        "function": f.function,
                        "name": f.display_name(),
                        "code_offset": f.code_offset,
                        "values": f.values.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "id": c.id,
                "parent": c.parent,
                "state": match c.state {
                    CoroutineState::Fresh => "not started",
                    CoroutineState::Suspended => "suspended",
                    CoroutineState::Finished => "finished",
                },
                "running": c.running,
                "stack_pointer": c.stack_pointer,
                "stack_bytes": c.stack_bytes,
                "frames": frames,
            })
        })
        .collect();
    let memories: Vec<Value> = inspection
        .memories
        .iter()
        .map(|m| {
            json!({
                "pages_in_use": m.pages_in_use,
                "page_count": m.page_count,
                "bytes": m.bytes(),
                "bytes_in_use": m.pages_in_use as u64 * crate::snapshot::PAGE_SIZE as u64,
            })
        })
        .collect();
    let mut object = Map::new();
    object.insert("suspended_in".into(), json!(inspection.suspended_in));
    put_bytes(&mut object, "value", &inspection.yielded);
    object.insert("coroutines".into(), json!(coroutines));
    object.insert("memories".into(), json!(memories));
    Value::Object(object)
}

fn timer_kind(timer: Timer) -> &'static str {
    match timer {
        Timer::Sleep { .. } => "sleep",
        Timer::Deadline { .. } => "deadline",
    }
}

/// `key: text` for UTF-8 bytes, else `key_base64: base64`.
fn put_bytes(object: &mut Map<String, Value>, key: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(key.into(), json!(text)),
        Err(_) => object.insert(format!("{key}_base64"), json!(base64(bytes))),
    };
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` if it is not.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (raw, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"\xff\x00\xfe", "/wD+"),
        ] {
            assert_eq!(base64(raw), text);
            assert_eq!(unbase64(text).unwrap(), raw);
        }
        assert!(unbase64("not base64!").is_none());
    }

    #[test]
    fn bytes_are_text_when_they_can_be() {
        let mut object = Map::new();
        put_bytes(&mut object, "value", b"yes");
        put_bytes(&mut object, "reply", b"\xff");
        assert_eq!(
            Value::Object(object),
            json!({"value": "yes", "reply_base64": "/w=="})
        );
    }
}
