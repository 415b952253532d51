//! How listings show values and replies: their first [`PREVIEW_BYTES`]
//! bytes with the whole length after them, unless `--full` asks for all of
//! it. A workflow may yield a hundred megabytes; a listing of it should
//! still fit a screen.

use super::json;

/// How much of a value a listing shows unless asked for all of it.
pub(super) const PREVIEW_BYTES: usize = 64;

/// A value (yielded, result or reply) as a listing shows it.
pub(super) struct Shown {
    text: String,
    total: u64,
    shortened: bool,
}

/// `value` as shown: all of it with `full`, else its start. `total` is the
/// whole value's length, which `value` may already be only the start of.
pub(super) fn shown(value: &[u8], total: u64, full: bool) -> Shown {
    let shortened = !full && total > PREVIEW_BYTES as u64;
    let mut part = if shortened {
        &value[..value.len().min(PREVIEW_BYTES)]
    } else {
        value
    };
    // A character cut in two at the end is left out rather than shown as
    // a replacement character.
    if shortened
        && let Err(e) = std::str::from_utf8(part)
        && e.error_len().is_none()
    {
        part = &part[..e.valid_up_to()];
    }
    Shown {
        text: String::from_utf8_lossy(part).into_owned(),
        total,
        shortened,
    }
}

impl Shown {
    /// Quoted, escaped, and marked when shortened: `"ask the boss…" (104857600 bytes)`.
    pub fn quoted(&self) -> String {
        format!("{:?}{}", self.text, self.mark())
    }

    /// As it is, control characters escaped so that it keeps to one line,
    /// and marked when shortened.
    pub fn plain(&self) -> String {
        let text: String = self
            .text
            .chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect();
        format!("{text}{}", self.mark())
    }

    /// JSON fields `NAME` (the text shown), `NAME_bytes` (the whole length)
    /// and `NAME_shortened`.
    pub fn json_fields(&self, name: &str) -> [(String, String); 3] {
        [
            (name.to_string(), json::string(&self.text)),
            (format!("{name}_bytes"), self.total.to_string()),
            (format!("{name}_shortened"), self.shortened.to_string()),
        ]
    }

    fn mark(&self) -> String {
        if self.shortened {
            format!("… ({} bytes)", self.total)
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_and_marked_short_ones_are_not() {
        let long = "é".repeat(100);
        let shown = shown(long.as_bytes(), 200, false);
        assert_eq!(shown.plain(), format!("{}… (200 bytes)", "é".repeat(32)));
        assert_eq!(super::shown(long.as_bytes(), 200, true).plain(), long);
        let short = super::shown(b"line\nbreak", 10, false);
        assert_eq!(short.plain(), "line\\nbreak");
        assert_eq!(short.quoted(), "\"line\\nbreak\"");
        // Only the start was read: the total says it is longer.
        let start = super::shown(b"abc", 1_000_000, false);
        assert_eq!(start.quoted(), "\"abc\"… (1000000 bytes)");
    }
}
