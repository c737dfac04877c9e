//! Method overrides: the ways a request asks its server to treat it as another method.
//!
//! An operation is authorized by the request's own method, so a request naming another one is
//! refused (`400 method_override_refused`) before a vendor that honours it could run an
//! operation that was not granted:
//! - headers (`X-HTTP-Method-Override` and its kin: Google's and Azure's APIs honour them) and
//!   query parameters (`_method`, Salesforce's `_HttpMethod`), checked with the request's head
//!   ([`method_override`]);
//! - a POST body's `_method` field, read as the body streams ([`OverrideScan`]): in a form body
//!   (Rails, Laravel, Symfony), a `multipart/form-data` part (the same frameworks, through the
//!   same parameter bag) or a JSON body's top-level key (Laravel reads a JSON body as its input).
//!
//! The body is read as those servers read it: names decoded (percent-encoding in a form, the
//! part's `name` parameter in multipart, escapes in JSON), values compared regardless of case and
//! surrounding spaces. Only the current field is kept, each part of it capped.
//!
//! The same scan reads a form body, whatever its method, for an `access_token` field when the
//! integration injects a bearer token ([`OverrideScan::for_request`]'s `bearer`): RFC 6750 §2.2
//! lets a bearer token ride there, so a caller's own would reach the vendor beside the injected
//! one, and a vendor that reads it acts for whoever owns it while Postern records the call under
//! the integration's credential. A streamed body cannot be rewritten, so it is refused
//! (`400 vendor_credential_in_body`), as a `_method` field is. Only forms: RFC 6750 defines no
//! other body for it, and a JSON `access_token` key is ordinary data in many APIs.

use std::borrow::Cow;

use http::header::{self, HeaderMap};
use http::Request;
use memchr::memchr;

use crate::body::{CallerBody, RequestBodyViolation};
use crate::error::CallError;

/// Headers with which a request names another method.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
/// Query parameters with which a request names another method (matched percent-decoded and
/// regardless of case).
const METHOD_OVERRIDE_PARAMS: [&str; 2] = ["_method", "_httpmethod"];

/// The header or query parameter (named, never its value) of `request` that names a method other
/// than the request's own.
pub(crate) fn method_override(request: &Request<CallerBody>) -> Option<String> {
    let method = request.method().as_str().as_bytes();
    let other = |value: &[u8]| !value.trim_ascii().eq_ignore_ascii_case(method);
    for (name, value) in request.headers() {
        let name = name.as_str();
        if name.len() >= 13 && is_override_header(name) && other(value.as_bytes()) {
            return Some(format!("header {name}"));
        }
    }
    let ends = |c: char| c.is_ascii() && FIELD_ENDS.contains(&(c as u8));
    request.uri().query()?.split(ends).find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = form_decoded(name.as_bytes());
        // As PHP and Rack read a name (`+_method`, `.method`, `_method%00`, `[_method]`), in
        // any case: Symfony and Laravel take `_method` from the query too.
        let overrides = METHOD_OVERRIDE_PARAMS
            .iter()
            .any(|known| form_name_is(&name, known.as_bytes(), true));
        (overrides && other(&form_decoded(value.as_bytes())))
            .then(|| format!("query parameter {}", String::from_utf8_lossy(&name)))
    })
}

/// Whether `name` (lower case) is one of [`METHOD_OVERRIDE_HEADERS`], with `_` read as `-`:
/// CGI, FastCGI and Rack servers read `X_HTTP_Method_Override` and `X-HTTP-Method-Override`
/// as the same `HTTP_X_HTTP_METHOD_OVERRIDE`, which `Rack::MethodOverride` and Symfony honour.
fn is_override_header(name: &str) -> bool {
    METHOD_OVERRIDE_HEADERS.iter().any(|known| {
        known.len() == name.len()
            && known
                .bytes()
                .zip(name.bytes())
                .all(|(k, n)| k == n || (k == b'-' && n == b'_'))
    })
}

/// The refusal of a body whose `_method` field names another method than the request's.
pub(crate) fn body_method_override() -> CallError {
    CallError::bad_request(
        "method_override_refused",
        "the request's body has a _method field (form, multipart or JSON; read as sent and, when compressed, decoded) naming another method than its own, or is multipart written so that servers read its parts differently: a vendor that honours it (Rails, Laravel, Symfony) would run an operation that was not authorized; send the request with the method it means, as well-formed multipart, uncompressed or gzip",
    )
}

/// A form (or query) name or value as a server reads it: `+` a space, `%XX` decoded; borrowed
/// when it holds neither.
pub(crate) fn form_decoded(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|&byte| byte == b'%' || byte == b'+') {
        return Cow::Borrowed(raw);
    }
    let spaced: Vec<u8> = raw
        .iter()
        .map(|&byte| if byte == b'+' { b' ' } else { byte })
        .collect();
    Cow::Owned(percent_encoding::percent_decode(&spaced).collect())
}

/// Longest name or value kept: `_method` percent-encoded whole is 21 bytes, and no method a
/// server honours is longer than a few letters. One byte past it marks the part too long.
const CAP: usize = 32;

/// How much of a form field's name is kept as it streams ([`FieldName`]): decoded, after the
/// padding servers drop before a name, however long. Longer than any name looked for, so a
/// longer name's head decides it as the whole name would ([`form_name_is`]).
const NAME_HEAD: usize = 64;

/// The bytes that end a form field: `&`, and `;`, which Rack 2 (for a query), older Go and
/// Python parsers split on too (a form encoder escapes both, so a value holding one raw is not a
/// client's). Bodies and queries are read with the same set.
pub(crate) const FIELD_ENDS: [u8; 2] = [b'&', b';'];

/// Longest header section of a multipart part that is read for its name. A longer one is
/// refused: whether it names `_method` cannot be told.
const MAX_PART_HEADERS: usize = 8 * 1024;

/// Reads a POST body as it streams for a `_method` field naming another method than the
/// request's, and a bearer integration's form body for an `access_token` field
/// ([`OverrideScan::feed`], then [`OverrideScan::finish`] at the body's end).
///
/// It reads the bytes it is given. A body with a `Content-Encoding` is read as sent and decoded
/// (a server that ignores the coding reads the bytes as sent, one that undoes it what they
/// decode to): its one decoding is `ForwardBody`'s ([`crate::body::ForwardBody::reading`]), or,
/// for a body read whole, the scan phase's, each feeding a clone of this scan made before it
/// read anything.
#[derive(Debug, Clone)]
pub struct OverrideScan {
    method: http::Method,
    /// How a POST's body is read for `_method`; `None` for another method's, read only for
    /// `credential`.
    kind: Option<Kind>,
    /// A form or multipart body whose type also says JSON (`…; x=/json`): Laravel reads it as
    /// JSON, so it is read as both.
    also_json: Option<JsonKeys>,
    /// A form body to an integration that injects a bearer token: its `access_token` field.
    credential: Option<CredentialField>,
}

#[derive(Debug, Clone)]
enum Kind {
    Form(FormFields),
    Multipart(Box<MultipartParts>),
    Json(JsonKeys),
    /// A body its servers would read in ways no one reading covers: refused whatever it holds.
    Refused,
}

impl OverrideScan {
    /// The scan for a request's body, if the request is one whose body those frameworks read
    /// for `_method`: a POST (the method they let a body override) whose `Content-Type` is a
    /// form (or missing or empty: Rack parses such a body as a form), `multipart/form-data` with
    /// a boundary, or JSON (`…/json` or `…+json`, as Laravel tells it). With `bearer` (the
    /// integration injects a bearer token), also a form body of any method (Rack and Rails
    /// parse one whatever the method), read for an `access_token` field; other methods' bodies
    /// need a form type to be read (a missing one is a form to Rack for a POST only).
    pub fn for_request(method: &http::Method, headers: &HeaderMap, bearer: bool) -> Option<Self> {
        let post = method == http::Method::POST;
        if !post && !bearer {
            return None;
        }
        let (kind, also_json) = match headers.get(header::CONTENT_TYPE) {
            None if post => (Kind::Form(FormFields::default()), None),
            None => return None,
            Some(value) => Kind::for_content_type(value.as_bytes())?,
        };
        let credential = (bearer && matches!(kind, Kind::Form(_))).then(CredentialField::default);
        if !post && credential.is_none() {
            return None;
        }
        Some(OverrideScan {
            method: method.clone(),
            kind: post.then_some(kind),
            also_json: also_json.filter(|_| post),
            credential,
        })
    }

    /// A form body's scan (tests, and callers that know the body is a form).
    pub fn form(method: http::Method) -> Self {
        OverrideScan {
            method,
            kind: Some(Kind::Form(FormFields::default())),
            also_json: None,
            credential: None,
        }
    }

    /// Takes the next bytes of the body: `MethodOverride` if a field they end overrides the
    /// method, `VendorCredential` if they reach an `access_token` field's value.
    pub fn feed(&mut self, data: &[u8]) -> Option<RequestBodyViolation> {
        if self
            .credential
            .as_mut()
            .is_some_and(|credential| credential.feed(data))
        {
            return Some(RequestBodyViolation::VendorCredential);
        }
        let method = self.method.as_str().as_bytes();
        if let Some(json) = &mut self.also_json {
            if json.feed(data, method) {
                return Some(RequestBodyViolation::MethodOverride);
            }
        }
        let overrides = match &mut self.kind {
            None => false,
            Some(Kind::Form(form)) => form.feed(data, method),
            Some(Kind::Multipart(parts)) => parts.feed(data, method),
            Some(Kind::Json(keys)) => keys.feed(data, method),
            Some(Kind::Refused) => true,
        };
        overrides.then_some(RequestBodyViolation::MethodOverride)
    }

