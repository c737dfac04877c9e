//! The audit record codec: one log entry per record, canonical JSON, version 1.
//!
//! See the crate documentation for the encoding.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::json::{push_opt_str, push_opt_u64, push_str, push_u64};
use crate::tile::MAX_ENTRY_BYTES;

/// The only record version this code writes and reads.
pub const RECORD_VERSION: u32 = 1;

/// Whether the record is written before forwarding (intent) or when the call ends (outcome).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Intent,
    Outcome,
}

impl RecordKind {
    /// The wire spelling (`intent` | `outcome`), as serde writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            RecordKind::Intent => "intent",
            RecordKind::Outcome => "outcome",
        }
    }
}

/// The gateway's decision for the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    /// The wire spelling (`allow` | `deny`), as serde writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// One audit entry. Field order here is the key order on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    pub kind: RecordKind,
    /// Unix time in milliseconds, supplied by the caller.
    pub time_unix_ms: u64,
    pub request_id: String,
    /// Caller identity (caller name or SPIFFE ID).
    pub caller: String,
    pub integration: String,
    pub operation: String,
    pub method: String,
    pub path_template: String,
    pub decision: Decision,
    /// Stable reason code for a denial or an error (e.g. `operation_not_allowed`).
    pub reason: Option<String>,
    /// HTTP status returned to the caller (outcome records).
    pub status: Option<u16>,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    /// Data classes seen, sorted and unique.
    pub data_classes: Vec<String>,
    /// For an outcome record: the log index of its intent record.
    pub intent_index: Option<u64>,
    /// Named keyed hashes (64 lower-case hex characters each), see [`keyed_hash`].
    pub hmacs: BTreeMap<String, String>,
}

/// Errors encoding or decoding a record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("audit record version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u64),
    #[error("audit record is not valid JSON for version 1: {0}")]
    Json(#[from] serde_json::Error),
    #[error("audit record is not in canonical form: {0}")]
    NotCanonical(&'static str),
    #[error("audit record is {0} bytes; entries are limited to 65535 bytes")]
    TooLarge(usize),
}

impl AuditRecord {
    /// The canonical bytes: compact JSON, keys in the documented order, no whitespace.
    /// Written by the same encoder as [`AuditRecordRef::encode`].
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        self.with_ref(|record| record.encode())
    }

    /// Runs `f` on this record borrowed as an [`AuditRecordRef`] (the form the encoder takes).
    pub fn with_ref<R>(&self, f: impl FnOnce(&AuditRecordRef<'_>) -> R) -> R {
        let data_classes: Vec<&str> = self.data_classes.iter().map(String::as_str).collect();
        let hmacs: Vec<(&str, &str)> = self
            .hmacs
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        f(&AuditRecordRef {
            version: self.version,
            kind: self.kind,
            time_unix_ms: self.time_unix_ms,
            request_id: &self.request_id,
            caller: &self.caller,
            integration: &self.integration,
            operation: &self.operation,
            method: &self.method,
            path_template: &self.path_template,
            decision: self.decision,
            reason: self.reason.as_deref(),
            status: self.status,
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            data_classes: &data_classes,
            intent_index: self.intent_index,
            hmacs: &hmacs,
        })
    }

    /// Decodes canonical bytes; anything that would not re-encode to the same bytes is refused.
    pub fn decode(bytes: &[u8]) -> Result<AuditRecord, RecordError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u64,
        }
        let version: VersionOnly = serde_json::from_slice(bytes)?;
        if version.version != u64::from(RECORD_VERSION) {
            return Err(RecordError::UnsupportedVersion(version.version));
        }
        let record: AuditRecord = serde_json::from_slice(bytes)?;
        if record.encode()? != bytes {
            return Err(RecordError::NotCanonical(
                "bytes differ from the canonical encoding (key order, whitespace, escapes or missing keys)",
            ));
        }
        Ok(record)
    }
}

