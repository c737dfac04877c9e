//! The audit record codec: one log entry per record, canonical JSON, version 1.
//!
//! See the crate documentation for the encoding.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

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

/// The gateway's decision for the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
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
    fn check(&self) -> Result<(), RecordError> {
        if self.version != RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion(u64::from(self.version)));
        }
        if !self.data_classes.windows(2).all(|w| w[0] < w[1]) {
            return Err(RecordError::NotCanonical(
                "data_classes must be sorted and unique",
            ));
        }
        if !self.hmacs.values().all(|value| is_hmac_hex(value)) {
            return Err(RecordError::NotCanonical(
                "hmacs values must be 64 lower-case hex characters",
            ));
        }
        Ok(())
    }

    /// The canonical bytes: compact JSON, keys in the documented order, no whitespace.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        self.check()?;
        let bytes = serde_json::to_vec(self)?;
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        Ok(bytes)
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
#[derive(Clone, Copy, Debug, Serialize)]
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
    #[serde(serialize_with = "pairs_as_map")]
    pub hmacs: &'a [(&'a str, &'a str)],
}

fn pairs_as_map<S: serde::Serializer>(
    pairs: &&[(&str, &str)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(name, value)| (name, value)))
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
        serde_json::to_writer(&mut *out, self)?;
        if out.len() > MAX_ENTRY_BYTES {
            return Err(RecordError::TooLarge(out.len()));
        }
        Ok(())
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::with_capacity(384);
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

fn is_hmac_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `HMAC-SHA256(key, u32_be(len(label)) ‖ label ‖ data)` in lower-case hex: how bodies and
/// sensitive values appear in records. The key is per deployment and kept outside the log;
/// deleting it makes the values unrecoverable while every proof stays valid.
pub fn keyed_hash(key: &[u8], label: &str, data: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(&(label.len() as u32).to_be_bytes());
    mac.update(label.as_bytes());
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}
