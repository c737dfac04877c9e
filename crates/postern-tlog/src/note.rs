//! C2SP signed notes with Ed25519 signatures (signature type `0x01`).
//!
//! * key ID = first 4 bytes (big-endian `u32`) of `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`;
//! * signature line = `— <name> <base64(key ID ‖ Ed25519 signature)>`;
//! * verifier key = `<name>+<8 hex key ID>+<base64(0x01 ‖ public key)>`;
//! * signer key = `PRIVATE+KEY+<name>+<8 hex key ID>+<base64(0x01 ‖ 32-byte seed)>`.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The Ed25519 signature type byte.
const SIGNATURE_TYPE_ED25519: u8 = 0x01;
/// Signature lines accepted in one note.
const MAX_SIGNATURES: usize = 100;
const SIGNATURE_PREFIX: &str = "— ";

/// Errors in keys and notes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed key: {0}")]
    MalformedKey(&'static str),
    #[error("key name {0:?} is invalid: it must be non-empty, without spaces or '+'")]
    BadKeyName(String),
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("signature by {name}+{key_id:08x} does not verify")]
    InvalidSignature { name: String, key_id: u32 },
    #[error("note has no valid signature by a known key")]
    NoKnownSignature,
}

fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && !name.chars().any(char::is_whitespace)
}

/// `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]` as a big-endian `u32`.
pub fn ed25519_key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0x0A, SIGNATURE_TYPE_ED25519]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Signs notes. Holds the private key: its `Debug` never shows it.
pub struct NoteSigner {
    name: String,
    key_id: u32,
    signing_key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NoteSigner({}+{:08x}, private key hidden)",
            self.name, self.key_id
        )
    }
}

impl NoteSigner {
    /// A signer for key `name` from a 32-byte Ed25519 seed (the caller supplies randomness).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<NoteSigner, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::BadKeyName(name.to_string()));
        }
        let signing_key = SigningKey::from_bytes(&seed);
        let key_id = ed25519_key_id(name, signing_key.verifying_key().as_bytes());
        Ok(NoteSigner {
            name: name.to_string(),
            key_id,
            signing_key,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 ‖ seed)>`; the key ID must match.
    pub fn from_signer_key(text: &str) -> Result<NoteSigner, NoteError> {
        let rest = text
            .trim_end_matches('\n')
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::MalformedKey(
                "signer key must start with PRIVATE+KEY+",
            ))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::MalformedKey("expected PRIVATE+KEY+name+id+key"));
        };
        let key_id = parse_key_id(id_hex)?;
        let bytes = BASE64
            .decode(key_b64)
            .map_err(|_| NoteError::MalformedKey("key is not base64"))?;
        let (Some(&SIGNATURE_TYPE_ED25519), Ok(seed)) = (
            bytes.first(),
            <[u8; 32]>::try_from(&bytes[1.min(bytes.len())..]),
        ) else {
            return Err(NoteError::MalformedKey(
                "key is not 0x01 followed by a 32-byte Ed25519 seed",
            ));
        };
        let signer = NoteSigner::from_seed(name, seed)?;
        if signer.key_id != key_id {
            return Err(NoteError::MalformedKey("key ID does not match the key"));
        }
        Ok(signer)
    }

    /// The secret signer key string (for the key file only; never log it).
    pub fn signer_key(&self) -> String {
        let mut bytes = vec![SIGNATURE_TYPE_ED25519];
        bytes.extend_from_slice(self.signing_key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64.encode(bytes)
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            verifying_key: self.signing_key.verifying_key(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Signs `text` (which must end in a newline) and returns the whole note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_note_text(text)?;
        let signature = self.signing_key.sign(text.as_bytes());
        let mut blob = self.key_id.to_be_bytes().to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        Ok(format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(blob)
        ))
    }
}

fn parse_key_id(id_hex: &str) -> Result<u32, NoteError> {
    if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NoteError::MalformedKey("key ID must be 8 hex digits"));
    }
    u32::from_str_radix(id_hex, 16).map_err(|_| NoteError::MalformedKey("key ID is not hex"))
}

/// Verifies signatures by one Ed25519 key.
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: u32,
    verifying_key: VerifyingKey,
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.verifier_key())
    }
}

impl NoteVerifier {
    /// Parses `<name>+<hex key ID>+<base64(0x01 ‖ public key)>`; the key ID must match.
    pub fn from_verifier_key(text: &str) -> Result<NoteVerifier, NoteError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::MalformedKey("expected name+id+key"));
        };
        if !valid_key_name(name) {
            return Err(NoteError::BadKeyName(name.to_string()));
        }
        let key_id = parse_key_id(id_hex)?;
        let bytes = BASE64
            .decode(key_b64)
            .map_err(|_| NoteError::MalformedKey("key is not base64"))?;
        let (Some(&SIGNATURE_TYPE_ED25519), Ok(public)) = (
            bytes.first(),
            <[u8; 32]>::try_from(&bytes[1.min(bytes.len())..]),
        ) else {
            return Err(NoteError::MalformedKey(
                "key is not 0x01 followed by a 32-byte Ed25519 public key",
            ));
        };
        let verifying_key = VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::MalformedKey("not a valid Ed25519 public key"))?;
        if ed25519_key_id(name, &public) != key_id {
            return Err(NoteError::MalformedKey("key ID does not match the key"));
        }
        Ok(NoteVerifier {
            name: name.to_string(),
            key_id,
            verifying_key,
        })
    }

    /// `<name>+<hex key ID>+<base64(0x01 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        let mut bytes = vec![SIGNATURE_TYPE_ED25519];
        bytes.extend_from_slice(self.verifying_key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.key_id, BASE64.encode(bytes))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    fn verify(&self, text: &str, signature: &[u8]) -> bool {
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.verifying_key
            .verify_strict(text.as_bytes(), &signature)
            .is_ok()
    }
}

/// A note whose signatures were checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedNote {
    /// The signed text, including its final newline.
    pub text: String,
    /// `name+keyid` of each known key whose signature verified.
    pub verified_by: Vec<String>,
    /// Signatures by keys not in the verifier list (ignored, as the spec requires).
    pub unknown_signatures: usize,
}