/// A record borrowed from the caller's data, for the hot path: [`AuditRecordRef::encode`] gives
/// exactly the bytes [`AuditRecord::encode`] gives for the same values, without building an
/// owned record first. Field order here is the key order on the wire, as in [`AuditRecord`].
#[derive(Clone, Copy, Debug)]
pub struct AuditRecordRef<'a> {
    pub version: u32,
    pub kind: RecordKind,
    pub time_unix_ms: u64,
    pub request_id: &'a str,
    pub caller: &'a str,
    pub integration: &'a str,
    pub operation: &'a str,
    pub method: &'a str,
    pub path_template: &'a str,
    pub decision: Decision,
    pub reason: Option<&'a str>,
    pub status: Option<u16>,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    /// Sorted and unique.
    pub data_classes: &'a [&'a str],
    pub intent_index: Option<u64>,
    /// `(name, hex)` pairs sorted by name, unique; written as a JSON object.
    pub hmacs: &'a [(&'a str, &'a str)],
}

impl AuditRecordRef<'_> {
    /// The canonical bytes, appended to `out` (cleared first).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.version != RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion(u64::from(self.version)));
        }
        if !self.data_classes.windows(2).all(|w| w[0] < w[1]) {
            return Err(RecordError::NotCanonical(
                "data_classes must be sorted and unique",
            ));
        }
        if !self.hmacs.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(RecordError::NotCanonical(
                "hmacs names must be sorted and unique",
            ));
        }
        if !self.hmacs.iter().all(|(_, value)| is_hmac_hex(value)) {
            return Err(RecordError::NotCanonical(
                "hmacs values must be 64 lower-case hex characters",
            ));
        }
        out.clear();
        out.reserve(self.encoded_len_hint());
        self.write(out);
        if out.len() > MAX_ENTRY_BYTES {
            return Err(RecordError::TooLarge(out.len()));
        }
        Ok(())
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// The encoded length when no string needs escaping (escapes only add bytes): enough that
    /// the usual record is written without growing the buffer.
    fn encoded_len_hint(&self) -> usize {
        // Keys, punctuation, the longer spelling of each enum and the widest numbers.
        const SKELETON: usize = 343;
        let strings = [
            self.request_id,
            self.caller,
            self.integration,
            self.operation,
            self.method,
            self.path_template,
            self.reason.unwrap_or(""),
        ]
        .iter()
        .map(|value| value.len())
        .sum::<usize>();
        // `"class",` per data class and `"name":"value",` per hash.
        let classes = self
            .data_classes
            .iter()
            .map(|class| class.len() + 3)
            .sum::<usize>();
        let hmacs = self
            .hmacs
            .iter()
            .map(|(name, value)| name.len() + value.len() + 6)
            .sum::<usize>();
        SKELETON + strings + classes + hmacs
    }

    /// Writes the JSON object (the checks in [`AuditRecordRef::encode_into`] have passed).
    /// Key order and spelling are the crate documentation's; the bytes are what serde's derive
    /// writes for [`AuditRecord`] (checked against it in the tests). Each `,"key":` is one
    /// literal.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"version\":");
        push_u64(out, u64::from(self.version));
        out.extend_from_slice(b",\"kind\":");
        push_str(out, self.kind.as_str());
        out.extend_from_slice(b",\"time_unix_ms\":");
        push_u64(out, self.time_unix_ms);
        out.extend_from_slice(b",\"request_id\":");
        push_str(out, self.request_id);
        out.extend_from_slice(b",\"caller\":");
        push_str(out, self.caller);
        out.extend_from_slice(b",\"integration\":");
        push_str(out, self.integration);
        out.extend_from_slice(b",\"operation\":");
        push_str(out, self.operation);
        out.extend_from_slice(b",\"method\":");
        push_str(out, self.method);
        out.extend_from_slice(b",\"path_template\":");
        push_str(out, self.path_template);
        out.extend_from_slice(b",\"decision\":");
        push_str(out, self.decision.as_str());
        out.extend_from_slice(b",\"reason\":");
        push_opt_str(out, self.reason);
        out.extend_from_slice(b",\"status\":");
        push_opt_u64(out, self.status.map(u64::from));
        out.extend_from_slice(b",\"request_bytes\":");
        push_opt_u64(out, self.request_bytes);
        out.extend_from_slice(b",\"response_bytes\":");
        push_opt_u64(out, self.response_bytes);
        out.extend_from_slice(b",\"data_classes\":");
        out.push(b'[');
        for (i, class) in self.data_classes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_str(out, class);
        }
        out.push(b']');
        out.extend_from_slice(b",\"intent_index\":");
        push_opt_u64(out, self.intent_index);
        out.extend_from_slice(b",\"hmacs\":");
        out.push(b'{');
        for (i, (name, value)) in self.hmacs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_str(out, name);
            // Checked to be hex: nothing to escape.
            out.extend_from_slice(b":\"");
            out.extend_from_slice(value.as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
        out.push(b'}');
    }
}

