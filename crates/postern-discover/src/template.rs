//! Endpoint template inference: `/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B15/refund` →
//! `/v1/charges/{id}/refund`.
//!
//! The rules look at one path segment at a time (and, for one exception, at the segment
//! before it); they know no vendor. A segment becomes `{id}` when it looks like a value rather
//! than a name. The full list, with examples, is in docs/DISCOVERY.md; in short, **literal**:
//! words (`charges`, `chat.postMessage`, `Hello-World`), versions (`v1`, `v2beta1`), dates
//! (`2010-04-01`, Twilio's API version), and one- or two-digit numbers right after `api`
//! (`/rest/api/2/`); **`{id}`**: numbers (also `+14155552671`), UUIDs, hex of 8+ characters with
//! a digit, e-mail addresses, prefixed vendor ids (`cus_Nffrfe2r9a`, `file-abc123`), tokens of
//! 16+ characters mixing letters and digits (`AC0123…`), shorter ones of 10+ letters and
//! digits that do not read as a word (`k9x2m4p7q1z8`), upper-case ids with 2+ digits
//! (`T024BE7LD`), digit-heavy strings, values joined by `:` or `.` (a bot token, a JWT), and any
//! segment that could not be written into a template as is (braces, whitespace, control
//! characters).
//!
//! The output satisfies the config's template rules: it starts with `/`, has no query,
//! fragment or empty segment (`//` is collapsed; a trailing `/` is kept, it is significant), and
//! at most one placeholder per segment (a file extension stays literal: `{id}.json`). The one
//! exception is a template cut short ([`MAX_SEGMENTS`], [`MAX_TEMPLATE_BYTES`]): it ends with
//! the marker segment [`TRUNCATED`], which the config refuses, so it is never promoted as it is.

/// What an inferred placeholder is called. [`crate::promote`] renames the second and later
/// ones of a template (`{id2}`, …) because the config wants distinct names.
pub const PLACEHOLDER: &str = "{id}";
/// Segments a template keeps; the rest of a longer path becomes the one marker segment
/// [`TRUNCATED`], so what a caller sends cannot grow the inventory without bound.
pub const MAX_SEGMENTS: usize = 32;
/// The most bytes a template holds, marker included. A segment is short ([`MAX_NAME_BYTES`]),
/// but 32 of them are 4 KiB, and every endpoint of every host is kept: a caller sending long
/// made-up paths to made-up hosts would fill the store's disk. A longer template is cut at a
/// segment boundary and ends with [`TRUNCATED`].
pub const MAX_TEMPLATE_BYTES: usize = 512;
/// The last segment of a template cut short: what followed is not known. It is no placeholder
/// (the config refuses its name), because a placeholder stands for one segment and the
/// shortened template would then match paths it never came from.
pub const TRUNCATED: &str = "{...}";
/// A segment longer than this is a value: no API names a resource so long.
const MAX_NAME_CHARS: usize = 64;
/// A segment longer than this as sent is a value too, whatever it decodes to (64 characters
/// percent-encoded as 4-byte UTF-8 are 768 bytes): a template's segments stay short.
const MAX_NAME_BYTES: usize = 2 * MAX_NAME_CHARS;

/// The endpoint template of a raw request path (query and fragment are ignored).
pub fn infer_template(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut template = String::with_capacity(path.len() + 1);
    let mut previous: Option<&str> = None;
    // A segment's path parameters (`;v=1`) are not its name, as operations are matched.
    let segments = path.split('/').map(postern_config::segment_name);
    for (index, segment) in segments.filter(|segment| !segment.is_empty()).enumerate() {
        let boundary = template.len();
        if index == MAX_SEGMENTS {
            return truncated(template, boundary);
        }
        template.push('/');
        template_segment(segment, previous, &mut template);
        if template.len() > MAX_TEMPLATE_BYTES {
            return truncated(template, boundary);
        }
        previous = Some(segment);
    }
    if template.is_empty() || (path.ends_with('/') && path.len() > 1) {
        if template.len() == MAX_TEMPLATE_BYTES {
            let boundary = template.rfind('/').unwrap_or_default();
            return truncated(template, boundary);
        }
        template.push('/');
    }
    template
}

