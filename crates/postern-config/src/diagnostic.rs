//! Diagnostics: one error with a location and a fix, and the collection of
//! them that `load` / `parse` return.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// One problem in the config file.
///
/// `line` and `column` are 1-based; `column` counts characters, not bytes.
/// A location of `0:0` means the problem has no place in the text (for
/// example the file could not be read).
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub fix: String,
}

/// Every problem found in one config file, in file order.
///
/// `Display` prints each diagnostic as
/// `{path}:{line}:{column}: error: {message}` followed by `  fix: {fix}`.
#[derive(Debug)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.errors.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            // Line 0: about the file as a whole (it cannot be read), at no place in it.
            if diagnostic.line == 0 {
                write!(f, "{}: error: ", self.path.display())?;
            } else {
                write!(
                    f,
                    "{}:{}:{}: error: ",
                    self.path.display(),
                    diagnostic.line,
                    diagnostic.column
                )?;
            }
            write!(f, "{}\n  fix: {}", diagnostic.message, diagnostic.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns byte offsets into 1-based line and (character) column.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

pub(crate) fn diagnostic_at(
    text: &str,
    span: Range<usize>,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> Diagnostic {
    let (line, column) = line_column(text, span.start);
    Diagnostic {
        line,
        column,
        message: message.into(),
        fix: fix.into(),
    }
}

/// Converts a TOML syntax, type or unknown-key error into a diagnostic with a
/// fix hint. toml's own message is kept; the hint is derived from its shape.
pub(crate) fn from_toml_error(text: &str, error: &toml::de::Error) -> Diagnostic {
    let message = error.message().trim().to_string();
    // What the error points at, when it starts a line: a table header, `[x]` or `[[x]]` (an
    // inline value such as `x = [[1]]` is no header).
    let written = error
        .span()
        .filter(|span| span.start == 0 || text.as_bytes().get(span.start - 1) == Some(&b'\n'))
        .and_then(|span| text.get(span))
        .unwrap_or("");
    let (message, fix) = match type_error(&message, written) {
        Some(plain) => plain,
        None => {
            let fix = toml_error_fix(&message);
            (message, fix)
        }
    };
    match error.span() {
        Some(span) => diagnostic_at(text, span, message, fix),
        None => Diagnostic {
            line: 0,
            column: 0,
            message,
            fix,
        },
    }
}

fn toml_error_fix(message: &str) -> String {
    let quoted = backticked(message);
    if message.starts_with("unknown field") {
        let unknown = quoted.first().copied().unwrap_or("");
        let accepted = quoted.get(1..).unwrap_or(&[]);
        // The keys accepted here are in the message already.
        return match closest(unknown, accepted) {
            Some(suggestion) => format!("rename the key to `{suggestion}`, or remove it"),
            None => "remove the key, or rename it to one of those accepted here".to_string(),
        };
    }
    if message.starts_with("missing field") {
        let field = quoted.first().copied().unwrap_or("the field");
        if field == "gateway" {
            return "add a [gateway] table with `listen`, `admin_listen` and `data_dir`"
                .to_string();
        }
        return format!("add `{field} = ...` to this table; it is required");
    }
    if message.starts_with("unknown variant") {
        let accepted = quoted.get(1..).unwrap_or(&[]);
        return format!("use one of: {}", accepted.join(", "));
    }
    if message.contains("duplicate key") {
        return "remove one of the two definitions of this key".to_string();
    }
    "fix the TOML syntax at this position (see https://toml.io/en/v1.0.0)".to_string()
}

/// serde's type and range errors (`invalid type: map, expected struct RawGateway`) in the
/// config's own words, with a fix for the case: (message, fix). `written` is the text the error
/// points at when it starts a line (else empty). `None` for any other error.
fn type_error(message: &str, written: &str) -> Option<(String, String)> {
    let (kind, rest) = if let Some(rest) = message.strip_prefix("invalid type: ") {
        ("type", rest)
    } else if let Some(rest) = message.strip_prefix("invalid value: ") {
        ("value", rest)
    } else {
        return None;
    };
    let (found, expected) = rest.rsplit_once(", expected ")?;
    let found = plain_found(found, kind == "value");
    let expected_plain = plain_expected(expected);
    // A table header: `[name]` or `[[name]]`, where the error points.
    let header = written.trim_start();
    let array_header = header
        .strip_prefix("[[")
        .and_then(|rest| rest.split_once("]]"))
        .map(|(name, _)| name.trim());
    let table_header = header
        .strip_prefix('[')
        .filter(|_| array_header.is_none())
        .and_then(|rest| rest.split_once(']'))
        .map(|(name, _)| name.trim());
    if let Some(name) = array_header {
        return Some((
            format!("`{name}` is one table, and `[[{name}]]` makes a list of tables"),
            format!("write the header as `[{name}]`, once"),
        ));
    }
    if let (Some(name), "an array") = (table_header, expected_plain.as_str()) {
        return Some((
            format!("`{name}` is a list of tables, and `[{name}]` makes a single table"),
            format!("write `[[{name}]]` before each entry"),
        ));
    }
    let message = if kind == "value" {
        format!("{found} is out of range: expected {expected_plain}")
    } else {
        format!("expected {expected_plain}, found {found}")
    };
    let fix = match expected_plain.as_str() {
        "a table" => "write a table here: `key = { name = value, ... }` inline, or a `[section]` of its own (see docs/CONFIG.md for this key)".to_string(),
        "an array" => "write a list here: `key = [ ... ]`".to_string(),
        "a string" => "write the value in double quotes".to_string(),
        "a boolean" => "write `true` or `false`, without quotes".to_string(),
        number if number.starts_with("a whole number") && found.starts_with("a string") => {
            "write the number without quotes".to_string()
        }
        number if number.starts_with("a whole number") => {
            format!("write {number}")
        }
        other => format!("write {other} here"),
    };
    Some((message, fix))
}

/// serde's name for what was written, in the config's words, never with its text.
///
/// A value of the wrong type may be a secret typed in the wrong place (`credential =
/// "sk_live_..."` where a table belongs), and diagnostics reach terminals, `check --json` and
/// the reload log: a string is described by its length only, and a number or boolean in a type
/// error by its kind (the line and column already point at it). A number is echoed only when
/// `echo_number` is set, for a range error: a number written where the key takes a number (a
/// port, a count, a size), whose value is what the message is about.
fn plain_found(found: &str, echo_number: bool) -> String {
    let found = found.trim();
    if let Some(value) = found.strip_prefix("string ") {
        return string_of(debug_str_chars(value));
    }
    if found.starts_with("character ") {
        return string_of(1);
    }
    for (serde, kind, plain) in [
        ("integer", "a whole number", "the number"),
        ("floating point", "a number", "the number"),
        ("boolean", "a boolean", "the boolean"),
    ] {
        if let Some(value) = found.strip_prefix(serde) {
            return if echo_number && serde != "boolean" {
                format!("{plain} {}", value.trim().trim_matches('`'))
            } else {
                kind.to_string()
            };
        }
    }
    match found {
        "map" => "a table".to_string(),
        "sequence" => "an array".to_string(),
        // Anything else serde names is a kind (`unit value`, `byte array`), never a value.
        other => other.to_string(),
    }
}

fn string_of(chars: usize) -> String {
    let unit = if chars == 1 {
        "character"
    } else {
        "characters"
    };
    format!("a string ({chars} {unit})")
}

/// The length in characters of the string serde wrote with `{:?}` (`"a\"b\u{7f}"`): each escape
/// (`\"`, `\n`, `\u{...}`) is one character of the value.
fn debug_str_chars(quoted: &str) -> usize {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(quoted);
    let mut chars = inner.chars();
    let mut count = 0;
    while let Some(c) = chars.next() {
        count += 1;
        if c == '\\' && chars.next() == Some('u') {
            chars.by_ref().take_while(|&c| c != '}').for_each(drop);
        }
    }
    count
}

/// serde's name for what the config expects (`struct RawGateway`, `u32`, `a sequence`), in the
/// config's words.
fn plain_expected(expected: &str) -> String {
    let expected = expected.trim();
    if expected.starts_with("struct ") || expected == "a map" || expected.starts_with("map") {
        return "a table".to_string();
    }
    let range = |most: &str| format!("a whole number from 0 to {most}");
    match expected {
        "a sequence" => "an array".to_string(),
        "a string" | "a borrowed string" | "string" => "a string".to_string(),
        "a boolean" | "bool" => "a boolean".to_string(),
        "u8" => range("255"),
        "u16" => range("65535"),
        "u32" => range("4294967295"),
        "u64" | "usize" => "a whole number, 0 or more".to_string(),
        "i64" | "an integer" | "i32" => "a whole number".to_string(),
        "f64" | "f32" => "a number".to_string(),
        other => other.to_string(),
    }
}

fn backticked(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// The accepted key nearest to `unknown` by edit distance, if it is close.
fn closest<'a>(unknown: &str, accepted: &[&'a str]) -> Option<&'a str> {
    accepted
        .iter()
        .map(|candidate| (edit_distance(unknown, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (i, left_char) in left.chars().enumerate() {
        let mut current = vec![i + 1; right.len() + 1];
        for (j, right_char) in right.iter().enumerate() {
            let substitution = previous[j] + usize::from(left_char != *right_char);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[right.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_is_one_based_and_counts_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // Byte 10 is after "bé " (é is two bytes): column 4.
        assert_eq!(line_column(text, 10), (2, 4));
        assert_eq!(line_column(text, 999), (3, 1));
    }

    #[test]
    fn closest_key_is_suggested() {
        assert_eq!(
            closest("listenn", &["listen", "admin_listen"]),
            Some("listen")
        );
        assert_eq!(closest("zzzzzz", &["listen"]), None);
    }
}
