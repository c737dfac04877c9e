//! The scan phase: classify what a request body carries (PII, secrets) and apply the
//! integration's data-class policy before anything is forwarded — and the same for the vendor's
//! response before it reaches the caller.
//!
//! Only integrations that declare `data_classes` are scanned. A body up to `scan_max_body_bytes`
//! is read into memory (decoded first: a request's one gzip, deflate, br or zstd coding as the vendor's
//! strictest reading goes, once for all its readers; a response's gzip, deflate, br or zstd as its
//! caller's client undoes them), scanned, and then blocked (403
//! `data_class_not_approved`), redacted (values masked, same length) or reported, per
//! `on_unapproved`. A larger body is forwarded as a stream and its event says `unscanned` —
//! never silently. Findings are classes and counts only; no value is kept or logged.

use crate::body::CallerBody;
use bytes::{Bytes, BytesMut};
use http::header;

use crate::upstream::UpstreamBody;
use postern_config::OnUnapproved;
use postern_scan::{ContentTypeHint, Scanner};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use crate::body::RequestBodyViolation;
use crate::body::{
    whole_holds_a_token, DecoderBudget, DecoderPermit, Decoding, ForwardBody, Overdue, Stall,
};
use crate::context::CallContext;
use crate::error::CallError;
use crate::overrides::OverrideScan;
use crate::runtime::IntegrationRuntime;
use crate::tokens::Needles;

/// What the scan found in one direction.
#[derive(Debug, Clone, Default)]
pub struct ScanSummary {
    /// Class id → number of values.
    pub classes: BTreeMap<String, usize>,
    /// Classes found that the integration does not approve.
    pub unapproved: Vec<String>,
    /// Why the body was not scanned, if it was not.
    pub unscanned: Option<&'static str>,
    /// Whether values were masked before forwarding.
    pub redacted: bool,
}