    /// Whether the body's end can decide a field: a form's or a multipart body's last field
    /// (`_method=DELET` is `DELETE` with one byte more), so a body streamed to its vendor keeps
    /// its last byte until the end ([`crate::body::ForwardBody`]). A JSON body's `_method` is
    /// decided at its string value's closing quote, inside the body ([`OverrideScan::finish`]
    /// finds nothing more at its end). Nor is an `access_token` field, decided at its `=`
    /// (a bare name at the end carries no token).
    pub fn decided_at_the_end(&self) -> bool {
        self.kind
            .as_ref()
            .is_some_and(|kind| !matches!(kind, Kind::Json(_)))
    }

    /// At the body's end: `true` if what is left (a form's last field, a multipart part with
    /// no closing delimiter) overrides the method, or the body is refused whatever it holds.
    /// (The end decides no `access_token` field: [`OverrideScan::decided_at_the_end`].)
    pub fn finish(&mut self) -> bool {
        let method = self.method.as_str().as_bytes();
        match &mut self.kind {
            None | Some(Kind::Json(_)) => false,
            Some(Kind::Form(form)) => form.field_overrides(method),
            Some(Kind::Multipart(parts)) => parts.finish(method),
            Some(Kind::Refused) => true,
        }
    }
}

impl Kind {
    /// Read as broadly as the servers that honour `_method` read it: the type is cut at `;`, `,`
    /// or a space (PHP); any `multipart/*` is multipart (Rack), read as a form when it names no
    /// boundary (Rack parses such a body as a form); JSON wherever `/json` or `+json` appears in
    /// the header (Laravel), and then also for a form or multipart type (the second value: the
    /// JSON reading beside the first).
    fn for_content_type(value: &[u8]) -> Option<(Kind, Option<JsonKeys>)> {
        let lower = value.to_ascii_lowercase();
        let json = memchr::memmem::find(&lower, b"/json").is_some()
            || memchr::memmem::find(&lower, b"+json").is_some();
        let also_json = json.then(JsonKeys::default);
        let essence = lower
            .split(|&byte| matches!(byte, b';' | b',' | b' ' | b'\t'))
            .find(|part| !part.is_empty())
            .unwrap_or_default();
        if essence.is_empty() || essence == b"application/x-www-form-urlencoded" {
            return Some((Kind::Form(FormFields::default()), also_json));
        }
        if essence.starts_with(b"multipart/") {
            let kind =
                Kind::for_boundaries(rack_boundary(value, &lower), php_boundaries(value, &lower));
            return Some((kind, also_json));
        }
        json.then(|| (Kind::Json(JsonKeys::default()), None))
    }

    /// A multipart body read with the boundary that starts every server's: each delimiter a
    /// server takes then starts with one Postern takes (what follows it on the line is read as
    /// padding). None in common is refused; so is a body Rack would read as a form (it finds no
    /// `boundary=`) while PHP reads it as multipart (`boundary =x`): no one reading tells both.
    fn for_boundaries(rack: Option<&[u8]>, php: Option<Vec<&[u8]>>) -> Kind {
        match (rack, php) {
            (None, None) => Kind::Form(FormFields::default()),
            (None, Some(_)) => Kind::Refused,
            (Some(rack), php) => {
                let common = php.into_iter().flatten().fold(rack, |common, other| {
                    let same = common.iter().zip(other).take_while(|(a, b)| a == b).count();
                    &common[..same]
                });
                match MultipartParts::new(common) {
                    Some(parts) => Kind::Multipart(Box::new(parts)),
                    None => Kind::Refused,
                }
            }
        }
    }
}

/// The boundary Rack (2 and 3) reads from a `Content-Type` (`lower`: the same, in lower case):
/// `/multipart\/.*boundary="?([^";,]+)"?/i`, so the last `boundary=` that has a value, taken up
/// to `"`, `;` or `,` (white space kept).
fn rack_boundary<'a>(value: &'a [u8], lower: &[u8]) -> Option<&'a [u8]> {
    memchr::memmem::rfind_iter(lower, b"boundary=").find_map(|at| {
        let rest = &value[at + b"boundary=".len()..];
        let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
        let end = rest
            .iter()
            .position(|&byte| matches!(byte, b'"' | b';' | b','))
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

/// The boundaries PHP reads (`main/rfc1867.c`): the first `boundary` (in its case, else in any),
/// then the value after the next `=` wherever it is, quoted (no closing quote: PHP reads no
/// parts) or up to `,` and `;` (up to `,` alone in older releases, so both). `None` when PHP
/// finds no boundary and parses no part.
fn php_boundaries<'a>(value: &'a [u8], lower: &[u8]) -> Option<Vec<&'a [u8]>> {
    let at = memchr::memmem::find(value, b"boundary")
        .or_else(|| memchr::memmem::find(lower, b"boundary"))?;
    let rest = &value[at..];
    let rest = &rest[memchr(b'=', rest)? + 1..];
    if let Some(quoted) = rest.strip_prefix(b"\"") {
        return Some(vec![&quoted[..memchr(b'"', quoted)?]]);
    }
    let up_to = |stops: &[u8]| {
        let end = rest
            .iter()
            .position(|byte| stops.contains(byte))
            .unwrap_or(rest.len());
        &rest[..end]
    };
    Some(vec![up_to(b",;"), up_to(b",")])
}

/// A value that names another method than `method`: not empty once trimmed, short enough to be
/// one, and not `method` in any case.
fn names_other(value: &[u8], method: &[u8]) -> bool {
    let value = value.trim_ascii();
    !value.is_empty() && value.len() <= CAP && !value.eq_ignore_ascii_case(method)
}

/// Whether a decoded form or query field name is `wanted` for some server that reads it (PHP,
/// Rack 2, and with `any_case` ASP.NET, whose collections ignore case): up to a NUL (PHP reads a
/// C string), leading white space, `[` and `]` dropped (PHP, Rack 2), `.` and a space read as
/// `_`, and a `[` that no `]` follows too (PHP); and an array or hash under the name is the
/// name's (`wanted[]`, `wanted[k]`, `wanted]…`: PHP and Rack 2 key it by what comes before the
/// first bracket, unless that bracket is a last, lone `[`). A `wanted` holding brackets itself
/// (a configured `auth[key]`) is compared whole, and by its key. The one rule for the query's
/// credential parameter (`proxy::strip_query_credential`), the query's `_method`
/// ([`method_override`]) and a form body's `_method` and `access_token` ([`FieldName`]).
pub(crate) fn form_name_is(name: &[u8], wanted: &[u8], any_case: bool) -> bool {
    let name = name.split(|&byte| byte == 0).next().unwrap_or_default();
    let start = name
        .iter()
        .position(|&byte| !is_name_padding(byte))
        .unwrap_or(name.len());
    let name = &name[start..];
    if name.is_empty() {
        return false;
    }
    let fold = |byte: u8| match byte {
        b'.' | b' ' => b'_',
        _ if any_case => byte.to_ascii_lowercase(),
        _ => byte,
    };
    let same = |a: &[u8], b: &[u8]| {
        a.len() == b.len() && a.iter().zip(b).all(|(&a, &b)| fold(a) == fold(b))
    };
    let last_close = memchr::memrchr(b']', name);
    let whole = name.len() == wanted.len()
        && name
            .iter()
            .zip(wanted)
            .enumerate()
            .all(|(at, (&byte, &want))| {
                let unclosed = byte == b'[' && last_close.is_none_or(|close| close < at);
                fold(if unclosed { b'_' } else { byte }) == fold(want)
            });
    whole || same(array_key(name), array_key(wanted))
}

/// What servers drop before a field's name (decoded): white space (PHP drops spaces), `[` and
/// `]` (Rack 2).
fn is_name_padding(byte: u8) -> bool {
    byte.is_ascii_whitespace() || byte == b'[' || byte == b']'
}

/// The key PHP and Rack 2 file a name under: what comes before its first `[` or `]` (`key` of
/// `key[]`, `key[0]x`, `key]]`), unless that is a last, lone `[` (`key[` is PHP's `key_`,
/// Rack's `key[`).
fn array_key(name: &[u8]) -> &[u8] {
    match name.iter().position(|&byte| byte == b'[' || byte == b']') {
        Some(cut) if cut > 0 && &name[cut..] != b"[" => &name[..cut],
        _ => name,
    }
}

/// A form field's name as it streams: decoded as it comes (`+` a space, `%XX` its byte, as
/// [`form_decoded`] reads it), the padding servers drop before a name skipped however long,
/// then its first [`NAME_HEAD`] bytes (and one more, marking it longer) kept, up to a NUL
/// (where PHP ends it). Whatever follows a name's head, padding or a hash's key however long,
/// cannot change what it names ([`form_name_is`]).
#[derive(Debug, Default, Clone)]
struct FieldName {
    head: Vec<u8>,
    /// A `%` and the hex digit after it, if any, not decoded yet.
    escape: [u8; 2],
    escaped: u8,
    /// A NUL was read: the rest of the name is not kept.
    ended: bool,
}

impl FieldName {
    fn push(&mut self, raw: &[u8]) {
        for &byte in raw {
            self.push_byte(byte);
        }
    }