/// `template` cut at `boundary` (the end of a segment, or 0) and ended by [`TRUNCATED`], at
/// most [`MAX_TEMPLATE_BYTES`] long: earlier segments go too if the marker does not fit.
fn truncated(mut template: String, mut boundary: usize) -> String {
    let marker_bytes = 1 + TRUNCATED.len();
    while boundary + marker_bytes > MAX_TEMPLATE_BYTES {
        boundary = template[..boundary].rfind('/').unwrap_or_default();
    }
    template.truncate(boundary);
    template.push('/');
    template.push_str(TRUNCATED);
    template
}

fn template_segment(raw: &str, previous: Option<&str>, out: &mut String) {
    let unwritable = raw.len() > MAX_NAME_BYTES
        || raw
            .chars()
            .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control());
    let decoded = percent_decode(raw);
    // Decoded, a space or a control character is no part of a name: `Bearer%20…`,
    // `4111%201111%201111%201111`.
    let unwritable = unwritable || decoded.chars().any(|c| c.is_whitespace() || c.is_control());
    if unwritable || is_value(&decoded, previous) {
        out.push_str(PLACEHOLDER);
        return;
    }
    if let Some((stem, extension)) = split_extension(raw) {
        if is_value(&percent_decode(stem), previous) {
            out.push_str(PLACEHOLDER);
            out.push('.');
            out.push_str(extension);
            return;
        }
    }
    // Values joined by `:`, `.` or `@` (a Telegram bot token `bot123456:AAH…`, a JWT
    // `eyJ….eyJ….…`, a custom method `doc_8f3a9c2e:batchUpdate`, `user:secret@host`): one value
    // among words is replaced where it stands, a segment with more than one becomes a
    // placeholder whole.
    let is_separator = |c: char| c == ':' || c == '.' || c == '@';
    // A short number between dots is part of a version (`gpt-4.1`, `2.0`), not a value.
    let piece_is_value = |piece: &str| {
        let version_part = piece.len() <= 3 && piece.bytes().all(|b| b.is_ascii_digit());
        !piece.is_empty() && !version_part && is_value(&percent_decode(piece), previous)
    };
    let values = raw
        .split(is_separator)
        .filter(|p| piece_is_value(p))
        .count();
    match values {
        0 => out.push_str(raw),
        1 => {
            let mut rest = raw;
            loop {
                let end = rest.find(is_separator).unwrap_or(rest.len());
                let piece = &rest[..end];
                if piece_is_value(piece) {
                    out.push_str(PLACEHOLDER);
                } else {
                    out.push_str(piece);
                }
                let Some(separator) = rest[end..].chars().next() else {
                    break;
                };
                out.push(separator);
                rest = &rest[end + 1..];
            }
        }
        _ => out.push_str(PLACEHOLDER),
    }
}

/// `name.ext` with a short alphanumeric extension starting with a letter (`json`, `xml`, `mp3`).
fn split_extension(segment: &str) -> Option<(&str, &str)> {
    let (stem, extension) = segment.rsplit_once('.')?;
    let extension_is_short_word = (1..=5).contains(&extension.len())
        && extension.starts_with(|c: char| c.is_ascii_alphabetic())
        && extension.chars().all(|c| c.is_ascii_alphanumeric());
    (!stem.is_empty() && extension_is_short_word).then_some((stem, extension))
}