/// Whether `value` is 64 lower-case hex characters.
fn is_hmac_hex(value: &str) -> bool {
    let Ok(bytes) = <&[u8; 64]>::try_from(value.as_bytes()) else {
        return false;
    };
    // No early exit, so the compiler checks all 64 bytes with vector instructions.
    bytes.iter().fold(true, |all, &b| {
        all & ((b.wrapping_sub(b'0') < 10) | (b.wrapping_sub(b'a') < 6))
    })
}

/// `HMAC-SHA256(key, u32_be(len(label)) ‖ label ‖ data)` in lower-case hex: how bodies and
/// sensitive values appear in records. The key is per deployment and kept outside the log;
/// deleting it makes the values unrecoverable while every proof stays valid.
///
/// Prepares the key on every call; to hash many values under one key, build a
/// [`KeyedHasher`] once instead.
pub fn keyed_hash(key: &[u8], label: &str, data: &[u8]) -> String {
    KeyedHasher::new(key).hash_hex(label, data)
}

/// [`keyed_hash`] with the key prepared once: HMAC-SHA256 absorbs the key into two hash
/// states (two SHA-256 compressions) that every value then starts from, so each hash costs
/// only the compressions of the value itself. Gives exactly [`keyed_hash`]'s results.
///
/// The prepared states stand in for the key (they compute the same HMACs): keep the hasher
/// as private as the key itself (no `Clone`, a `Debug` that shows nothing).
pub struct KeyedHasher {
    mac: Hmac<Sha256>,
}

impl KeyedHasher {
    /// Prepares `key` (any length; keys longer than 64 bytes are hashed first, as HMAC says).
    pub fn new(key: &[u8]) -> KeyedHasher {
        KeyedHasher {
            mac: <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length"),
        }
    }

    /// `HMAC-SHA256(key, u32_be(len(label)) ‖ label ‖ data)`, the 32 raw bytes.
    pub fn hash(&self, label: &str, data: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(&(label.len() as u32).to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The same in lower-case hex, 64 characters: exactly [`keyed_hash`]`(key, label, data)`.
    pub fn hash_hex(&self, label: &str, data: &[u8]) -> String {
        self.hash_hex_into(label, data, &mut [0; 64]).to_string()
    }

    /// [`KeyedHasher::hash_hex`] written into `out`, for callers that keep the text in an
    /// allocation of their own.
    pub fn hash_hex_into<'a>(&self, label: &str, data: &[u8], out: &'a mut [u8; 64]) -> &'a str {
        hex::encode_to_slice(self.hash(label, data), out).expect("32 bytes are 64 hex digits");
        std::str::from_utf8(out).expect("hex digits are ASCII")
    }
}