    fn push_byte(&mut self, byte: u8) {
        let byte = if byte == b'+' { b' ' } else { byte };
        match self.escaped {
            0 if byte == b'%' => {
                self.escape[0] = byte;
                self.escaped = 1;
            }
            0 => self.decoded(byte),
            1 | 2 if !byte.is_ascii_hexdigit() => {
                // Not an escape: its bytes are the name's as sent, and this one starts anew.
                self.flush();
                self.push_byte(byte);
            }
            1 => {
                self.escape[1] = byte;
                self.escaped = 2;
            }
            _ => {
                let hex = |digit: u8| (digit as char).to_digit(16).unwrap_or_default() as u8;
                self.escaped = 0;
                self.decoded((hex(self.escape[1]) << 4) | hex(byte));
            }
        }
    }

    /// An unfinished escape, taken as sent.
    fn flush(&mut self) {
        let escape = self.escape;
        let escaped = std::mem::take(&mut self.escaped);
        for &byte in &escape[..escaped as usize] {
            self.decoded(byte);
        }
    }

    fn decoded(&mut self, byte: u8) {
        if self.ended || (self.head.is_empty() && is_name_padding(byte)) {
            return;
        }
        if byte == 0 {
            self.ended = true;
        } else if self.head.len() <= NAME_HEAD {
            self.head.push(byte);
        }
    }

    /// Whether the name, now ended, is `wanted` ([`form_name_is`]).
    fn is(&mut self, wanted: &[u8], any_case: bool) -> bool {
        self.flush();
        form_name_is(&self.head, wanted, any_case)
    }

    fn clear(&mut self) {
        self.head.clear();
        self.escaped = 0;
        self.ended = false;
    }
}

/// Pushes `byte` onto `part` while it is at most `CAP` long (one byte more marks it too long).
fn push_capped(part: &mut Vec<u8>, byte: u8) {
    if part.len() <= CAP {
        part.push(byte);
    }
}

/// `application/x-www-form-urlencoded`: `name=value` pairs split by [`FIELD_ENDS`].
#[derive(Debug, Default, Clone)]
struct FormFields {
    name: FieldName,
    value: Vec<u8>,
    in_value: bool,
}

impl FormFields {
    fn feed(&mut self, data: &[u8], method: &[u8]) -> bool {
        for &byte in data {
            match byte {
                _ if FIELD_ENDS.contains(&byte) => {
                    if self.field_overrides(method) {
                        return true;
                    }
                }
                b'=' if !self.in_value => self.in_value = true,
                _ if self.in_value => push_capped(&mut self.value, byte),
                _ => self.name.push_byte(byte),
            }
        }
        false
    }

    /// The field just ended names `_method` (in its case: Rack and Laravel read it so) and
    /// another method.
    fn field_overrides(&mut self, method: &[u8]) -> bool {
        let overrides = self.value.len() <= CAP
            && self.name.is(b"_method", false)
            && names_other(&form_decoded(&self.value), method);
        self.name.clear();
        self.value.clear();
        self.in_value = false;
        overrides
    }
}

/// The form field a bearer token may ride in (RFC 6750 §2.2).
const CREDENTIAL_FIELD: &[u8] = b"access_token";

/// A form body's `access_token` field (RFC 6750 §2.2), read for an integration that injects a
/// bearer token: found at the `=` after its name, before any byte of its value is sent. Only the
/// current name's head is kept ([`FieldName`]); a value is skipped with `memchr`. Fields end at
/// [`FIELD_ENDS`], as [`FormFields`]'s do.
#[derive(Debug, Default, Clone)]
struct CredentialField {
    /// The current field's name so far.
    name: FieldName,
    /// Past the current field's `=`: nothing is kept until its end.
    in_value: bool,
}

impl CredentialField {
    /// Takes the next bytes of the body; `true` once an `access_token` field's name reaches its
    /// `=`.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        let [amp, semi] = FIELD_ENDS;
        while !data.is_empty() {
            if self.in_value {
                let Some(at) = memchr::memchr2(amp, semi, data) else {
                    return false;
                };
                self.in_value = false;
                data = &data[at + 1..];
                continue;
            }
            let Some(at) = memchr::memchr3(amp, semi, b'=', data) else {
                self.name.push(data);
                return false;
            };
            self.name.push(&data[..at]);
            if data[at] == b'=' {
                // In any case: ASP.NET's form collection ignores it.
                if self.name.is(CREDENTIAL_FIELD, true) {
                    return true;
                }
                self.in_value = true;
            }
            self.name.clear();
            data = &data[at + 1..];
        }
        false
    }
}

/// `multipart/*` (RFC 7578): parts between delimiters, each a header section (whose
/// `Content-Disposition` names the field) and the field's value. A delimiter is `--boundary`
/// wherever it appears, mid-line too (Rack 2.2 ends a part there), the rest of its line padding;
/// so every delimiter a server takes is one here, and a part is found wherever a lenient parser
/// would find it. A header section must end with an empty CRLF line (Rack reads on to one where
/// PHP stops at a bare LF): a body whose section ends otherwise is refused.
#[derive(Debug, Clone)]
struct MultipartParts {
    /// `--` and the boundary.
    delimiter: Vec<u8>,
    /// For each length of a partial match, the longest shorter one it still holds (the
    /// Knuth–Morris–Pratt table): boundaries are full of dashes, so a mismatch need not leave
    /// nothing matched.
    fallback: Vec<usize>,
    /// How much of `delimiter` the bytes just read match.
    matched: usize,
    state: PartState,
    /// The current part's header section (in `Headers`), or value (in a `_method` part's data).
    kept: Vec<u8>,
    /// The kept value ran past what a method can be.
    too_long: bool,
}

/// Longest line of a part's header section that is read: PHP reads header lines in pieces of
/// 5,120 bytes and takes what follows a full piece as a line of its own, so a longer one may
/// end the section there for it.
const MAX_PART_HEADER_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartState {
    /// Before a delimiter, or in the data of a part that is not a `_method` field.
    Data,
    /// In the data of a `_method` part: its value is kept.
    MethodValue,
    /// Just after a delimiter, to the end of its line: `dashes` counts the `--` that close the
    /// parts (0, 1; 3 once closed; 2 for other padding). A header section is read after a
    /// closing delimiter too: Rack 2.2 opens the parts with one that comes first on a line
    /// of its own, which may not be the first Postern saw.
    AfterDelimiter { dashes: u8 },
    /// A part's header section, up to its empty line; `line` counts the current line's bytes;
    /// `closing`: after a closing delimiter (an empty line right away is the epilogue's, or a
    /// section Rack reads on past).
    Headers { line: usize, closing: bool },
}

impl MultipartParts {
    fn new(boundary: &[u8]) -> Option<Self> {
        // RFC 2046: 1 to 70 characters, none of them a line break.
        if boundary.is_empty() || boundary.len() > 70 || boundary.contains(&b'\n') {
            return None;
        }
        let mut delimiter = b"--".to_vec();
        delimiter.extend_from_slice(boundary);
        let mut fallback = vec![0; delimiter.len() + 1];
        let mut shorter = 0;
        for length in 2..=delimiter.len() {
            while shorter > 0 && delimiter[length - 1] != delimiter[shorter] {
                shorter = fallback[shorter];
            }
            if delimiter[length - 1] == delimiter[shorter] {
                shorter += 1;
            }
            fallback[length] = shorter;
        }
        Some(MultipartParts {
            delimiter,
            fallback,
            matched: 0,
            state: PartState::Data,
            kept: Vec::new(),
            too_long: false,
        })
    }

    fn feed(&mut self, data: &[u8], method: &[u8]) -> bool {
        let mut at = 0;
        while at < data.len() {
            match self.state {
                PartState::Data if self.matched == 0 => {
                    // Nothing can start a delimiter before the next `-`.
                    match memchr(b'-', &data[at..]) {
                        Some(offset) => at += offset,
                        None => return false,
                    }
                    let byte = data[at];
                    at += 1;
                    if self.advance_delimiter(byte) && self.delimiter_ended(method) {
                        return true;
                    }
                }
                PartState::Data | PartState::MethodValue | PartState::AfterDelimiter { .. } => {
                    let byte = data[at];
                    at += 1;
                    match self.state {
                        PartState::MethodValue if self.kept.len() <= CAP + self.delimiter.len() => {
                            self.kept.push(byte);
                        }
                        PartState::MethodValue => self.too_long = true,
                        PartState::AfterDelimiter { dashes } => {
                            self.state = match (byte, dashes) {
                                (b'-', 0) => PartState::AfterDelimiter { dashes: 1 },
                                (b'-', 1) | (_, 3) if byte != b'\n' => {
                                    PartState::AfterDelimiter { dashes: 3 }
                                }
                                (b'\n', _) => PartState::Headers {
                                    line: 0,
                                    closing: dashes == 3,
                                },
                                _ => PartState::AfterDelimiter { dashes: 2 },
                            };
                        }
                        _ => {}
                    }
                    // A delimiter in the padding starts the line anew.
                    if self.advance_delimiter(byte) && self.delimiter_ended(method) {
                        return true;
                    }
                }
                PartState::Headers { line, closing } => {
                    let byte = data[at];
                    at += 1;
                    // Too long to tell, a control byte (PHP ends the section at a line that
                    // starts with NUL) or a delimiter (servers differ on whether it ends the
                    // section): refused rather than passed unread.
                    let control = byte < 0x20 && !matches!(byte, b'\t' | b'\r' | b'\n');
                    if self.kept.len() >= MAX_PART_HEADERS
                        || line >= MAX_PART_HEADER_LINE
                        || control
                        || byte == 0x7f
                        || self.advance_delimiter(byte)
                    {
                        return true;
                    }
                    self.kept.push(byte);
                    self.state = match byte {
                        // Right after a closing delimiter's line: the epilogue, or a section
                        // Rack reads on past to its next empty line.
                        b'\n' if line == 0 && closing && self.kept.trim_ascii().is_empty() => {
                            PartState::Headers {
                                line: 0,
                                closing: false,
                            }
                        }
                        b'\n' if line == 0 => match self.part_starts() {
                            Some(state) => state,
                            None => return true,
                        },
                        b'\n' => PartState::Headers { line: 0, closing },
                        b'\r' => PartState::Headers { line, closing },
                        _ => PartState::Headers {
                            line: line + 1,
                            closing,
                        },
                    };
                }
            }
        }
        false
    }

