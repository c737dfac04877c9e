//! The master key and the envelope: seal/open with XChaCha20-Poly1305; keys derived from the
//! master key and HMAC-SHA256 under them.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

type HmacSha256 = Hmac<Sha256>;

/// Where the master key came from (for messages; never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeyOrigin {
    Environment,
    File(std::path::PathBuf),
    Generated(std::path::PathBuf),
}

/// 32 bytes that never print.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        MasterKey(Zeroizing::new(rand::random()))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(Zeroizing::new(bytes))
    }

    /// Parses 64 hex digits or base64 (standard or URL-safe, padded or not) of 32 bytes.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let mut bytes = [0u8; 32];
        if text.len() == 64 && hex::decode_to_slice(text, &mut bytes).is_ok() {
            return Some(MasterKey::from_bytes(bytes));
        }
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            if let Ok(mut decoded) = engine.decode(text) {
                if decoded.len() == 32 {
                    bytes.copy_from_slice(&decoded);
                    decoded.zeroize();
                    return Some(MasterKey::from_bytes(bytes));
                }
                decoded.zeroize();
            }
        }
        None
    }

    /// The key file's text form: base64, one line.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(self.0.as_ref())
        ))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A key for one purpose, derived from the master key: HKDF-Expand (RFC 5869) with the master
/// key as the pseudorandom key and `label` as the info, one 32-byte block
/// (`HMAC-SHA256(master, label ‖ 0x01)`). The master key is uniformly random already, so no
/// Extract step is needed; distinct labels give independent keys.
pub(crate) fn derive_key(master: &MasterKey, label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(master.bytes()).expect("HMAC accepts any key length");
    mac.update(label);
    mac.update(&[1]);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// HMAC-SHA256 of `message` under `key`.
pub(crate) fn mac(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC-SHA256 of `message` under `key` (compared in constant time).
pub(crate) fn mac_matches(key: &[u8; 32], message: &[u8], tag: &[u8]) -> bool {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.verify_slice(tag).is_ok()
}

/// `nonce ‖ ciphertext+tag`.
pub(crate) fn seal(key: &[u8; 32], associated: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_with_nonce(key, &rand::random(), associated, plaintext)
}

/// [`seal`] with a nonce chosen by the caller. Only for a value that is sealed under one key
/// with one nonce, one associated data and one plaintext, ever (the same inputs give the same
/// bytes, so nothing is learnt from the nonce's reuse): the vault's key check, whose nonce,
/// derived from the master key, tells the vault its caller-token rows carry MACs.
pub(crate) fn seal_with_nonce(
    key: &[u8; 32],
    nonce_bytes: &[u8; 24],
    associated: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = XNonce::from_slice(nonce_bytes);
    let sealed = cipher
        .encrypt(
            nonce,
            Payload {
                msg: plaintext,
                aad: associated,
            },
        )
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(24 + sealed.len());
    out.extend_from_slice(nonce_bytes);
    out.extend_from_slice(&sealed);
    out
}

/// Opens what [`seal`] produced; `None` if the key, associated data or bytes are wrong.
pub(crate) fn open(key: &[u8; 32], associated: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < 24 + 16 {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(key.into());
    let (nonce, body) = sealed.split_at(24);
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: associated,
            },
        )
        .ok()
        .map(Zeroizing::new)
}