fn check_note_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::Malformed(
            "text must be non-empty and end in a newline",
        ));
    }
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("control character in note"));
    }
    Ok(())
}

/// Splits a note into text and signature lines and verifies them: signatures by unknown keys
/// are ignored; a known key's invalid signature rejects the note; at least one known key's
/// signature must verify.
pub fn open_note(note: &str, verifiers: &[NoteVerifier]) -> Result<OpenedNote, NoteError> {
    if note.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("control character in note"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before signatures"))?;
    let text = &note[..split + 1];
    let signatures = &note[split + 2..];
    check_note_text(text)?;
    if signatures.is_empty() || !signatures.ends_with('\n') {
        return Err(NoteError::Malformed(
            "signature block must end in a newline",
        ));
    }
    let lines: Vec<&str> = signatures[..signatures.len() - 1].split('\n').collect();
    if lines.len() > MAX_SIGNATURES {
        return Err(NoteError::Malformed("too many signatures"));
    }
    let mut verified_by = Vec::new();
    let mut unknown_signatures = 0;
    for line in lines {
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(NoteError::Malformed("signature line must start with '— '"))?;
        let (name, blob_b64) = rest.split_once(' ').ok_or(NoteError::Malformed(
            "signature line needs a name and a signature",
        ))?;
        if !valid_key_name(name) {
            return Err(NoteError::Malformed("bad key name in signature line"));
        }
        let blob = BASE64
            .decode(blob_b64)
            .map_err(|_| NoteError::Malformed("signature is not base64"))?;
        if blob.len() < 5 {
            return Err(NoteError::Malformed("signature too short"));
        }
        let key_id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
        let Some(verifier) = verifiers
            .iter()
            .find(|v| v.name == name && v.key_id == key_id)
        else {
            unknown_signatures += 1;
            continue;
        };
        if !verifier.verify(text, &blob[4..]) {
            return Err(NoteError::InvalidSignature {
                name: name.to_string(),
                key_id,
            });
        }
        let who = format!("{name}+{key_id:08x}");
        if !verified_by.contains(&who) {
            verified_by.push(who);
        }
    }
    if verified_by.is_empty() {
        return Err(NoteError::NoKnownSignature);
    }
    Ok(OpenedNote {
        text: text.to_string(),
        verified_by,
        unknown_signatures,
    })
}