    /// Matches `byte` against the delimiter; `true` when it completes one.
    fn advance_delimiter(&mut self, byte: u8) -> bool {
        while self.matched > 0 && byte != self.delimiter[self.matched] {
            self.matched = self.fallback[self.matched];
        }
        if byte == self.delimiter[self.matched] {
            self.matched += 1;
        }
        if self.matched == self.delimiter.len() {
            self.matched = 0;
            return true;
        }
        false
    }

    /// A delimiter was read: the part before it ends (its value checked if it was `_method`).
    fn delimiter_ended(&mut self, method: &[u8]) -> bool {
        let overrides = self.state == PartState::MethodValue && self.value_overrides(true, method);
        self.kept.clear();
        self.too_long = false;
        self.state = PartState::AfterDelimiter { dashes: 0 };
        overrides
    }

    /// The kept value of a `_method` part names another method (`closed`: the delimiter that
    /// ends it is the kept value's tail). A value too long to keep is refused: no client sends
    /// one.
    fn value_overrides(&self, closed: bool, method: &[u8]) -> bool {
        if self.too_long {
            return true;
        }
        let mut value = &self.kept[..];
        if closed {
            value = &value[..value.len().saturating_sub(self.delimiter.len())];
        }
        names_other(value, method)
    }

    /// The empty line after a part's header section: the part is a `_method` field or not;
    /// `None` (refused) when the section does not end with an empty CRLF line.
    fn part_starts(&mut self) -> Option<PartState> {
        if !self.kept.ends_with(b"\r\n\r\n") {
            return None;
        }
        let is_method = names_method_field(&self.kept);
        self.kept.clear();
        self.matched = 0;
        Some(if is_method {
            PartState::MethodValue
        } else {
            PartState::Data
        })
    }

    /// At the body's end: a `_method` part's value, or a header section cut short that names
    /// `_method` (a server may read the value from what Postern took for headers).
    fn finish(&mut self, method: &[u8]) -> bool {
        match self.state {
            PartState::MethodValue => self.value_overrides(false, method),
            PartState::Headers { .. } => names_method_field(&self.kept),
            _ => false,
        }
    }
}

/// Whether a part's header section may name the field `_method` for some server: wherever
/// `_method`, `.method` or ` method` (PHP reads `.` and a space as `_`) stands as a name of its
/// own — the bytes around it neither letters, digits, `_`, `-` nor `.` — once line breaks,
/// NULs and backslashes are taken out (PHP joins a line with no `:` to the one before, C
/// strings end at NUL, a quoted pair is its byte), and again percent-decoded. Looser than any
/// one server's reading, so whatever quoting (`"`, `'`, none, unclosed), parameter (`name`,
/// repeated, folded, `Content-ID` as Rack names a part without one), white space (a vertical
/// tab too) or terminator (`(`, `[`) a server honours is covered, at the cost of refusing a
/// file uploaded as `_method`.
fn names_method_field(headers: &[u8]) -> bool {
    let joined: Vec<u8> = headers
        .iter()
        .copied()
        .filter(|byte| !matches!(byte, b'\r' | b'\n' | 0 | b'\\'))
        .collect();
    stands_as_method(&joined) || stands_as_method(&form_decoded(&joined))
}

/// Whether `_method` stands in `bytes` as a name of its own, or `.method` / ` method` (which
/// PHP reads as `_method`) at the start of a value (after `=`, a quote or `[`, spaces aside):
/// elsewhere those are words in a file name (`R&D / method.txt`).
fn stands_as_method(bytes: &[u8]) -> bool {
    let in_name = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.');
    memchr::memmem::find_iter(bytes, b"method").any(|at| {
        if at == 0
            || bytes
                .get(at + b"method".len())
                .is_some_and(|&byte| in_name(byte))
        {
            return false;
        }
        let before = &bytes[..at - 1];
        match bytes[at - 1] {
            b'_' => before.last().is_none_or(|&byte| !in_name(byte)),
            b'.' | b' ' => before
                .trim_ascii_end()
                .last()
                .is_none_or(|byte| matches!(byte, b'=' | b'"' | b'\'' | b'[')),
            _ => false,
        }
    })
}

/// A JSON body's top-level keys: a string value under the key `_method` (escapes decoded) that
/// names another method overrides. Nesting is followed only to know which keys are top-level.
#[derive(Debug, Default, Clone)]
struct JsonKeys {
    /// Nesting depth: 1 is inside the top-level object (or array).
    depth: u32,
    /// The top level is an object (its keys are read).
    object: bool,
    /// At depth 1, the next string is a key.
    expect_key: bool,
    /// At depth 1, after a `:`: the next token is the value of `key_is_method`'s key.
    in_value: bool,
    key_is_method: bool,
    string: Option<JsonString>,
}

#[derive(Debug, Default, Clone)]
struct JsonString {
    /// A top-level key (`Some(false)`), a top-level value (`Some(true)`), or any other string.
    role: Option<bool>,
    decoded: Vec<u8>,
    escape: Escape,
}

#[derive(Debug, Default, Clone, Copy)]
enum Escape {
    #[default]
    None,
    /// After a `\`.
    Started,
    /// Reading the hex digits of `\u`: how many so far, and their value.
    Unicode(u8, u32),
}