/// Reads, scans and (per policy) blocks or redacts the request body; returns the body to forward.
/// Only for an integration with `data_classes` (the pipeline forwards other integrations' bodies
/// unscanned without calling this). `coding`: the body's ([`crate::proxy::body_encoding`]).
pub async fn scan_request(
    integration: &IntegrationRuntime,
    scanner: &Arc<Scanner>,
    context: &CallContext,
    headers: &http::HeaderMap,
    coding: Option<postern_scan::Coding>,
    body: CallerBody,
    caller_token: Option<&[u8]>,
) -> Result<(ForwardBody, Option<ScanSummary>), (CallError, ScanSummary)> {
    let approved = integration.config.data_classes.as_deref().unwrap_or(&[]);
    let limit = integration.config.max_request_body_bytes;
    let state = context.request_body.clone();
    let cap = integration.config.scan_max_body_bytes;
    // The caller's side: bound as a streamed body is (its connection's deadlines do not).
    let read_by = crate::proxy::body_read_by(integration, context.started);
    let refused = |violation| {
        (
            crate::proxy::body_refusal(violation, limit),
            ScanSummary::default(),
        )
    };
    // What was read is counted as the streaming paths count it, refused or not.
    let counted = |read: u64| {
        state
            .bytes
            .fetch_add(read, std::sync::atomic::Ordering::Relaxed);
    };
    // What the scan holds, counted in the budget until this returns.
    let mut held = SCANS.permit(context.caller.as_ref());
    let (bytes, body, complete) =
        match read_up_to(body, cap, limit, Stall::until(Some(read_by)), &mut held).await {
            Ok(read) => read,
            Err(ReadError::Busy { read }) => {
                counted(read);
                return Err((scanners_busy(), ScanSummary::default()));
            }
            Err(ReadError::Broken { read }) => {
                counted(read);
                return Err(refused(RequestBodyViolation::Broken));
            }
            Err(ReadError::Stalled { read, .. }) => {
                counted(read);
                let declared = crate::h1::content_length(headers);
                return Err((
                    crate::proxy::request_body_timeout(read, declared),
                    ScanSummary::default(),
                ));
            }
            Err(ReadError::TooLarge { read }) => {
                counted(read);
                return Err(refused(RequestBodyViolation::TooLarge));
            }
        };
    let token = caller_token.filter(|token| !token.is_empty());
    // A POST body's `_method` field and a bearer integration's form `access_token` field, read
    // as sent and decoded (a fresh scan for each reading).
    let bearer = crate::proxy::injects_bearer(integration);
    let override_scan = || {
        context
            .method
            .as_ref()
            .and_then(|method| OverrideScan::for_request(method, headers, bearer))
    };
    let overrides = override_scan();
    let mut summary = ScanSummary::default();
    if !complete {
        summary.unscanned = Some("body larger than scan_max_body_bytes");
        // What was read, then the rest as it streams, read as sent and decoded (as a vendor
        // that undoes the coding reads it) for the token and the `_method` field.
        let forward = ForwardBody::with_prefix(bytes, body, limit, state)
            .reading(coding, token, overrides)
            .map_err(refused)?
            .holding(held);
        return Ok((forward, Some(summary)));
    }
    counted(bytes.len() as u64);
    // The caller's token and what looks like any caller token `postern` made (made here: a
    // body too large to scan is read as it streams, which makes its own).
    let needles = Needles::new(token);
    if whole_holds_a_token(&needles, &bytes, coding.is_none()) {
        return Err(refused(RequestBodyViolation::CallerToken));
    }
    // Read whole: as sent for a `_method` or `access_token` field (the token was looked for
    // above), then decoded once (as a vendor that undoes the coding reads it) for the caller
    // token, those fields and the data classes, keeping no more of what it decodes than the
    // scan's cap. Not valid for its coding, it is refused whoever the caller is: what a vendor
    // would read in it could not be scanned.
    // (A fresh scan for the decoded readings: cloned before this one reads anything.)
    let decoded_overrides = coding.and(overrides.clone());
    if let Some(mut scan) = overrides {
        if let Some(found) = scan.feed(&bytes) {
            return Err(refused(found));
        }
        if scan.finish() {
            return Err(refused(RequestBodyViolation::MethodOverride));
        }
    }
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let decoded = match coding {
        None => Ok(vec![Cow::Borrowed(&bytes[..])]),
        Some(coding) => {
            let caller = context.caller.as_ref();
            let mut decoding =
                Decoding::for_request(coding, limit, decoded_overrides, Some(cap), caller)
                    .map_err(refused)?;
            decoding
                .check(&needles, &bytes, false)
                .and_then(|()| decoding.check(&needles, &[], true))
                .map_err(refused)?;
            // Decoded past the scan's cap: not scanned, and said so; scanned as sent all the
            // same.
            decoding
                .kept()
                .map(|readings| readings.into_iter().map(Cow::Owned).collect())
                .ok_or(postern_scan::Unscanned {
                    reason: postern_scan::UnscannedReason::TooLarge { max_bytes: cap },
                })
        }
    };
    if bytes.is_empty() {
        return Ok((ForwardBody::full(bytes, state).holding(held), Some(summary)));
    }
    let classified = classify(
        scanner,
        approved,
        &bytes,
        decoded,
        headers,
        &mut summary,
        &mut held,
    )
    .await
    .map_err(|Busy| (scanners_busy(), ScanSummary::default()))?;
    if summary.unapproved.is_empty() {
        return Ok((ForwardBody::full(bytes, state).holding(held), Some(summary)));
    }
    let names: Vec<String> = summary.unapproved.clone();
    let refuse = |summary: ScanSummary| {
        (
        CallError::forbidden(
            "data_class_not_approved",
            format!(
                "the request carries data classes not approved for integration {}: {}; remove them or ask for the integration's data_classes to include them",
                integration.name,
                names.join(", ")
            ),
        ),
        summary,
        )
    };
    match integration.config.on_unapproved {
        OnUnapproved::Block => Err(refuse(summary)),
        OnUnapproved::Redact if classified.encoded() => {
            // Masked decoded and encoded again in its coding (one reading only: a `deflate`
            // body, whose form a vendor may read either way, is refused, failing closed). The
            // encoding runs off the worker (up to `scan_max_body_bytes` of input).
            let masked = match (coding, &classified.readings[..]) {
                (Some(coding), [Cow::Owned(decoded)]) => Some((
                    coding,
                    postern_scan::redact(decoded, &classified.unapproved_findings),
                )),
                _ => None,
            };
            let Some((coding, masked)) = masked else {
                return Err(refuse(summary));
            };
            // A mask (`*`, not base64url) can cut a longer run down to a token's length: what
            // the vendor would read is searched again.
            if whole_holds_a_token(&needles, &masked, true) {
                return Err(refused(RequestBodyViolation::CallerToken));
            }
            let encoded =
                tokio::task::spawn_blocking(move || postern_scan::encode(coding, &masked))
                    .await
                    .ok()
                    .flatten();
            let Some(encoded) = encoded else {
                return Err(refuse(summary));
            };
            // The new bytes as sent, read as a server that ignores the coding reads them: an
            // encoder's literals may join pieces of the body into the caller's token or a
            // `_method` or `access_token` field that the decoded body does not hold.
            let smuggled = whole_holds_a_token(&needles, &encoded, false)
                || override_scan()
                    .is_some_and(|mut scan| scan.feed(&encoded).is_some() || scan.finish());
            if smuggled {
                return Err(refuse(summary));
            }
            summary.redacted = true;
            Ok((
                ForwardBody::full(Bytes::from(encoded), state).holding(held),
                Some(summary),
            ))
        }
        OnUnapproved::Redact => {
            let redacted = postern_scan::redact(&bytes, &classified.unapproved_findings);
            if whole_holds_a_token(&needles, &redacted, true) {
                return Err(refused(RequestBodyViolation::CallerToken));
            }
            summary.redacted = true;
            Ok((
                ForwardBody::full(Bytes::from(redacted), state).holding(held),
                Some(summary),
            ))
        }
        OnUnapproved::Report => Ok((ForwardBody::full(bytes, state).holding(held), Some(summary))),
    }
}

