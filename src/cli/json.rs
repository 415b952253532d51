//! Just enough JSON for `--json` listings: strings escaped, values written
//! in order. Not worth a dependency.

/// `text` as a JSON string literal.
pub fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An object from `(key, already-encoded value)` pairs.
pub fn object<K: AsRef<str>>(fields: &[(K, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{}", string(k.as_ref()), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// An optional number.
pub fn number<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or("null".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_quotes_controls_and_backslashes() {
        assert_eq!(super::string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
    }
}