impl JsonKeys {
    fn feed(&mut self, data: &[u8], method: &[u8]) -> bool {
        for &byte in data {
            if self.string.is_some() {
                if self.string_byte(byte, method) {
                    return true;
                }
                continue;
            }
            match byte {
                b'"' => {
                    let top = self.depth == 1 && self.object;
                    let role = match (top, self.expect_key, self.in_value) {
                        (true, true, _) => Some(false),
                        (true, false, true) => Some(true),
                        _ => None,
                    };
                    self.string = Some(JsonString {
                        role,
                        ..JsonString::default()
                    });
                }
                b'{' | b'[' => {
                    if self.depth == 0 {
                        self.object = byte == b'{';
                        self.expect_key = self.object;
                    }
                    self.in_value = false;
                    self.depth = self.depth.saturating_add(1);
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                b',' if self.depth == 1 => {
                    self.expect_key = self.object;
                    self.in_value = false;
                    self.key_is_method = false;
                }
                b':' if self.depth == 1 => self.in_value = true,
                _ if self.depth == 1 && !byte.is_ascii_whitespace() => {
                    // A number, `true`, `false` or `null`: not a string value.
                    self.in_value = false;
                }
                _ => {}
            }
        }
        false
    }

    /// One byte inside a string; `true` if it closes a `_method` value naming another method.
    fn string_byte(&mut self, byte: u8, method: &[u8]) -> bool {
        let Some(string) = self.string.as_mut() else {
            return false;
        };
        let keep = string.role.is_some();
        match (string.escape, byte) {
            (Escape::None, b'"') => {
                let string = self.string.take().unwrap_or_default();
                match string.role {
                    Some(false) => {
                        self.key_is_method = string.decoded == b"_method";
                        self.expect_key = false;
                    }
                    Some(true) => {
                        self.in_value = false;
                        return self.key_is_method && names_other(&string.decoded, method);
                    }
                    None => {}
                }
            }
            (Escape::None, b'\\') => string.escape = Escape::Started,
            (Escape::None, _) => {
                if keep {
                    push_capped(&mut string.decoded, byte);
                }
            }
            (Escape::Started, b'u') => string.escape = Escape::Unicode(0, 0),
            (Escape::Started, _) => {
                let decoded = match byte {
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    other => other,
                };
                if keep {
                    push_capped(&mut string.decoded, decoded);
                }
                string.escape = Escape::None;
            }
            (Escape::Unicode(count, value), _) => {
                let digit = (byte as char).to_digit(16).unwrap_or(0);
                let value = value << 4 | digit;
                if count == 3 {
                    if keep {
                        // Only ASCII can spell a method or `_method`; anything else is kept as
                        // a byte that matches neither.
                        let decoded = u8::try_from(value).ok().filter(u8::is_ascii);
                        push_capped(&mut string.decoded, decoded.unwrap_or(0xff));
                    }
                    string.escape = Escape::None;
                } else {
                    string.escape = Escape::Unicode(count + 1, value);
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// The decoded size a compressed body may reach in these tests.
    const LIMIT: u64 = 1024 * 1024;

    fn scan(content_type: Option<&str>) -> OverrideScan {
        let mut headers = HeaderMap::new();
        if let Some(value) = content_type {
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
        }
        OverrideScan::for_request(&http::Method::POST, &headers, false).expect("a scanned body")
    }

    /// Whether `body` overrides, fed whole and then split at every byte into two pieces (the
    /// answer must not depend on how the body was cut into frames).
    fn overrides_however_split(content_type: Option<&str>, body: &[u8]) -> bool {
        let whole = {
            let mut scan = scan(content_type);
            scan.feed(body).is_some() || scan.finish()
        };
        for at in 1..body.len() {
            let mut scan = scan(content_type);
            let split = scan.feed(&body[..at]).is_some()
                || scan.feed(&body[at..]).is_some()
                || scan.finish();
            assert_eq!(
                split,
                whole,
                "split at {at}: {}",
                String::from_utf8_lossy(body)
            );
        }
        let mut bytewise = scan(content_type);
        let one_by_one =
            body.iter().any(|byte| bytewise.feed(&[*byte]).is_some()) || bytewise.finish();
        assert_eq!(one_by_one, whole, "byte by byte");
        whole
    }

    /// Asserts [`overrides_however_split`] is `expected` for each of `bodies`.
    fn assert_each_overrides(content_type: Option<&str>, bodies: &[&[u8]], expected: bool) {
        for body in bodies {
            assert_eq!(
                overrides_however_split(content_type, body),
                expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// `_method` is found as a server reads it: name percent-decoded (not case-folded, as Rack
    /// and Laravel read it), value decoded and compared regardless of case, across any split.
    #[test]
    fn a_form_field_is_found_however_it_is_written_or_split() {
        for body in [
            &b"amount=1&_method=DELETE"[..],
            b"_method=delete&amount=1",
            b"a=1&%5Fmethod=PATCH",
            b"a=1&_m%65thod=PUT&b=2",
            b"_method=%44ELETE",
            b"_method=+DELETE+",
            b"a=1&+_method=DELETE",
            b".method=DELETE",
            b"%2Emethod=DELETE",
            b"[_method]=DELETE",
        ] {
            assert!(overrides_however_split(None, body));
            assert!(overrides_however_split(
                Some("application/x-www-form-urlencoded; charset=utf-8"),
                body
            ));
        }
        // Padding a server drops before the name, however long, and a NUL PHP ends it at; a
        // long body with no field in it (opaque bytes, no Content-Type) is no override.
        // (Fed whole and in 1,000-byte pieces: split at every byte, these long bodies would
        // take the test seconds.)
        let in_pieces = |body: &[u8]| {
            let mut whole = scan(None);
            let mut pieces = scan(None);
            let split =
                body.chunks(1000).any(|piece| pieces.feed(piece).is_some()) || pieces.finish();
            let all = whole.feed(body).is_some() || whole.finish();
            assert_eq!(split, all);
            all
        };
        let opaque = "a".repeat(12 * 1024);
        assert!(!in_pieces(opaque.as_bytes()));
        let far_padded = format!("{}_method=DELETE", "%20".repeat(12 * 1024 + 1));
        assert!(in_pieces(far_padded.as_bytes()));
        // Padding or a hash's key after the name, however long: Rack 2 drops trailing `]` and
        // keys `_method[…]` (and `_method]…`) by `_method`.
        let trailing = format!("_method{}=DELETE", "]".repeat(5000));
        let trailing_encoded = format!("a=1&_method{}=DELETE", "%5D".repeat(3000));
        let long_key = format!("_method[{}]=DELETE", "k".repeat(5000));
        for body in [&trailing, &trailing_encoded, &long_key] {
            assert!(in_pieces(body.as_bytes()), "{}", &body[..20]);
        }
        let padded = format!("{}_method=DELETE", "+".repeat(26));
        let bracketed = format!("{}_method]=DELETE", "[".repeat(26));
        assert_each_overrides(
            None,
            &[
                padded.as_bytes(),
                bracketed.as_bytes(),
                b"_method%00x=DELETE",
                b"a=1&_method%00=DELETE",
                // `;` ends a field as `&` does (older Go and Python parsers).
                b"a=1;_method=DELETE",
                b"_method]]=DELETE",
                b"_method]x=DELETE",
                b"%5B_method%5D=DELETE",
            ],
            true,
        );
        for body in [
            &b"amount=1&payment_method=pm_card_visa"[..],
            b"_method=POST",
            b"_method=post&x=1",
            b"_method=",
            b"_METHOD=DELETE",
            b"method=DELETE",
            b"note=_method%3DDELETE",
        ] {
            assert!(!overrides_however_split(None, body));
        }
        // A name or value too long to be one is not one.
        let long = format!("_method={}", "D".repeat(40));
        assert!(!overrides_however_split(None, long.as_bytes()));
    }

    const MULTIPART: &str = "multipart/form-data; boundary=XyZ";

    #[test]
    fn a_multipart_part_named_method_is_found_however_it_is_written_or_split() {
        for body in [
            // The usual shape: CRLF lines, the override after a file part.
            &b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n"[..],
            // First part, lower-case header, unquoted name, bare LF lines.
            b"--XyZ\ncontent-disposition: form-data; name=_method\n\nput\n--XyZ--\n",
            // A preamble, padding after the delimiter, spaces around the value, PHP's `.`.
            b"preamble\r\n--XyZ  \r\nContent-Disposition: form-data; name=\".method\"\r\n\r\n PATCH \r\n--XyZ--",
            // The last part with no closing delimiter: read at the body's end.
            b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE",
            // A part after the closing delimiter: a lenient server may read on, so Postern does.
            b"--XyZ--\r\n--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n",
            // A quoted name with extra parameters.
            b"--XyZ\r\nContent-Disposition: form-data; name=\"[_method]\"; x=1\r\n\r\nDELETE\r\n--XyZ--\r\n",
        ] {
            assert!(overrides_however_split(Some(MULTIPART), body), "{}", String::from_utf8_lossy(body));
        }
        for body in [
            &b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nPOST\r\n--XyZ--\r\n"[..],
            b"--XyZ\r\nContent-Disposition: form-data; name=\"payment_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n",
            // A value holding the words is a value.
            b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n",
            // Another boundary's delimiter is data.
            b"--Other\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--Other--\r\n",
        ] {
            assert!(!overrides_however_split(Some(MULTIPART), body), "{}", String::from_utf8_lossy(body));
        }
        // A `_method` value too long to keep is refused: Rack 2.2 ends a part at `--boundary`
        // mid-line, and would read `DELETE` here.
        let long = format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE--XyZ\r\n{}\r\n--XyZ--\r\n",
            "x".repeat(100)
        );
        assert!(overrides_however_split(Some(MULTIPART), long.as_bytes()));
        // An empty value is no method (and no panic, though the delimiter's line break is the
        // one that ended the header section).
        assert!(!overrides_however_split(
            Some(MULTIPART),
            b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\n--XyZ--"
        ));
        // However a server may read the part's name: the last of several, a folded line, the
        // parameter first, Rack 2's brackets; and white space before a delimiter (Rack 2.2).
        for body in [
            &b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--"[..],
            b"--XyZ\r\nContent-Disposition: form-data;\r\n name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"[[_method]]\"\r\n\r\nDELETE\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n \t--XyZ\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--XyZ--",
        ] {
            assert!(overrides_however_split(Some(MULTIPART), body), "{}", String::from_utf8_lossy(body));
        }
        // A quoted boundary is unquoted.
        assert!(overrides_however_split(
            Some("multipart/form-data; boundary=\"a b\""),
            b"--a b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--a b--"
        ));
        // A header section too long to read is refused rather than passed unread.
        let huge = format!(
            "--XyZ\r\nX-Pad: {}\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--",
            "p".repeat(MAX_PART_HEADERS)
        );
        let mut refused = scan(Some(MULTIPART));
        assert!(refused.feed(huge.as_bytes()).is_some());
        // A multipart type naming no boundary is read as a form (as Rack reads it); any
        // `multipart/*` is multipart; two boundaries are refused whatever the body holds.
        assert!(overrides_however_split(
            Some("multipart/form-data"),
            b"_method=DELETE"
        ));
        assert!(overrides_however_split(
            Some("multipart/mixed; boundary=XyZ"),
            b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--"
        ));
        let mut twice = scan(Some("multipart/form-data; boundary=A; xboundary=B"));
        assert!(twice.finish());
        // What browsers and curl send is read, not refused: the word inside a boundary is not
        // a second one.
        for (content_type, boundary) in [
            (
                "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
                "----WebKitFormBoundary7MA4YWxkTrZu0gW",
            ),
            (
                "multipart/form-data; boundary=------------------------d74496d66958873e",
                "------------------------d74496d66958873e",
            ),
        ] {
            let body = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\x00\x01--\r\n--{boundary}--\r\n"
            );
            assert!(!overrides_however_split(
                Some(content_type),
                body.as_bytes()
            ));
            let body = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--{boundary}--\r\n"
            );
            assert!(overrides_however_split(Some(content_type), body.as_bytes()));
        }
    }

    /// How a `Content-Type` is read: `Some(boundary)` for multipart, `None` for a form; panics
    /// for a refused or JSON one.
    fn read_as(content_type: &str) -> Result<Option<String>, &'static str> {
        match Kind::for_content_type(content_type.as_bytes()).map(|(kind, _)| kind) {
            Some(Kind::Multipart(parts)) => Ok(Some(
                String::from_utf8_lossy(&parts.delimiter[2..]).into_owned(),
            )),
            Some(Kind::Form(_)) => Ok(None),
            Some(Kind::Refused) => Err("refused"),
            other => panic!("{content_type}: {other:?}"),
        }
    }

    /// The boundary read is one that starts every server's (PHP's and Rack's), so each
    /// delimiter a server takes is one Postern takes; where they share none, or Rack reads a
    /// form where PHP reads parts, the body is refused.
    #[test]
    fn the_boundary_read_starts_every_servers() {
        for (content_type, read) in [
            ("multipart/form-data; boundary=XyZ", Ok(Some("XyZ"))),
            ("multipart/form-data; boundary=\"a b\"", Ok(Some("a b"))),
            (
                "multipart/form-data; boundary=abc; charset=utf-8",
                Ok(Some("abc")),
            ),
            ("multipart/form-data; Boundary=A; boundary=A", Ok(Some("A"))),
            // Rack reads `a`, PHP `a;b`.
            ("multipart/form-data; boundary=\"a;b\"", Ok(Some("a"))),
            // Both keep the space.
            ("multipart/form-data; boundary= a", Ok(Some(" a"))),
            // PHP's first `boundary` is a value, its `=` another parameter's: PHP reads `B`,
            // Rack `A`.
            (
                "multipart/form-data; a=boundary; b=B; boundary=A",
                Err("refused"),
            ),
            (
                "multipart/form-data; boundary=A; xboundary=B",
                Err("refused"),
            ),
            // Rack finds no `boundary=` and reads a form; PHP reads parts split by `a`.
            ("multipart/form-data; boundary =a", Err("refused")),
            ("multipart/form-data; boundary=", Err("refused")),
            // Neither finds a boundary: a form to both.
            ("multipart/form-data", Ok(None)),
            ("multipart/form-data; x=WebKitFormBoundary", Ok(None)),
        ] {
            assert_eq!(
                read_as(content_type),
                read.map(|read| read.map(str::to_owned)),
                "{content_type}"
            );
        }
        let long = format!("multipart/form-data; boundary={}", "b".repeat(71));
        assert_eq!(read_as(&long), Err("refused"));
        // A body split by PHP's boundary (`a;b`) is read by the common one.
        let body =
            b"--a;b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--a;b--";
        assert!(overrides_however_split(
            Some("multipart/form-data; boundary=\"a;b\""),
            body
        ));
        assert!(overrides_however_split(
            Some("multipart/form-data; boundary= a"),
            b"-- a\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n-- a--"
        ));
    }

    /// Where a server would end a part or read a part's name that a strict reading would not.
    #[test]
    fn a_method_part_is_found_where_any_server_would_find_it() {
        assert_each_overrides(
            Some(MULTIPART),
            &[
                // Rack 2.2 ends a part at `--boundary` mid-line.
                &b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--"[..],
                // A delimiter in the padding of another's line.
                b"--XyZ x--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--",
                // Rack names a part with no `name` by its `Content-ID`.
                b"--XyZ\r\nContent-Disposition: form-data\r\nContent-ID: _method\r\n\r\nDELETE\r\n--XyZ--",
                b"--XyZ\r\ncontent-id:\r\n [_method] \r\n\r\nDELETE\r\n--XyZ--",
                // A header section ended by a bare LF is refused whatever it names: Rack reads on
                // to an empty CRLF line, and may find `_method` there.
                b"--XyZ\r\nX-A: a\n\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--",
                b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\n\nx\r\n--XyZ--",
                b"--XyZ\r\n\r\nX-A: a\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--",
                b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\r\nx\r\n--XyZ--",
            ],
            true,
        );
        // However a server may spell or end the part's name: single quotes, no closing quote,
        // NUL (C strings), a vertical tab (C's isspace), Rack 2.2's token ending at `(` or
        // `[`, a line PHP joins to the one before; a header section PHP ends at a line
        // starting with NUL or after 5,120 bytes of one; a closing delimiter first (Rack 2.2
        // opens the parts with it); and a file uploaded as `_method` (refused: the reading
        // is looser than any server's).
        let long_line = format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\nX-Pad: {}\r\nDELETE\r\n--XyZ--\r\n",
            "p".repeat(5113)
        );
        assert_each_overrides(
            Some(MULTIPART),
            &[
                &b"--XyZ\r\nContent-Disposition: form-data; name='_method'\r\n\r\nDELETE\r\n--XyZ--\r\n"[..],
                b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\r\n\r\nDELETE\r\n--XyZ--\r\n",
                b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\0\"\r\n\r\nDELETE\r\n--XyZ--\r\n",
                b"--XyZ\r\nContent-Disposition: form-data; name=_method\x0b\r\n\r\nDELETE\r\n--XyZ--\r\n",
                b"--XyZ\r\nContent-Disposition: form-data; name=\x0b_method\r\n\r\nDELETE\r\n--XyZ--\r\n",
                b"--XyZ\r\nContent-Disposition: form-data; name=_method(x\r\n\r\nDELETE\r\n--XyZ--\r\n",
                b"--XyZ\r\nContent-Disposition: form-data; name=_method[0]\r\n\r\nDELETE\r\n--XyZ--\r\n",
                b"--XyZ\r\nContent-Disposition: form-data; name=_met\r\nhod\r\n\r\nDELETE\r\n--XyZ--\r\n",
                b"--XyZ\r\nContent-Disposition: form-data; name*=UTF-8''%5Fmethod\r\n\r\nDELETE\r\n--XyZ--\r\n",
                b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\0\r\nDELETE\r\n--XyZ--\r\n",
                long_line.as_bytes(),
                b"--XyZ--\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n",
                b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"_method\"\r\n\r\nx\r\n--XyZ--\r\n",
                // A delimiter inside a header section, and a body cut short in one naming `_method`.
                b"--XyZ\r\nX-A: --XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--XyZ--",
                b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\nX-B: 1",
            ],
            true,
        );
        // Rack 2.2 opens the parts with the first closing delimiter standing on a line of its
        // own, though Postern saw `--XyZ` mid-line before it; and the section after a closing
        // delimiter is read on past an empty line, as Rack reads it.
        assert_each_overrides(
            Some(MULTIPART),
            &[
                &b"x--XyZ\r\nA: b\r\n\r\n--XyZ--\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n"[..],
                b"--XyZ--\r\n\r\nX: y\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE",
            ],
            true,
        );
        // Names that merely hold the word, file names with it as a word, an empty multipart
        // body and an epilogue are read as they are.
        assert_each_overrides(
            Some(MULTIPART),
            &[
                &b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"R&D / method notes.txt\"\r\n\r\nx\r\n--XyZ--\r\n"[..],
                b"--XyZ\r\nContent-Disposition: form-data; name=\"step 2: method\"\r\n\r\nDELETE\r\n--XyZ--\r\n",
                b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--XyZ--\r\nepilogue\r\n",
                &b"--XyZ\r\nContent-Disposition: form-data; name=\"payment_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n"[..],
                b"--XyZ\r\nContent-Disposition: form-data; name=\"x.method.y\"\r\n\r\nDELETE\r\n--XyZ--\r\n",
                b"--XyZ\r\nContent-Disposition: form-data; name=\"_methods\"\r\n\r\nDELETE\r\n--XyZ--\r\n",
                b"--XyZ--\r\n",
            ],
            false,
        );
        // A form or multipart type that also says JSON is read as JSON too (Laravel).
        for content_type in [
            "application/x-www-form-urlencoded; x=/json",
            "application/x-www-form-urlencoded, application/json",
            "multipart/form-data; boundary=XyZ; x=+json",
        ] {
            assert!(
                overrides_however_split(Some(content_type), br#"{"_method":"DELETE"}"#),
                "{content_type}"
            );
        }
        // Dashes before a dash-filled boundary still let it match (the partial match falls
        // back, not to nothing).
        let boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW";
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx-----{boundary}\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--{boundary}--"
        );
        assert!(overrides_however_split(
            Some(&content_type),
            body.as_bytes()
        ));
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n-------------\r\n--{boundary}--"
        );
        assert!(!overrides_however_split(
            Some(&content_type),
            body.as_bytes()
        ));
    }

    #[test]
    fn a_json_top_level_method_key_is_found_however_it_is_written_or_split() {
        assert_each_overrides(
            Some("application/json"),
            &[
                &br#"{"amount":1,"_method":"DELETE"}"#[..],
                br#"{ "_method" : "put" , "a": {"b": [1, 2]} }"#,
                br#"{"\u005fmethod":"PATCH"}"#,
                br#"{"_method":"\u0044ELETE"}"#,
                br#"{"nested":{"_method":"POST"},"_method":"DELETE"}"#,
                br#"{"a":"x\"y","_method":"DELETE"}"#,
            ],
            true,
        );
        assert!(overrides_however_split(
            Some("application/vnd.api+json; charset=utf-8"),
            br#"{"_method":"DELETE"}"#
        ));
        assert_each_overrides(
            Some("application/json"),
            &[
                &br#"{"_method":"POST"}"#[..],
                br#"{"nested":{"_method":"DELETE"}}"#,
                br#"[{"_method":"DELETE"}]"#,
                br#"{"note":"_method","x":"DELETE"}"#,
                br#"{"_method":["DELETE"]}"#,
                br#"{"_method":null,"x":"DELETE"}"#,
                br#"{"a":"\"_method\":\"DELETE\""}"#,
                br#"{"_METHOD":"DELETE"}"#,
            ],
            false,
        );
    }

    #[test]
    fn only_post_bodies_of_the_read_types_are_scanned() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            headers
        };
        assert!(OverrideScan::for_request(&http::Method::PUT, &HeaderMap::new(), false).is_none());
        for kept in ["", "application/x-www-form-urlencoded", "application/json"] {
            assert!(
                OverrideScan::for_request(&http::Method::POST, &headers(kept), false).is_some()
            );
        }
        // The type cut at a space (PHP), and JSON wherever the header says so (Laravel).
        let mut form = OverrideScan::for_request(
            &http::Method::POST,
            &headers("application/x-www-form-urlencoded x"),
            false,
        )
        .unwrap();
        assert!(form.feed(b"_method=DELETE&").is_some());
        let mut json =
            OverrideScan::for_request(&http::Method::POST, &headers("text/plain; x=/json"), false)
                .unwrap();
        assert!(json.feed(br#"{"_method":"DELETE"}"#).is_some());
        for skipped in ["text/plain", "application/octet-stream", "application/xml"] {
            assert!(
                OverrideScan::for_request(&http::Method::POST, &headers(skipped), false).is_none()
            );
        }
    }

    use postern_scan::testing::gzip;

    /// How a POST body in `encoding` and `content_type`, arriving in `pieces`, fares in the
    /// pipeline's own reading (`proxy::body_encoding`, then `ForwardBody::reading` with a
    /// decoded size of at most `limit`): whether it is refused, and how many of its bytes were
    /// sent before that.
    fn compressed(
        encoding: &str,
        content_type: &str,
        limit: u64,
        pieces: &[&[u8]],
    ) -> (bool, usize) {
        use crate::body::{CallerBody, ForwardBody, RequestBodyState};
        use http_body::Body as _;
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        headers.insert(header::CONTENT_ENCODING, encoding.parse().unwrap());
        let Ok(coding) = crate::proxy::body_encoding(&headers) else {
            return (true, 0);
        };
        let frames = pieces
            .iter()
            .map(|piece| bytes::Bytes::copy_from_slice(piece));
        let state = std::sync::Arc::new(RequestBodyState::default());
        let body = ForwardBody::new(CallerBody::Frames(frames.collect()), limit, state).reading(
            coding,
            None,
            OverrideScan::for_request(&http::Method::POST, &headers, false),
        );
        let Ok(mut body) = body else {
            return (true, 0);
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut sent = 0;
        loop {
            match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
                std::task::Poll::Ready(None) => return (false, sent),
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    sent += frame.data_ref().map_or(0, |data| data.len())
                }
                std::task::Poll::Ready(Some(Err(_))) => return (true, sent),
                std::task::Poll::Pending => panic!("a caller's frames are always ready here"),
            }
        }
    }

    /// Whether `body` overrides, fed whole and then split at every byte into two pieces.
    fn compressed_overrides(encoding: &str, content_type: &str, body: &[u8]) -> bool {
        let (whole, _) = compressed(encoding, content_type, LIMIT, &[body]);
        for at in 1..body.len() {
            let (split, _) = compressed(encoding, content_type, LIMIT, &[&body[..at], &body[at..]]);
            assert_eq!(split, whole, "{encoding}, split at {at}");
        }
        whole
    }

    /// `_method` is read in a compressed body as a server that undoes the coding reads it —
    /// gzip, zlib-wrapped or raw deflate, br — however the pieces fall; a compressed body without
    /// one passes.
    #[test]
    fn a_method_field_in_a_compressed_body_is_found() {
        const FORM: &str = "application/x-www-form-urlencoded";
        // Long enough to be compressed, not stored as it stands: the field is found decoded.
        // The words are drawn from a few letters so that even the literals a coder cannot match
        // (zstd keeps short literal runs raw) are entropy-coded, `_method` with them.
        let mut seed = 0x2545_f491_u32;
        let words: String = (0..600)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b"aeiolnrst+"[(seed >> 16) as usize % 10] as char
            })
            .collect();
        let padding = format!(
            "amount=100&currency=usd&description={}{words}",
            "lorem+ipsum+".repeat(20)
        );
        let form = format!("{padding}&_method=DELETE").into_bytes();
        let plain = format!("{padding}&note=gzip").into_bytes();
        let (form, plain) = (&form[..], &plain[..]);
        let brotli = |data: &[u8]| postern_scan::testing::brotli(data, 22);
        let zstd = |data: &[u8]| postern_scan::testing::zstd(data, 20);
        let deflate = |data: &[u8], zlib: bool| {
            let mut out = Vec::new();
            if zlib {
                let mut encoder =
                    flate2::write::ZlibEncoder::new(&mut out, flate2::Compression::fast());
                encoder.write_all(data).unwrap();
                encoder.finish().unwrap();
            } else {
                let mut encoder =
                    flate2::write::DeflateEncoder::new(&mut out, flate2::Compression::fast());
                encoder.write_all(data).unwrap();
                encoder.finish().unwrap();
            }
            out
        };
        for (encoding, overriding, harmless) in [
            ("gzip", gzip(form), gzip(plain)),
            ("x-gzip", gzip(form), gzip(plain)),
            ("deflate", deflate(form, true), deflate(plain, true)),
            ("deflate", deflate(form, false), deflate(plain, false)),
            ("identity, gzip", gzip(form), gzip(plain)),
            ("br", brotli(form), brotli(plain)),
            ("zstd", zstd(form), zstd(plain)),
        ] {
            assert!(
                memchr::memmem::find(&overriding, b"_method").is_none(),
                "{encoding}: the field stands in the body as sent"
            );
            assert!(
                compressed_overrides(encoding, FORM, &overriding),
                "{encoding}"
            );
            assert!(
                !compressed_overrides(encoding, FORM, &harmless),
                "{encoding}"
            );
        }
        // JSON and multipart are read decoded too.
        let json = gzip(br#"{"amount":1,"_method":"DELETE"}"#);
        assert!(compressed_overrides("gzip", "application/json", &json));
        let multipart = gzip(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n",
        );
        assert!(compressed_overrides(
            "gzip",
            "multipart/form-data; boundary=XyZ",
            &multipart
        ));
        let harmless_json = gzip(br#"{"amount":1,"description":"_method DELETE"}"#);
        assert!(!compressed_overrides(
            "gzip",
            "application/json",
            &harmless_json
        ));
        // (Compressed: stored in the clear, as gzip stores what it cannot shrink, its bytes as
        // sent would be read as multipart too, and refused for the binary after its end.)
        let part = "--XyZ\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n100\r\n";
        let harmless_multipart = gzip(format!("{}--XyZ--\r\n", part.repeat(8)).as_bytes());
        assert!(!compressed_overrides(
            "gzip",
            "multipart/form-data; boundary=XyZ",
            &harmless_multipart
        ));
        // Gzip applied twice (two `Content-Encoding` lines are one list) is refused: a server
        // may undo one layer and not the other, harmless or not.
        let twice = gzip(&gzip(plain));
        assert_eq!(compressed("gzip, gzip", FORM, LIMIT, &[&twice]), (true, 0));
        // A POST with no body in a coding is nothing to read (no bytes, or only an empty frame).
        assert_eq!(compressed("gzip", FORM, LIMIT, &[]), (false, 0));
        assert_eq!(compressed("gzip", FORM, LIMIT, &[&[]]), (false, 0));
    }

    /// A compressed body whose `_method` cannot be told is refused: a coding Postern cannot
    /// undo (unknown ones, codings stacked), data not valid for its coding, a stream cut
    /// short, or more decoded than the limit (a compression bomb is refused once it passes the
    /// limit, not read to its end).
    #[test]
    fn a_compressed_body_that_cannot_be_read_is_refused() {
        const FORM: &str = "application/x-www-form-urlencoded";
        let plain = gzip(b"amount=100&currency=usd");
        for unknown in ["compress", "dcz", "gzip, zstd", "gzip, br"] {
            assert_eq!(
                compressed(unknown, FORM, LIMIT, &[&plain]),
                (true, 0),
                "{unknown}"
            );
        }
        assert!(compressed_overrides(
            "gzip",
            FORM,
            b"amount=100 is not gzip"
        ));
        assert!(compressed_overrides(
            "deflate",
            FORM,
            b"amount=100 is not deflate"
        ));
        assert!(compressed_overrides(
            "gzip",
            FORM,
            &plain[..plain.len() - 6]
        ));
        let bomb = gzip(&vec![b'a'; 4 * 1024 * 1024]);
        let pieces: Vec<&[u8]> = bomb.chunks(1024).collect();
        let (refused, sent) = compressed("gzip", FORM, LIMIT, &pieces);
        assert!(refused && sent < bomb.len() / 2, "refused while it streams");
        assert_eq!(
            compressed("gzip", FORM, 8 * 1024 * 1024, &pieces),
            (false, bomb.len()),
            "within a larger limit"
        );
    }

    /// A bearer integration's scan of a `method` body typed `content_type` (`None`: no
    /// `Content-Type`).
    fn bearer_scan(method: http::Method, content_type: Option<&str>) -> Option<OverrideScan> {
        let mut headers = HeaderMap::new();
        if let Some(value) = content_type {
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
        }
        OverrideScan::for_request(&method, &headers, true)
    }

    const FORM: &str = "application/x-www-form-urlencoded";

    /// What a bearer integration's scan of a `method` form body finds in `body`, fed whole, split
    /// in two at every byte and byte by byte (the answer must not depend on the frames).
    fn found_in_form(method: http::Method, body: &[u8]) -> Option<RequestBodyViolation> {
        let scan = || bearer_scan(method.clone(), Some(FORM)).expect("a scanned body");
        let read = |pieces: Vec<&[u8]>| {
            let mut scan = scan();
            let found = pieces.into_iter().find_map(|piece| scan.feed(piece));
            found.or_else(|| {
                scan.finish()
                    .then_some(RequestBodyViolation::MethodOverride)
            })
        };
        let whole = read(vec![body]);
        for at in 1..body.len() {
            let split = read(vec![&body[..at], &body[at..]]);
            assert_eq!(
                split,
                whole,
                "split at {at}: {}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(read(body.chunks(1).collect()), whole, "byte by byte");
        whole
    }

    /// An `access_token` field is found in a bearer integration's form body, of any method,
    /// however its name is written (percent-encoded, `+` for a space, in any case, as PHP and
    /// Rack read a name, after a `;`, behind padding past the kept length) and however the body
    /// is split: at its `=`, even with an empty value.
    #[test]
    fn an_access_token_form_field_is_found_however_it_is_written_or_split() {
        let padded_spaces = format!("a=1&{}access_token=x", "%20".repeat(3000));
        let padded_pluses = format!("{}access_token=x", "+".repeat(5000));
        let padded_brackets = format!("{}access_token=x&b=2", "[".repeat(4097));
        // Padding or a hash's key after the name, however long (Rack 2 drops trailing `]`; a
        // hash under the name is the name's).
        let trailing = format!("access_token{}=T", "]".repeat(5000));
        let trailing_encoded = format!("a=1&access_token{}=T", "%5d".repeat(2000));
        let long_key = format!("access_token[{}]=T", "k".repeat(5000));
        let long_unclosed_key = format!("access_token[{}=T", "k".repeat(5000));
        let found: &[&[u8]] = &[
            b"access_token=caller-own-token",
            b"amount=100&access_token=caller-own-token&currency=usd",
            b"access_token=",
            b"access%5Ftoken=t",
            b"%61%63%63%65%73%73%5f%74%6f%6b%65%6e=t",
            b"ACCESS_TOKEN=t",
            b"Access_Token=t",
            b"+access_token=t",
            b"%20access_token=t",
            b"access.token=t",
            b"access+token=t",
            b"access[token=t",
            b"[access_token]=t",
            b"access_token[]=t",
            b"access_token[0]=t",
            b"access_token%00x=t",
            b"amount=1;access_token=t",
            b"amount=1&&access_token=t",
            padded_spaces.as_bytes(),
            padded_pluses.as_bytes(),
            padded_brackets.as_bytes(),
            trailing.as_bytes(),
            trailing_encoded.as_bytes(),
            long_key.as_bytes(),
            long_unclosed_key.as_bytes(),
            b"access_token]=t",
            b"access_token]]=t",
            b"access_token]x=t",
            b"access_token%5D%5D=t",
            b"%5Baccess_token=t",
            b"access_token%00%5D=t",
        ];
        for method in [http::Method::POST, http::Method::PUT, http::Method::PATCH] {
            for body in found {
                assert_eq!(
                    found_in_form(method.clone(), body),
                    Some(RequestBodyViolation::VendorCredential),
                    "{method} {}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        // Found at the `=`: the value's first byte is never needed (so none of it is sent).
        let mut scan = bearer_scan(http::Method::PUT, Some(FORM)).unwrap();
        assert_eq!(scan.feed(b"a=1&access_tok"), None);
        assert_eq!(
            scan.feed(b"en="),
            Some(RequestBodyViolation::VendorCredential)
        );
    }

    /// Other fields pass: names that merely hold the word, the word in a value (as it stands,
    /// escaped or with its own `=`), a bare name with no value (it carries no token), a hash
    /// under another name, and a long name that only ends with it.
    #[test]
    fn other_form_fields_and_values_holding_access_token_pass() {
        let long_name = format!("{}access_token=t", "a".repeat(5000));
        let passing: &[&[u8]] = &[
            b"x_access_token=t",
            b"access_tokens=t",
            b"access_token_hint=t",
            b"my_access_token=t",
            b"note=access_token",
            b"note=my+access_token+here",
            b"note=access_token%3Dt",
            b"note=access_token=t",
            b"access_token",
            b"access_token&amount=1",
            b"access[token]=t",
            b"access_token[=t",
            b"access%255Ftoken=t",
            b"%00access_token=t",
            b"amount=100&currency=usd",
            b"",
            long_name.as_bytes(),
        ];
        for body in passing {
            assert_eq!(
                found_in_form(http::Method::PUT, body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // A POST's form is read for `_method` as before, beside the credential field.
        assert_eq!(
            found_in_form(http::Method::POST, b"note=access_token&_method=DELETE"),
            Some(RequestBodyViolation::MethodOverride)
        );
    }

    /// Which bodies are read for the credential field: a form (by its type, or a POST with none,
    /// which Rack reads as a form; a multipart type naming no boundary too) of any method, to a
    /// bearer integration only; not multipart parts or JSON keys (RFC 6750 defines only the
    /// form; a JSON `access_token` is ordinary data in many APIs). Another method's form is not
    /// read for `_method`, and nothing of it is held back for the body's end.
    #[test]
    fn only_a_bearer_integrations_form_bodies_are_read_for_access_token() {
        let mut form_headers = HeaderMap::new();
        form_headers.insert(header::CONTENT_TYPE, FORM.parse().unwrap());
        assert!(OverrideScan::for_request(&http::Method::PUT, &form_headers, false).is_none());
        let mut not_bearer =
            OverrideScan::for_request(&http::Method::POST, &form_headers, false).unwrap();
        assert_eq!(not_bearer.feed(b"access_token=t&"), None);
        for method in [http::Method::GET, http::Method::DELETE, http::Method::PUT] {
            let mut scan = bearer_scan(method.clone(), Some(FORM)).expect("{method}");
            assert!(!scan.decided_at_the_end(), "{method}");
            assert_eq!(scan.feed(b"_method=DELETE&a=1"), None, "{method}");
            assert!(!scan.finish(), "{method}");
            assert!(bearer_scan(method.clone(), None).is_none(), "{method}");
            assert!(
                bearer_scan(method.clone(), Some("application/json")).is_none(),
                "{method}"
            );
            let mut boundaryless =
                bearer_scan(method.clone(), Some("multipart/form-data")).unwrap();
            assert_eq!(
                boundaryless.feed(b"access_token=t"),
                Some(RequestBodyViolation::VendorCredential)
            );
        }
        let mut untyped = bearer_scan(http::Method::POST, None).unwrap();
        assert_eq!(
            untyped.feed(b"access_token=t"),
            Some(RequestBodyViolation::VendorCredential)
        );
        let mut json = bearer_scan(http::Method::POST, Some("application/json")).unwrap();
        assert_eq!(json.feed(br#"{"access_token":"t"}"#), None);
        assert!(!json.finish());
        let mut multipart = bearer_scan(
            http::Method::POST,
            Some("multipart/form-data; boundary=XyZ"),
        )
        .unwrap();
        assert_eq!(
            multipart.feed(
                b"--XyZ\r\nContent-Disposition: form-data; name=\"access_token\"\r\n\r\nt\r\n--XyZ--\r\n"
            ),
            None
        );
        assert!(!multipart.finish());
    }

    /// The credential field is read in the pipeline's own reading of a streamed body, as sent
    /// and decoded (gzip), and refuses the body before its value is sent.
    #[test]
    fn an_access_token_field_refuses_a_streamed_body_as_sent_or_decoded() {
        use crate::body::{CallerBody, ForwardBody, RequestBodyState};
        use http_body::Body as _;
        let forward = |encoding: Option<&str>, pieces: &[&[u8]]| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, FORM.parse().unwrap());
            if let Some(encoding) = encoding {
                headers.insert(header::CONTENT_ENCODING, encoding.parse().unwrap());
            }
            let coding = crate::proxy::body_encoding(&headers).unwrap();
            let frames = pieces.iter().map(|p| bytes::Bytes::copy_from_slice(p));
            let state = std::sync::Arc::new(RequestBodyState::default());
            let scan = OverrideScan::for_request(&http::Method::PUT, &headers, true);
            let body = ForwardBody::new(CallerBody::Frames(frames.collect()), LIMIT, state.clone())
                .reading(coding, None, scan);
            let mut sent = Vec::new();
            let Ok(mut body) = body else {
                return (state.violation(), sent);
            };
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            loop {
                match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
                    std::task::Poll::Ready(Some(Ok(frame))) => {
                        sent.extend_from_slice(frame.data_ref().unwrap())
                    }
                    std::task::Poll::Ready(_) => return (state.violation(), sent),
                    std::task::Poll::Pending => panic!("a caller's frames are always ready here"),
                }
            }
        };
        let (found, sent) = forward(None, &[b"amount=100&access_to", b"ken=SECRET", b"&b=2"]);
        assert_eq!(found, RequestBodyViolation::VendorCredential);
        assert!(
            !sent.windows(6).any(|w| w == b"SECRET"),
            "the value was sent"
        );
        let (found, sent) = forward(None, &[b"amount=100&", b"note=access_token"]);
        assert_eq!(found, RequestBodyViolation::None);
        assert_eq!(sent, b"amount=100&note=access_token");
        let coded = gzip(b"amount=100&access_token=SECRET");
        let (found, _) = forward(Some("gzip"), &[&coded[..9], &coded[9..]]);
        assert_eq!(found, RequestBodyViolation::VendorCredential);
        let harmless = gzip(b"amount=100&note=access_token");
        let (found, sent) = forward(Some("gzip"), &[&harmless]);
        assert_eq!(found, RequestBodyViolation::None);
        assert_eq!(sent, harmless);
    }
}