/// The scan of one complete body: what is needed to redact it.
struct Classified<'a> {
    /// What was scanned: the body as sent, or what it decodes to (one reading, or two).
    readings: Vec<Cow<'a, [u8]>>,
    /// Findings of classes the integration does not approve.
    unapproved_findings: Vec<postern_scan::Finding>,
}

impl Classified<'_> {
    /// The body was compressed: scanned decoded, so it cannot be masked in place as sent.
    fn encoded(&self) -> bool {
        self.readings
            .iter()
            .any(|reading| matches!(reading, Cow::Owned(_)))
    }
}

/// Every line of `name` as one comma-separated list (RFC 9110 §5.3: several lines are one
/// list, and a server may read them so): a second `Content-Encoding: gzip` line is a coding to
/// decode. A value that is not text reads as a coding no one knows, so the body is left
/// unscanned (and says so) rather than scanned as it stands.
pub(crate) fn all_values<'a>(
    headers: &'a http::HeaderMap,
    name: &header::HeaderName,
) -> Option<std::borrow::Cow<'a, str>> {
    let mut values = headers.get_all(name).iter();
    let text = |value: &'a http::HeaderValue| value.to_str().unwrap_or("\u{fffd}");
    let first = text(values.next()?);
    let rest: Vec<&str> = values.map(text).collect();
    if rest.is_empty() {
        return Some(std::borrow::Cow::Borrowed(first));
    }
    Some(std::borrow::Cow::Owned(
        std::iter::once(first)
            .chain(rest)
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

/// Fields that describe a body as it was before it was masked: a digest of it (`Content-Digest`,
/// `Repr-Digest`, `Digest`, `Content-MD5`) or a tag that may be one (`ETag`). They are dropped
/// from a redacted request or answer: kept, they would not match, and a short masked value (an
/// SSN, a card of a known issuer) could be found by trying each until the digest matched.
pub(crate) fn drop_digests(headers: &mut http::HeaderMap) {
    for name in [
        "content-digest",
        "repr-digest",
        "digest",
        "content-md5",
        "etag",
    ] {
        headers.remove(name);
    }
}

/// A caller's `Accept-Encoding`, for an integration whose answers are scanned, rebuilt from the
/// codings Postern decodes for scanning (gzip, x-gzip, deflate, br, zstd, identity), so the
/// vendor cannot answer in another (`compress`, `dcb`, `dcz`, whatever `*` leaves it to pick)
/// that could only be scanned as sent. Each kept element is written in one form every server
/// reads alike: the coding in lower case, and its weight if it had one RFC 9110 (§12.4.2)
/// allows; an element with any other parameter, a second weight or a weight of another shape
/// (`q=1e-46`, read as 0 by some servers and not by others) goes. Codings a list does not name
/// are not acceptable (§12.5.3), so dropping one, or `*`, refuses it. A list left empty, or no
/// field (which lets a server use any coding), becomes `identity`. A list already in that form,
/// on one line, is left as it came. With `redact`, only `identity` is asked for: a compressed
/// answer cannot be masked in place (it would be withheld like `block`), a plain one can.
/// Without `zstd` (`offer_zstd` false: the integration injects a credential, and its answers
/// are read for it as they stream, which a zstd answer cannot be: [`crate::echo`]), `zstd` is
/// dropped too.
pub(crate) fn narrow_accept_encoding(
    headers: &mut http::HeaderMap,
    on_unapproved: OnUnapproved,
    offer_zstd: bool,
) {
    if on_unapproved == OnUnapproved::Redact {
        headers.insert(
            header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
        return;
    }
    let narrowed = match all_values(headers, &header::ACCEPT_ENCODING) {
        Some(list) => {
            let kept: Vec<String> = list
                .split(',')
                .filter_map(readable_coding)
                .filter(|kept| offer_zstd || !is_zstd(kept))
                .collect();
            let narrowed = kept.join(", ");
            if narrowed == list && headers.get_all(header::ACCEPT_ENCODING).iter().count() == 1 {
                return;
            }
            narrowed
        }
        None => String::new(),
    };
    // Canonical codings and weights are visible ASCII: always a valid value.
    let identity = http::HeaderValue::from_static("identity");
    let value = match narrowed.is_empty() {
        true => identity,
        false => http::HeaderValue::from_str(&narrowed).unwrap_or(identity),
    };
    headers.insert(header::ACCEPT_ENCODING, value);
}

/// A caller's `Accept-Encoding`, for an integration that injects a credential and does not
/// scan its answers, without `zstd`: an answer is read for the credential as it streams
/// ([`crate::echo`]), and a zstd one cannot be, so the vendor is not offered it (one sent
/// unasked is refused, `502 response_undecodable`). Every other element goes as it came; a `*`
/// (any coding) gets `zstd;q=0` after it, which refuses zstd by name (RFC 9110 §12.5.3); a list
/// left empty becomes `identity`. No field, or one naming neither, is left as it is: the cost
/// of a call without the field is one lookup.
pub(crate) fn without_zstd(headers: &mut http::HeaderMap) {
    let names = |value: &http::HeaderValue| {
        let bytes = value.as_bytes();
        bytes.contains(&b'*') || bytes.windows(4).any(|w| w.eq_ignore_ascii_case(b"zstd"))
    };
    if !headers.get_all(header::ACCEPT_ENCODING).iter().any(names) {
        return;
    }
    let Some(list) = all_values(headers, &header::ACCEPT_ENCODING) else {
        return;
    };
    let mut kept: Vec<&str> = list
        .split(',')
        .map(|element| element.trim_matches([' ', '\t']))
        .filter(|element| !element.is_empty() && !is_zstd(element))
        .collect();
    let any = kept
        .iter()
        .any(|element| element.split(';').next().map(str::trim_ascii) == Some("*"));
    if any {
        kept.push("zstd;q=0");
    }
    let identity = http::HeaderValue::from_static("identity");
    // Nothing left the caller takes (`zstd, identity;q=0`): it gets the plain answer, which
    // every client reads, rather than a list that leaves the vendor nothing to send.
    let value = match kept.iter().all(|element| weighs_nothing(element)) {
        true => identity,
        false => http::HeaderValue::from_str(&kept.join(", ")).unwrap_or(identity),
    };
    headers.insert(header::ACCEPT_ENCODING, value);
}

/// Whether an `Accept-Encoding` element refuses its coding (`;q=0`, `q=0.000`).
fn weighs_nothing(element: &str) -> bool {
    element.split(';').skip(1).any(|parameter| {
        parameter
            .trim_ascii()
            .strip_prefix(['q', 'Q'])
            .and_then(|rest| rest.trim_ascii_start().strip_prefix('='))
            .is_some_and(|weight| {
                let weight = weight.trim_ascii();
                weight.strip_prefix('0').is_some_and(|rest| {
                    rest.is_empty()
                        || rest
                            .strip_prefix('.')
                            .is_some_and(|digits| digits.bytes().all(|b| b == b'0'))
                })
            })
    })
}

/// Whether an `Accept-Encoding` element names `zstd`.
fn is_zstd(element: &str) -> bool {
    element
        .split(';')
        .next()
        .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case("zstd"))
}

/// One element of an `Accept-Encoding` list (`coding [ OWS ";" OWS "q=" qvalue ]`) in its
/// canonical form, if Postern decodes its coding and its weight is well formed.
fn readable_coding(element: &str) -> Option<String> {
    let mut parts = element.split(';');
    let coding = parts.next()?.trim().to_ascii_lowercase();
    if coding.is_empty() || postern_scan::StreamDecoder::check(&coding).is_err() {
        return None;
    }
    match (parts.next(), parts.next()) {
        (None, _) => Some(coding),
        (Some(weight), None) => {
            let weight = weight.trim_matches([' ', '\t']);
            let value = weight
                .strip_prefix("q=")
                .or_else(|| weight.strip_prefix("Q="))?;
            is_qvalue(value).then(|| format!("{coding};q={value}"))
        }
        _ => None,
    }
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )` (RFC 9110 §12.4.2).
fn is_qvalue(value: &str) -> bool {
    let (whole, fraction) = match value.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (value, ""),
    };
    fraction.len() <= 3
        && match whole {
            "0" => fraction.bytes().all(|digit| digit.is_ascii_digit()),
            "1" => fraction.bytes().all(|digit| digit == b'0'),
            _ => false,
        }
}

/// Bodies (all their readings together) of at least this many bytes are scanned on the
/// blocking pool rather than on the worker serving the connection.
const SCAN_OFF_WORKER_BYTES: usize = 256 * 1024;

/// What scanned calls may hold at once, all callers together: the bodies read whole to be
/// scanned (requests and answers, up to each integration's `scan_max_body_bytes`), their
/// decoded readings, and the copies scanned off the workers (which live until their scan ends,
/// the call cancelled or not). Past it a scanned call is refused `503 scanners_busy` (failing
/// closed: nothing unscanned is forwarded) rather than let compressed or slow bodies take the
/// gateway's memory.
pub const SCAN_BUDGET: usize = 256 << 20;

/// The most of [`SCAN_BUDGET`] one caller's calls may hold at once (a quarter), so one caller's
/// bodies cannot refuse everyone else's.
pub const SCAN_CALLER_SHARE: usize = SCAN_BUDGET / 4;

/// The process's [`SCAN_BUDGET`].
static SCANS: DecoderBudget = DecoderBudget::new(SCAN_BUDGET, SCAN_CALLER_SHARE);

/// What OAuth2 integrations' request bodies, read whole to be replayed after a vendor's 401,
/// may hold at once: as much as scanned bodies, a caller's calls a quarter of it. Past it a call
/// is refused `503 request_bodies_busy` before anything reaches the vendor.
pub(crate) static REPLAYS: DecoderBudget = DecoderBudget::new(SCAN_BUDGET, SCAN_CALLER_SHARE);

/// Scans running off the workers at once; the others wait their turn (their copies counted in
/// [`SCAN_BUDGET`] meanwhile), rather than take a blocking-pool thread each.
static SCAN_THREADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

/// [`SCAN_BUDGET`] is spent: a request is refused ([`scanners_busy`]), an answer withheld
/// ([`response_scanners_busy`]).
struct Busy;

/// The vendor's answer withheld past [`SCAN_BUDGET`]: a 502 with no `Retry-After`, as the
/// call reached the vendor, which may have acted on it (a retry would act again).
fn response_scanners_busy() -> CallError {
    CallError::bad_gateway(
        "response_scanners_busy",
        "the vendor's answer was withheld: the gateway is scanning as many bodies as its memory budget allows (the call reached the vendor, and may have taken effect)",
    )
}

/// The refusal of a scanned call past [`SCAN_BUDGET`], before anything reached the vendor.
fn scanners_busy() -> CallError {
    let mut error = CallError::unavailable(
        "scanners_busy",
        "the gateway is scanning as many bodies as its memory budget allows; retry shortly",
    );
    error.retry_after_seconds = Some(1);
    error
}

/// Scans `decoded` (`bytes` with its coding undone: one reading, or two for a `deflate` body
/// that reads two ways, each scanned as a body of its own) and fills `summary` (classes,
/// unapproved). A body that could not be decoded is scanned as sent, and `summary.unscanned`
/// says it was not decoded.
/// `held`: the call's share of [`SCAN_BUDGET`], which the decoded readings are counted in, and
/// the off-worker copy as a share of its own that goes with the copy; past it, [`Busy`].
async fn classify<'a>(
    scanner: &Arc<Scanner>,
    approved: &[String],
    bytes: &'a [u8],
    decoded: Result<Vec<Cow<'a, [u8]>>, postern_scan::Unscanned>,
    headers: &http::HeaderMap,
    summary: &mut ScanSummary,
    held: &mut DecoderPermit<'static>,
) -> Result<Classified<'a>, Busy> {
    let readings = match decoded {
        Ok(readings) => {
            let decoded_bytes = readings
                .iter()
                .filter(|reading| matches!(reading, Cow::Owned(_)))
                .map(|reading| reading.len())
                .sum();
            if !held.grow(decoded_bytes) {
                return Err(Busy);
            }
            readings
        }
        Err(unscanned) => {
            // Not decoded, and said so; but scanned as sent: a server that ignores the coding
            // reads these very bytes, and what is found in them can be masked in place.
            tracing::debug!(reason = ?unscanned, "body not decoded; scanned as sent");
            summary.unscanned = Some("body could not be decoded for scanning");
            vec![Cow::Borrowed(bytes)]
        }
    };
    // Two `Content-Type` lines say nothing certain: scanned as text of no known kind.
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let content_type = match (types.next(), types.next()) {
        (Some(only), None) => only.to_str().ok(),
        _ => None,
    };
    let hint = ContentTypeHint::from_content_type(content_type);
    let mut findings = Vec::new();
    summary.classes.clear();
    // A large body is scanned off the worker, whose other connections would wait on it (a
    // scan is linear, but a megabyte of crafted markup still takes a tenth of a second).
    let scan_here = || -> Vec<postern_scan::ScanResult> {
        readings
            .iter()
            .map(|reading| scanner.scan(reading, hint))
            .collect()
    };
    let size = readings.iter().map(|reading| reading.len()).sum::<usize>();
    let results = if size >= SCAN_OFF_WORKER_BYTES {
        // The copy and its share of the budget go with the scan, which runs to its end even
        // if the call is dropped meanwhile (unless it had not begun: then it is skipped).
        if !held.grow(size) {
            return Err(Busy);
        }
        let held = held.split_off(size);
        let turn = SCAN_THREADS.acquire().await;
        let off_worker = scanner.clone();
        let owned: Vec<Vec<u8>> = readings.iter().map(|reading| reading.to_vec()).collect();
        let (done, scanned) = tokio::sync::oneshot::channel();
        drop(tokio::task::spawn_blocking(move || {
            let (_held, _turn) = (held, turn);
            if done.is_closed() {
                return;
            }
            let results: Vec<_> = owned
                .iter()
                .map(|reading| off_worker.scan(reading, hint))
                .collect();
            let _ = done.send(results);
        }));
        match scanned.await {
            Ok(results) => results,
            // Not run (the runtime shutting down): scanned here instead. (A panic in the
            // scan is a panic of the blocking pool's thread, and ends here too.)
            Err(_) => scan_here(),
        }
    } else {
        scan_here()
    };
    for result in results {
        for (class, count) in &result.class_counts {
            *summary.classes.entry(class.to_string()).or_default() += count;
        }
        // Masking applies to what was scanned: the body as sent, or its one decoded reading
        // (encoded again after; two readings are refused instead).
        findings.extend(result.findings);
    }
    summary.unapproved = summary
        .classes
        .keys()
        .filter(|class| !approved.contains(class))
        .cloned()
        .collect();
    let unapproved_findings = findings
        .into_iter()
        .filter(|f| summary.unapproved.iter().any(|c| c.as_str() == &*f.class))
        .collect();
    Ok(Classified {
        readings,
        unapproved_findings,
    })
}

/// A vendor response after scanning: the bytes read so far (possibly masked), the rest of the
/// stream (empty when the whole body was read), and what was found.
pub struct ScannedResponse {
    pub prefix: Bytes,
    pub rest: UpstreamBody,
    pub summary: ScanSummary,
    /// What the scan holds of [`SCAN_BUDGET`], to be held while the bytes may be.
    pub(crate) held: Option<Box<DecoderPermit<'static>>>,
}

/// Scans a response body for scanned integrations: up to `scan_max_body_bytes` is read and
/// classified; unapproved classes are masked (`redact`), refused (`block`: 502
/// `response_data_class_not_approved`, the caller never sees them) or reported. `started`: when
/// the call began (its `total_timeout_ms` counts from there).
pub async fn scan_response(
    integration: &IntegrationRuntime,
    scanner: &Arc<Scanner>,
    headers: &http::HeaderMap,
    body: UpstreamBody,
    (started, caller): (std::time::Instant, Option<&Arc<str>>),
) -> Result<ScannedResponse, (CallError, ScanSummary)> {
    let approved = integration.config.data_classes.as_deref().unwrap_or(&[]);
    let cap = integration.config.scan_max_body_bytes;
    let mut summary = ScanSummary::default();
    let declared = crate::h1::content_length(headers);
    if declared.is_some_and(|length| length > cap) {
        summary.unscanned = Some("body larger than scan_max_body_bytes");
        return Ok(ScannedResponse {
            prefix: Bytes::new(),
            rest: body,
            summary,
            held: None,
        });
    }
    let stall = Stall::for_call(&integration.config, started);
    let limit = integration.config.max_response_body_bytes;
    // What the scan holds, counted in the budget until this returns.
    let mut held = SCANS.permit(caller);
    let (bytes, body, complete) = match read_up_to(body, cap, limit, stall, &mut held).await {
        Ok(read) => read,
        Err(ReadError::Busy { .. }) => return Err((response_scanners_busy(), summary)),
        // What is read for scanning is passed on as the answer's start: the answer's limit
        // holds for it as for the rest.
        Err(ReadError::TooLarge { .. }) => {
            return Err((
                CallError::bad_gateway(
                    "response_too_large",
                    format!("the vendor's response exceeds max_response_body_bytes ({limit})"),
                ),
                summary,
            ))
        }
        Err(ReadError::Stalled { overdue, .. }) => {
            let message = match overdue {
                Overdue::Idle(_) => format!(
                    "the vendor of {} sent no body data for response_idle_timeout_ms ({} ms) while its answer was read for scanning",
                    integration.name, integration.config.response_idle_timeout_ms
                ),
                Overdue::Total(_) => format!(
                    "the call to {} passed total_timeout_ms ({} ms) while the vendor's answer was read for scanning",
                    integration.name, integration.config.total_timeout_ms
                ),
            };
            return Err((
                CallError::new(http::StatusCode::GATEWAY_TIMEOUT, overdue.reason(), message),
                summary,
            ));
        }
        Err(_) => {
            return Err((
                CallError::bad_gateway(
                    "upstream_body_error",
                    "the vendor's response body broke off before it could be scanned",
                ),
                summary,
            ))
        }
    };
    if !complete {
        summary.unscanned = Some("body larger than scan_max_body_bytes");
        return Ok(ScannedResponse {
            prefix: bytes,
            rest: body,
            summary,
            held: Some(Box::new(held)),
        });
    }
    let scanned = |prefix: Bytes, summary: ScanSummary, held| ScannedResponse {
        prefix,
        rest: body,
        summary,
        held: Some(Box::new(held)),
    };
    if bytes.is_empty() {
        return Ok(scanned(bytes, summary, held));
    }
    // The caller's client undoes the coding: gzip, deflate either way, br, stacked.
    let encoding = all_values(headers, &header::CONTENT_ENCODING);
    let decoded = postern_scan::decode_for_scan(&bytes, encoding.as_deref(), cap as usize)
        .map(|decoded| vec![decoded]);
    let classified = match classify(
        scanner,
        approved,
        &bytes,
        decoded,
        headers,
        &mut summary,
        &mut held,
    )
    .await
    {
        Ok(classified) => classified,
        Err(Busy) => return Err((response_scanners_busy(), summary)),
    };
    if summary.unapproved.is_empty() {
        return Ok(scanned(bytes, summary, held));
    }
    let refuse = |summary: ScanSummary| {
        let names = summary.unapproved.join(", ");
        (
            CallError::bad_gateway(
                "response_data_class_not_approved",
                format!(
                    "the vendor's response carries data classes not approved for integration {}: {names}; it was withheld",
                    integration.name
                ),
            ),
            summary,
        )
    };
    match integration.config.on_unapproved {
        OnUnapproved::Block => Err(refuse(summary)),
        OnUnapproved::Redact if classified.encoded() => Err(refuse(summary)),
        OnUnapproved::Redact => {
            let redacted = postern_scan::redact(&bytes, &classified.unapproved_findings);
            summary.redacted = true;
            Ok(scanned(Bytes::from(redacted), summary, held))
        }
        OnUnapproved::Report => Ok(scanned(bytes, summary, held)),
    }
}

enum ReadError {
    /// Past [`SCAN_BUDGET`], at `read` bytes.
    Busy { read: u64 },
    /// The stream failed after `read` bytes.
    Broken { read: u64 },
    /// Past the limit, at `read` bytes.
    TooLarge { read: u64 },
    /// No frame for the idle limit given, or past the end given, after `read` bytes.
    Stalled { overdue: Overdue, read: u64 },
}

/// Reads frames until the body ends or more than `cap` bytes are buffered, each counted in
/// `held` (its share of [`SCAN_BUDGET`]); more than `limit` is an error, and so is a vendor
/// that stalls past `stall`'s limit. Returns the bytes, the
/// rest of the stream, and whether the body ended.
async fn read_up_to<B: http_body::Body<Data = Bytes> + Unpin>(
    mut body: B,
    cap: u64,
    limit: u64,
    mut stall: Stall,
    held: &mut DecoderPermit<'static>,
) -> Result<(Bytes, B, bool), ReadError> {
    let mut buffer = BytesMut::new();
    while (buffer.len() as u64) <= cap {
        let frame = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending => match stall.poll_stalled(cx) {
                Some(overdue) => Poll::Ready(Err(ReadError::Stalled {
                    overdue,
                    read: buffer.len() as u64,
                })),
                None => Poll::Pending,
            },
            Poll::Ready(frame) => {
                stall.progressed();
                Poll::Ready(Ok(frame))
            }
        })
        .await?;
        match frame {
            None => return Ok((buffer.freeze(), body, true)),
            Some(Err(_)) => {
                return Err(ReadError::Broken {
                    read: buffer.len() as u64,
                })
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !held.grow(data.len()) {
                        return Err(ReadError::Busy {
                            read: buffer.len() as u64,
                        });
                    }
                    buffer.extend_from_slice(data);
                }
                if buffer.len() as u64 > limit {
                    return Err(ReadError::TooLarge {
                        read: buffer.len() as u64,
                    });
                }
            }
        }
    }
    Ok((buffer.freeze(), body, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Accept-Encoding` lines `lines` become after `change`.
    fn after(lines: &[&str], change: impl Fn(&mut http::HeaderMap)) -> Vec<String> {
        let mut headers = http::HeaderMap::new();
        for line in lines {
            headers.append(header::ACCEPT_ENCODING, line.parse().unwrap());
        }
        change(&mut headers);
        headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .map(|value| value.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_credential_injecting_integration_does_not_offer_zstd() {
        for (sent, expected) in [
            (&["gzip, br, zstd"][..], &["gzip, br"][..]),
            (&["ZSTD;q=1, gzip;q=0.5"], &["gzip;q=0.5"]),
            (&["zstd"], &["identity"]),
            (&["zstd ; q=1", "deflate"], &["deflate"]),
            (&["*"], &["*, zstd;q=0"]),
            (&["gzip, *;q=0.1, zstd"], &["gzip, *;q=0.1, zstd;q=0"]),
            // Nothing the caller takes is left: the plain answer.
            (&["zstd, identity;q=0"], &["identity"]),
            (&["zstd, gzip; Q = 0.000"], &["identity"]),
            (&["zstd, gzip;q=0.001"], &["gzip;q=0.001"]),
            // Left as they came: no zstd, no `*`; or no field.
            (&["gzip, compress", "br"], &["gzip, compress", "br"]),
            (&[], &[]),
        ] {
            assert_eq!(after(sent, without_zstd), expected, "{sent:?}");
        }
    }

    #[test]
    fn a_scanning_integration_that_injects_a_credential_does_not_offer_zstd() {
        let narrow = |offer_zstd| {
            move |headers: &mut http::HeaderMap| {
                narrow_accept_encoding(headers, OnUnapproved::Block, offer_zstd)
            }
        };
        let sent = &["gzip, deflate, br, zstd, dcz"][..];
        assert_eq!(after(sent, narrow(true)), ["gzip, deflate, br, zstd"]);
        assert_eq!(after(sent, narrow(false)), ["gzip, deflate, br"]);
        assert_eq!(after(&["zstd;q=1"], narrow(false)), ["identity"]);
        assert_eq!(after(&["zstd;q=1"], narrow(true)), ["zstd;q=1"]);
    }
}
