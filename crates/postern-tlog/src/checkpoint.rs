//! C2SP tlog-checkpoint bodies and C2SP tlog-proof@v1 files.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use crate::hash::{leaf_hash, Hash};
use crate::note::{open_note, NoteError, NoteSigner, NoteVerifier};
use crate::tree::{verify_inclusion, ProofError};

/// Errors in checkpoints and proof files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    #[error("checkpoint origin is {found:?}, expected {expected:?}")]
    WrongOrigin { expected: String, found: String },
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("malformed tlog-proof: {0}")]
    MalformedProof(&'static str),
    #[error("inclusion proof does not verify against the checkpoint: {0}")]
    Proof(#[from] ProofError),
}

/// A tree head: `<origin>\n<size>\n<base64 root>\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root_hash: Hash,
}

impl Checkpoint {
    /// The note text (body) of this checkpoint.
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            self.root_hash.to_base64()
        )
    }

    /// Parses a checkpoint body; extension lines after the root are allowed and ignored.
    pub fn parse_text(text: &str) -> Result<Checkpoint, CheckpointError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::Malformed("text must end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(CheckpointError::Malformed("empty origin line"));
        }
        let size_text = lines
            .next()
            .ok_or(CheckpointError::Malformed("missing size line"))?;
        if size_text.is_empty()
            || !size_text.bytes().all(|b| b.is_ascii_digit())
            || (size_text.len() > 1 && size_text.starts_with('0'))
        {
            return Err(CheckpointError::Malformed(
                "size must be decimal without leading zeroes",
            ));
        }
        let size = size_text
            .parse()
            .map_err(|_| CheckpointError::Malformed("size out of range"))?;
        let root_text = lines
            .next()
            .ok_or(CheckpointError::Malformed("missing root hash line"))?;
        let root_hash = Hash::from_base64(root_text).ok_or(CheckpointError::Malformed(
            "root hash is not base64 of 32 bytes",
        ))?;
        if lines.any(str::is_empty) {
            return Err(CheckpointError::Malformed("empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root_hash,
        })
    }

    /// Signs this checkpoint; returns the whole signed note.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, CheckpointError> {
        Ok(signer.sign(&self.to_text())?)
    }

    /// Verifies a signed checkpoint note and checks its origin.
    pub fn open(
        note: &str,
        verifiers: &[NoteVerifier],
        expected_origin: &str,
    ) -> Result<Checkpoint, CheckpointError> {
        let opened = open_note(note, verifiers)?;
        let checkpoint = Checkpoint::parse_text(&opened.text)?;
        if checkpoint.origin != expected_origin {
            return Err(CheckpointError::WrongOrigin {
                expected: expected_origin.to_string(),
                found: checkpoint.origin,
            });
        }
        Ok(checkpoint)
    }
}

/// The first line of a tlog-proof file.
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// A C2SP tlog-proof@v1: an entry's index, its inclusion proof and the signed checkpoint the
/// proof leads to. Conventionally stored with the extension `.tlog-proof`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlogProof {
    /// Opaque, unauthenticated extra data.
    pub extra: Option<Vec<u8>>,
    pub index: u64,
    pub inclusion_proof: Vec<Hash>,
    /// The signed checkpoint note, verbatim.
    pub checkpoint_note: String,
}

impl TlogProof {
    /// The file text.
    pub fn encode(&self) -> String {
        let mut out = format!("{TLOG_PROOF_HEADER}\n");
        if let Some(extra) = &self.extra {
            out.push_str(&format!("extra {}\n", BASE64.encode(extra)));
        }
        out.push_str(&format!("index {}\n", self.index));
        for hash in &self.inclusion_proof {
            out.push_str(&hash.to_base64());
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint_note);
        out
    }

    /// Parses the file text (without checking any signature).
    pub fn parse(text: &str) -> Result<TlogProof, CheckpointError> {
        let bad = CheckpointError::MalformedProof;
        let rest = text
            .strip_prefix(TLOG_PROOF_HEADER)
            .and_then(|r| r.strip_prefix('\n'))
            .ok_or(bad("first line must be c2sp.org/tlog-proof@v1"))?;
        let (mut line, mut rest) = rest.split_once('\n').ok_or(bad("truncated"))?;
        let mut extra = None;
        if let Some(extra_b64) = line.strip_prefix("extra ") {
            extra = Some(
                BASE64
                    .decode(extra_b64)
                    .map_err(|_| bad("extra is not base64"))?,
            );
            (line, rest) = rest.split_once('\n').ok_or(bad("truncated"))?;
        }
        let index_text = line
            .strip_prefix("index ")
            .ok_or(bad("missing index line"))?;
        if index_text.is_empty()
            || !index_text.bytes().all(|b| b.is_ascii_digit())
            || (index_text.len() > 1 && index_text.starts_with('0'))
        {
            return Err(bad("index must be decimal without leading zeroes"));
        }
        let index = index_text.parse().map_err(|_| bad("index out of range"))?;
        let mut inclusion_proof = Vec::new();
        loop {
            let (line, after) = rest.split_once('\n').ok_or(bad("missing checkpoint"))?;
            rest = after;
            if line.is_empty() {
                break;
            }
            inclusion_proof.push(Hash::from_base64(line).ok_or(bad("proof hash is not base64"))?);
        }
        Ok(TlogProof {
            extra,
            index,
            inclusion_proof,
            checkpoint_note: rest.to_string(),
        })
    }

    /// Verifies the checkpoint signature and origin, then that `entry` is at `index` in it.
    pub fn verify(
        &self,
        entry: &[u8],
        verifiers: &[NoteVerifier],
        expected_origin: &str,
    ) -> Result<Checkpoint, CheckpointError> {
        let checkpoint = Checkpoint::open(&self.checkpoint_note, verifiers, expected_origin)?;
        verify_inclusion(
            self.index,
            checkpoint.size,
            &leaf_hash(entry),
            &self.inclusion_proof,
            &checkpoint.root_hash,
        )?;
        Ok(checkpoint)
    }
}