/// Whether a (percent-decoded) segment is a value (an id, a number, an address) rather than a
/// name that is part of the API's shape.
fn is_value(segment: &str, previous: Option<&str>) -> bool {
    if segment.is_empty() || is_date(segment) || is_version(segment) {
        return false;
    }
    let length = segment.chars().count();
    if length > MAX_NAME_CHARS {
        return true;
    }
    let digits = segment.chars().filter(char::is_ascii_digit).count();
    let letters = segment.chars().filter(char::is_ascii_alphabetic).count();

    let number = segment.strip_prefix('+').unwrap_or(segment);
    if !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()) {
        // `/rest/api/2/issue`: a small number right after `api` is a version.
        let is_api_version = number.len() <= 2
            && !segment.starts_with('+')
            && previous.is_some_and(|p| p.eq_ignore_ascii_case("api"));
        return !is_api_version;
    }
    if is_uuid(segment) || is_email(segment) || is_prefixed_id(segment) || is_credential(segment) {
        return true;
    }
    if length >= 8 && digits > 0 && segment.chars().all(|c| c.is_ascii_hexdigit()) {
        return true;
    }
    // Base64 of `{"`: a JWT's header or claims.
    if length >= 10 && segment.starts_with("eyJ") {
        return true;
    }
    // A character no name is written with (`!`, `(`, non-ASCII) among digits: a value, a
    // password.
    let odd = segment
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || "-_.~:@+=,;$".contains(c)));
    if odd && length >= 8 && digits > 0 {
        return true;
    }
    let token_characters = segment
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-+=~".contains(c));
    if token_characters && length >= 16 && digits > 0 && letters > 0 {
        return true;
    }
    // A random token of letters alone (base64 without a digit, by chance): long, and about as
    // many capitals as small letters, where a camel-case name has one capital a word.
    let capitals = segment.chars().filter(char::is_ascii_uppercase).count();
    if token_characters
        && length >= 20
        && capitals * 4 >= letters
        && (letters - capitals) * 4 >= letters
    {
        return true;
    }
    // Mixed case and digits, shorter than a token: a random key (`Xk9mQ2vL7pZr4Tq`), where a
    // name has a digit or a capital or two.
    let smalls = letters - capitals;
    if token_characters && length >= 12 && digits >= 2 && capitals >= 2 && smalls >= 2 {
        return true;
    }
    // Letters and digits, shorter than a token, all in one case or not (`k9x2m4p7q1z8`,
    // lower-case base36): a value unless it reads as a word, as names with digits do
    // (`sha256sums`, `ISO8601Date`, `utf8mb4general`).
    let alphanumeric = segment.chars().all(|c| c.is_ascii_alphanumeric());
    if alphanumeric && length >= 10 && digits >= 2 && letters >= 2 && !reads_as_word(segment) {
        return true;
    }
    let upper_case_id = length >= 8
        && digits >= 2
        && segment.starts_with(|c: char| c.is_ascii_uppercase())
        && segment
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if upper_case_id {
        return true;
    }
    token_characters && length >= 6 && digits * 2 > length
}

/// Whether letters and digits read as a name with a number or two in it (`sha256sums`,
/// `covid19stats`, `level3data2`) rather than a random token: the digits stand in at most two
/// places, and at least a quarter of the letters are vowels (random letters hold about one
/// in five; words about two in five).
fn reads_as_word(segment: &str) -> bool {
    let mut digit_runs = 0;
    let mut in_digits = false;
    for c in segment.chars() {
        let digit = c.is_ascii_digit();
        if digit && !in_digits {
            digit_runs += 1;
        }
        in_digits = digit;
    }
    let letters = segment.chars().filter(char::is_ascii_alphabetic).count();
    let vowels = segment
        .chars()
        .filter(|c| "aeiouyAEIOUY".contains(*c))
        .count();
    digit_runs <= 2 && vowels * 4 >= letters
}

/// `2010-04-01` or `2024-03`: dated API versions (Twilio) stay literal.
fn is_date(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    match bytes.len() {
        7 => digits(0..4) && bytes[4] == b'-' && digits(5..7),
        10 => digits(0..4) && bytes[4] == b'-' && digits(5..7) && bytes[7] == b'-' && digits(8..10),
        _ => false,
    }
}

/// `v1`, `v2`, `v1beta2`, `v3alpha`, `V2`.
fn is_version(segment: &str) -> bool {
    let Some(rest) = segment.strip_prefix(['v', 'V']) else {
        return false;
    };
    let number_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    if number_end == 0 || number_end > 4 {
        return false;
    }
    let rest = &rest[number_end..];
    let label_end = rest
        .find(|c: char| !c.is_ascii_lowercase())
        .unwrap_or(rest.len());
    rest[label_end..].chars().all(|c| c.is_ascii_digit()) && rest.len() - label_end <= 2
}

fn is_uuid(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => *byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

fn is_email(segment: &str) -> bool {
    segment
        .rsplit_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
}

/// `cus_Nffrfe2r9a`, `ch_3MmlLrLkdIwHu7ix0snN0B15`, `cs_test_a1B2c3`, `file-abc123`,
/// `thread_abc123`: a short word, `_` or `-`, and 6+ characters holding a digit.
fn is_prefixed_id(segment: &str) -> bool {
    let Some(separator) = segment.find(['_', '-']) else {
        return false;
    };
    let (prefix, tail) = (&segment[..separator], &segment[separator + 1..]);
    (1..=12).contains(&prefix.len())
        && prefix.chars().all(|c| c.is_ascii_alphabetic())
        && tail.len() >= 6
        && tail
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && tail.chars().any(|c| c.is_ascii_digit())
}

/// A segment starting with a well-known key prefix ([`postern_config::CREDENTIAL_PREFIXES`])
/// and going on for 8 or more characters is a credential, digits or not, and never kept.
fn is_credential(segment: &str) -> bool {
    postern_config::CREDENTIAL_PREFIXES.iter().any(|prefix| {
        segment
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.len() >= 8)
    })
}