impl fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key-derived state.
        f.write_str("KeyedHasher(..)")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// What the generated records covered; the test insists on all of it.
    #[derive(Default)]
    struct Coverage {
        kinds: BTreeSet<&'static str>,
        decisions: BTreeSet<&'static str>,
        /// `(field, is_some)` for every optional field.
        optionals: BTreeSet<(&'static str, bool)>,
        class_counts: BTreeSet<usize>,
        hmac_counts: BTreeSet<usize>,
        /// Every char that appeared in any string (values, classes, hash names).
        chars: BTreeSet<char>,
    }

    /// Characters that stress the escaping: every control character, `"`, `\`, DEL, `/`,
    /// multi-byte UTF-8 (2, 3 and 4 bytes, including U+2028 which JSON need not escape).
    fn special_chars() -> Vec<char> {
        let mut chars: Vec<char> = (0u8..0x20).map(char::from).collect();
        chars.extend([
            '"',
            '\\',
            '\u{7f}',
            '/',
            '\u{80}',
            'é',
            'ÿ',
            '\u{2028}',
            '✓',
            '\u{fffd}',
            '\u{ffff}',
            '𝄞',
            '\u{10ffff}',
        ]);
        chars
    }

    fn random_string(rng: &mut StdRng, specials: &[char], coverage: &mut Coverage) -> String {
        let len = rng.gen_range(0..12);
        let text: String = (0..len)
            .map(|_| {
                if rng.gen_bool(0.4) {
                    specials[rng.gen_range(0..specials.len())]
                } else {
                    char::from(rng.gen_range(b' '..=b'~'))
                }
            })
            .collect();
        coverage.chars.extend(text.chars());
        text
    }

    fn random_u64(rng: &mut StdRng) -> u64 {
        match rng.gen_range(0..4) {
            0 => 0,
            1 => u64::MAX,
            2 => rng.gen_range(0..1_000),
            _ => rng.gen(),
        }
    }

    fn random_option<T>(
        rng: &mut StdRng,
        coverage: &mut Coverage,
        field: &'static str,
        value: impl FnOnce(&mut StdRng) -> T,
    ) -> Option<T> {
        let some = rng.gen_bool(0.5);
        coverage.optionals.insert((field, some));
        some.then(|| value(rng))
    }

    fn random_hex(rng: &mut StdRng) -> String {
        (0..64)
            .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
            .collect()
    }

    fn random_record(rng: &mut StdRng, specials: &[char], coverage: &mut Coverage) -> AuditRecord {
        let text =
            |rng: &mut StdRng, coverage: &mut Coverage| random_string(rng, specials, coverage);
        let kind = if rng.gen_bool(0.5) {
            RecordKind::Intent
        } else {
            RecordKind::Outcome
        };
        let decision = if rng.gen_bool(0.5) {
            Decision::Allow
        } else {
            Decision::Deny
        };
        coverage.kinds.insert(kind.as_str());
        coverage.decisions.insert(decision.as_str());
        let class_count = rng.gen_range(0..5);
        let data_classes: BTreeSet<String> =
            (0..class_count).map(|_| text(rng, coverage)).collect();
        coverage.class_counts.insert(data_classes.len());
        let hmac_count = rng.gen_range(0..4);
        let hmacs: BTreeMap<String, String> = (0..hmac_count)
            .map(|_| (text(rng, coverage), random_hex(rng)))
            .collect();
        coverage.hmac_counts.insert(hmacs.len());
        AuditRecord {
            version: RECORD_VERSION,
            kind,
            time_unix_ms: random_u64(rng),
            request_id: text(rng, coverage),
            caller: text(rng, coverage),
            integration: text(rng, coverage),
            operation: text(rng, coverage),
            method: text(rng, coverage),
            path_template: text(rng, coverage),
            decision,
            reason: random_option(rng, coverage, "reason", |rng| {
                random_string(rng, specials, &mut Coverage::default())
            }),
            status: random_option(rng, coverage, "status", |rng| match rng.gen_range(0..3) {
                0 => 0,
                1 => u16::MAX,
                _ => rng.gen(),
            }),
            request_bytes: random_option(rng, coverage, "request_bytes", random_u64),
            response_bytes: random_option(rng, coverage, "response_bytes", random_u64),
            data_classes: data_classes.into_iter().collect(),
            intent_index: random_option(rng, coverage, "intent_index", random_u64),
            hmacs,
        }
    }

    #[test]
    fn hand_written_encoding_equals_serde_json_for_generated_records() {
        let specials = special_chars();
        let mut rng = StdRng::seed_from_u64(0x5057_4552_4e00_0001);
        let mut coverage = Coverage::default();
        let mut reused = b"stale bytes the encoder must clear".to_vec();
        for n in 0..4000 {
            let record = random_record(&mut rng, &specials, &mut coverage);
            let ours = record.with_ref(|borrowed| {
                let ours = borrowed.encode().unwrap();
                // What this encoder replaced: the owned record's serde derive (the old
                // `AuditRecord::encode`), which holds the same values.
                let serde = serde_json::to_vec(&record).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&ours),
                    String::from_utf8_lossy(&serde),
                    "record {n}: {record:?}"
                );
                borrowed.encode_into(&mut reused).unwrap();
                assert_eq!(reused, ours, "record {n}: encode_into clears and rewrites");
                ours
            });
            assert_eq!(AuditRecord::decode(&ours).unwrap(), record, "record {n}");
        }

        assert_eq!(coverage.kinds.len(), 2, "both kinds");
        assert_eq!(coverage.decisions.len(), 2, "both decisions");
        for field in [
            "reason",
            "status",
            "request_bytes",
            "response_bytes",
            "intent_index",
        ] {
            assert!(
                coverage.optionals.contains(&(field, false)),
                "{field}: None"
            );
            assert!(coverage.optionals.contains(&(field, true)), "{field}: Some");
        }
        assert!(coverage.class_counts.contains(&0), "no data classes");
        assert!(
            coverage.class_counts.iter().any(|&n| n > 1),
            "several data classes"
        );
        assert!(coverage.hmac_counts.contains(&0), "no hmacs");
        assert!(coverage.hmac_counts.iter().any(|&n| n > 1), "several hmacs");
        for c in specials {
            assert!(coverage.chars.contains(&c), "{c:?} never generated");
        }
    }

    #[test]
    fn enum_spellings_are_serde_spellings() {
        for kind in [RecordKind::Intent, RecordKind::Outcome] {
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.as_str())
            );
        }
        for decision in [Decision::Allow, Decision::Deny] {
            assert_eq!(
                serde_json::to_string(&decision).unwrap(),
                format!("\"{}\"", decision.as_str())
            );
        }
    }

    #[test]
    fn oversized_records_are_refused() {
        let hex = "0".repeat(64);
        let hmacs = [("target", hex.as_str())];
        let long = "x".repeat(MAX_ENTRY_BYTES);
        let record = AuditRecordRef {
            version: RECORD_VERSION,
            kind: RecordKind::Intent,
            time_unix_ms: 0,
            request_id: &long,
            caller: "",
            integration: "",
            operation: "",
            method: "GET",
            path_template: "/",
            decision: Decision::Allow,
            reason: None,
            status: None,
            request_bytes: None,
            response_bytes: None,
            data_classes: &[],
            intent_index: None,
            hmacs: &hmacs,
        };
        assert!(matches!(record.encode(), Err(RecordError::TooLarge(_))));
        let mut wrong_version = record;
        wrong_version.request_id = "r";
        wrong_version.version = 2;
        assert!(matches!(
            wrong_version.encode(),
            Err(RecordError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn keyed_hasher_equals_keyed_hash_and_plain_hmac() {
        let mut rng = StdRng::seed_from_u64(7);
        // Empty, short, block-sized, and longer-than-a-block keys (hashed first by HMAC).
        for key_len in [0usize, 1, 32, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..key_len).map(|_| rng.gen()).collect();
            let hasher = KeyedHasher::new(&key);
            for (label, data_len) in [("", 0usize), ("target", 17), ("body", 64), ("x", 1000)] {
                let data: Vec<u8> = (0..data_len).map(|_| rng.gen()).collect();
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
                mac.update(&(label.len() as u32).to_be_bytes());
                mac.update(label.as_bytes());
                mac.update(&data);
                let raw: [u8; 32] = mac.finalize().into_bytes().into();
                assert_eq!(hasher.hash(label, &data), raw);
                assert_eq!(hasher.hash_hex(label, &data), hex::encode(raw));
                assert_eq!(keyed_hash(&key, label, &data), hex::encode(raw));
                // Reusable: the prepared state is not consumed by a hash.
                assert_eq!(hasher.hash_hex(label, &data), hex::encode(raw));
            }
        }
        assert_eq!(format!("{:?}", KeyedHasher::new(b"k")), "KeyedHasher(..)");
    }
}