/// `%XX` → byte; anything malformed is kept as is. Only used to classify a segment.
fn percent_decode(segment: &str) -> String {
    if !segment.contains('%') {
        return segment.to_owned();
    }
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        match (bytes[index], hex(index + 1), hex(index + 2)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                index += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::infer_template;

    fn check(path: &str, expect: &str) {
        assert_eq!(infer_template(path), expect, "path {path:?}");
    }

    /// What a caller sends cannot grow a template without bound: a long segment is a value,
    /// and past [`super::MAX_SEGMENTS`] segments the rest is one placeholder. A token of
    /// letters alone is a value; a camel-case name is not.
    #[test]
    fn long_paths_and_letter_tokens() {
        check(&format!("/v1/{}", "a".repeat(65)), "/v1/{id}");
        check(
            &format!("/v1/{}", "a".repeat(64)),
            &format!("/v1/{}", "a".repeat(64)),
        );
        let long = "/x".repeat(100);
        let expect = format!("{}/{{...}}", "/x".repeat(super::MAX_SEGMENTS));
        check(&long, &expect);
        check(&format!("{}/", "/x".repeat(40)), &expect);
        check(
            &"/x".repeat(super::MAX_SEGMENTS),
            &"/x".repeat(super::MAX_SEGMENTS),
        );
        // 64 characters that are 768 bytes as sent (4-byte UTF-8, percent-encoded): a value,
        // not 768 bytes kept in the template.
        check(&format!("/v1/{}", "%F0%9F%98%80".repeat(64)), "/v1/{id}");
        check(
            "/callers/pst_qwErTyUiOpAsDfGhJkLzXcVbNmQwErTyUiOpAsDfGhJ",
            "/callers/{id}",
        );
        check("/v1/keys/wJalrXUtnFEMIKbPxRfiCYEXAMPLEKEY", "/v1/keys/{id}");
        check(
            "/api/getUserProfileInformation",
            "/api/getUserProfileInformation",
        );
        check(
            "/api/listAllOrganizationMembersForAdmins",
            "/api/listAllOrganizationMembersForAdmins",
        );
    }

    /// However long its segments, a template holds at most [`super::MAX_TEMPLATE_BYTES`]: 32
    /// words of 64 characters (2 KiB) are cut at a segment boundary and end with the marker.
    #[test]
    fn templates_are_cut_short_at_a_segment_boundary() {
        use super::{MAX_TEMPLATE_BYTES, TRUNCATED};
        let word = "a".repeat(64);
        let template = infer_template(&format!("/{word}").repeat(32));
        assert!(template.len() <= MAX_TEMPLATE_BYTES, "{}", template.len());
        let kept = (MAX_TEMPLATE_BYTES - 1 - TRUNCATED.len()) / 65;
        assert_eq!(
            template,
            format!("{}/{TRUNCATED}", format!("/{word}").repeat(kept))
        );
        // Cut or not, every template is at most that long: with a trailing `/`, with values.
        for path in [
            format!("{}/", format!("/{word}").repeat(32)),
            format!("/{}", format!("x/{}/", "c".repeat(62)).repeat(20)),
            format!("/{}", format!("{}/42/", "d".repeat(60)).repeat(20)),
        ] {
            let template = infer_template(&path);
            assert!(template.len() <= MAX_TEMPLATE_BYTES, "{template}");
            assert!(template.ends_with(TRUNCATED), "{template}");
        }
        // Exactly that long, a trailing `/` does not fit: the last segment makes way for the
        // marker.
        let full = format!("{}/{}", format!("/{word}").repeat(7), "g".repeat(56));
        assert_eq!(full.len(), MAX_TEMPLATE_BYTES);
        check(&full, &full);
        check(
            &format!("{full}/"),
            &format!("{}/{TRUNCATED}", format!("/{word}").repeat(7)),
        );
        // One that fits is kept whole, its trailing `/` too.
        let fits = format!("{}/", format!("/{}", "f".repeat(63)).repeat(7));
        check(&fits, &fits);
    }

    /// Letters and digits shorter than a token are a value unless they read as a name.
    #[test]
    fn short_random_tokens_and_names_with_digits() {
        for value in [
            "k9x2m4p7q1z8",
            "q7wz3kx9pt",
            "kqxmpz47tqrw",
            "zz9k2p4m7qwr5",
            "MX7Q2KPZ9R",
            "a7bkeq3xmtzp",
        ] {
            check(&format!("/v1/links/{value}"), "/v1/links/{id}");
        }
        for name in [
            "v2",
            "oauth2",
            "x509",
            "sha256",
            "sha256sums",
            "x509certs",
            "base64url",
            "ipv4address",
            "covid19stats",
            "level3data2",
            "ISO8601Date",
            "utf8mb4general",
            "win32api",
            "http2push",
        ] {
            check(&format!("/v1/{name}/items"), &format!("/v1/{name}/items"));
        }
    }

    #[test]
    fn stripe() {
        check("/v1/charges", "/v1/charges");
        check(
            "/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B15",
            "/v1/charges/{id}",
        );
        check(
            "/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B15/refund",
            "/v1/charges/{id}/refund",
        );
        check("/v1/customers/cus_Nffrfe2r9a", "/v1/customers/{id}");
        check(
            "/v1/customers/cus_Nffrfe2r9a/sources/card_1MvoiELkdIwHu7ixOeFh1Wnx",
            "/v1/customers/{id}/sources/{id}",
        );
        check(
            "/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa/confirm",
            "/v1/payment_intents/{id}/confirm",
        );
        check(
            "/v1/checkout/sessions/cs_test_a1B2c3D4e5F6g7H8i9J0",
            "/v1/checkout/sessions/{id}",
        );
        check(
            "/v1/accounts/acct_1032D82eZvKYlo2C/external_accounts",
            "/v1/accounts/{id}/external_accounts",
        );
        check(
            "/v1/customers/search?query=email:'a@example.com'",
            "/v1/customers/search",
        );
        check(
            "/v1/test_helpers/test_clocks",
            "/v1/test_helpers/test_clocks",
        );
    }

    #[test]
    fn twilio() {
        check(
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json",
            "/2010-04-01/Accounts/{id}/Messages.json",
        );
        check(
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/SM0123456789abcdef0123456789abcdef.json",
            "/2010-04-01/Accounts/{id}/Messages/{id}.json",
        );
        check(
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Calls/CA0123456789abcdef0123456789abcdef/Recordings.json?PageSize=20",
            "/2010-04-01/Accounts/{id}/Calls/{id}/Recordings.json",
        );
        check("/v2/PhoneNumbers/+14155552671", "/v2/PhoneNumbers/{id}");
        check(
            "/v2/PhoneNumbers/%2B14155552671?Fields=line_type_intelligence",
            "/v2/PhoneNumbers/{id}",
        );
        check(
            "/v2/Services/VA0123456789abcdef0123456789abcdef/Verifications",
            "/v2/Services/{id}/Verifications",
        );
    }

    #[test]
    fn openai() {
        check("/v1/chat/completions", "/v1/chat/completions");
        check("/v1/embeddings", "/v1/embeddings");
        check("/v1/files/file-abc123XYZ456def789", "/v1/files/{id}");
        check(
            "/v1/files/file-abc123XYZ456def789/content",
            "/v1/files/{id}/content",
        );
        check(
            "/v1/threads/thread_abc123/runs/run_abc123",
            "/v1/threads/{id}/runs/{id}",
        );
        check(
            "/v1/fine_tuning/jobs/ftjob-abc123/events",
            "/v1/fine_tuning/jobs/{id}/events",
        );
        check("/v1/models/gpt-4o-mini", "/v1/models/{id}");
        check("/v1/models/claude-3-5-sonnet-20241022", "/v1/models/{id}");
        check("/v1/audio/text-to-speech", "/v1/audio/text-to-speech");
        check("/v1beta/models", "/v1beta/models");
    }

    #[test]
    fn github() {
        check(
            "/repos/octocat/Hello-World/issues/1347",
            "/repos/octocat/Hello-World/issues/{id}",
        );
        check(
            "/repos/octocat/Hello-World/commits/6dcb09b5b57875f334f61aebed695e2e4193db5e",
            "/repos/octocat/Hello-World/commits/{id}",
        );
        check("/users/octocat", "/users/octocat");
        check(
            "/repos/octocat/Hello-World/git/refs/heads/main",
            "/repos/octocat/Hello-World/git/refs/heads/main",
        );
        check(
            "/app/installations/12345678/access_tokens",
            "/app/installations/{id}/access_tokens",
        );
        // Deadbeef-like words without a digit stay literal.
        check("/facade/deadbeef", "/facade/deadbeef");
    }

    #[test]
    fn slack() {
        check("/api/chat.postMessage", "/api/chat.postMessage");
        check("/api/conversations.history", "/api/conversations.history");
        check("/api/users.profile.get", "/api/users.profile.get");
        check(
            "/services/T024BE7LD/B024BE7LH/xJ2fQ8mR4tB7nW1kL9pD3sV6",
            "/services/{id}/{id}/{id}",
        );
    }

    #[test]
    fn generic_values() {
        check(
            "/things/123e4567-e89b-12d3-a456-426614174000",
            "/things/{id}",
        );
        check("/users/jane.doe@example.com/groups", "/users/{id}/groups");
        check("/users/jane.doe%40example.com/groups", "/users/{id}/groups");
        check("/orders/20241022/lines/7", "/orders/{id}/lines/{id}");
        check("/reports/2024-03-05", "/reports/2024-03-05");
        check("/rest/api/2/issue/10042", "/rest/api/2/issue/{id}");
        check("/rest/api/12/issue", "/rest/api/12/issue");
        check("/items/123.json", "/items/{id}.json");
        check("/static/app.js", "/static/app.js");
        check("/docs/index.html", "/docs/index.html");
        check("/hash/sha256", "/hash/sha256");
        check("/oauth2/token", "/oauth2/token");
        check("/x/ab12cd3456", "/x/{id}");
        // Values joined by `:` or `.`: credentials in a path are not kept.
        check(
            "/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage",
            "/{id}/sendMessage",
        );
        check(
            "/verify/eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
            "/verify/{id}",
        );
        check(
            "/v1/documents/doc_8f3a9c2e:batchUpdate",
            "/v1/documents/{id}:batchUpdate",
        );
        check("/v1/models/gpt-4.1:generate", "/v1/models/gpt-4.1:generate");
        check(
            "/files/cus_Nffrfe2r9a.backup.json",
            "/files/{id}.backup.json",
        );
        // A well-known key's prefix makes a credential, digits or not.
        check("/v1/key/sk_live_abcdefabcdefabcd", "/v1/key/{id}");
        check("/v1/tok/ghp_abcdefghijklmnopqrstuvwxyzABCD", "/v1/tok/{id}");
        check("/hooks/xoxb-abcdefghijkl/post", "/hooks/{id}/post");
        check("/v1/sk-learn", "/v1/sk-learn");
        // What a caller may put in a path by mistake stays out of the inventory: a card with
        // encoded spaces, a credential after its scheme, one between `user:` and `@host`, a
        // short random key, a password with a symbol, a JWT cut short.
        check("/v3/e/4111%201111%201111%201111", "/v3/e/{id}");
        check("/v2/f/Bearer%20Xk9mQ2vL7pZr4TqHunter2", "/v2/f/{id}");
        check(
            "/v3/d/user:Xk9mQ2vL7pZr4TqHunter2@host",
            "/v3/d/user:{id}@host",
        );
        check("/v3/a/Xk9mQ2vL7pZr4Tq", "/v3/a/{id}");
        check("/v3/b/Xk9mQ2vL7pZr4Tq!Hunter", "/v3/b/{id}");
        check(
            "/v1/t/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc",
            "/v1/t/{id}",
        );
        check("/v1/customers/cus_1/sources", "/v1/customers/cus_1/sources");
    }

    #[test]
    fn shape() {
        check("", "/");
        check("/", "/");
        check("/?a=1", "/");
        check("/v1/charges/", "/v1/charges/");
        check("//v1//charges", "/v1/charges");
        check("/v1/charges#top", "/v1/charges");
        check("/a/{weird}/b", "/a/{id}/b");
        check("/a/%7Bx%7D", "/a/%7Bx%7D");
        check("/v1/items;v=2/search;x", "/v1/items/search");
        check("relative/path", "/relative/path");
    }
}
