//! The block pass: one forward walk over the input, 64 bytes at a time, that finds every
//! position the digit detectors and the key rules need to look at.
//!
//! Per block, SIMD byte-class comparisons (AVX2 when the CPU has it, SSE2 — the x86_64
//! baseline — otherwise, scalar elsewhere) give one 64-bit mask per class: digit, word byte,
//! capital letter, hex digit, `:`, `=`, `"`. Bit arithmetic on the masks then selects:
//! - *digit candidates*: a digit not glued to a preceding word byte (so ids, hashes, base64 and
//!   UUIDs cost nothing), a digit after two capitals or two lowercase letters and before a
//!   digit (IBAN check digits; the letters not glued to a word byte before them) or `%2B`, and
//!   a hex
//!   digit next to a `:` that has a hex digit or `:` on both sides (IPv6) — handed to
//!   [`digits::examine`], except a lone short number, which the digit mask alone rules out;
//! - *quoted-key colons*: a `:` right after a `"` (`"key":`), the common JSON key;
//! - *other key terminators*: every other `:` and `=` (only `=` in a form body).
//!
//! Everything else is looked at only by the mask computation.

use crate::digits::{self, DigitDetectors};
use crate::fold;
use crate::RawFinding;

/// Which bytes end a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Terminators {
    /// No key rules: keys are not looked for.
    None,
    /// Form bodies: `key=value`.
    Equals,
    /// JSON and text: `"key":`, `key: value`, `key=value`.
    ColonAndEquals,
}

/// What the block pass hands over besides digit candidates.
pub(crate) trait KeyVisitor {
    /// `"key":` — a `:` right after a `"`, which is at `close`.
    fn quoted_key(&mut self, close: usize, out: &mut Vec<RawFinding>);
    /// Any other `:` or `=`, at `at`.
    fn terminator(&mut self, at: usize, out: &mut Vec<RawFinding>);
}

/// Byte-class masks of one 64-byte block: bit `i` is set when byte `i` is of the class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BlockMasks {
    digit: u64,
    word: u64,
    upper: u64,
    hex: u64,
    colon: u64,
    equals: u64,
    quote: u64,
    /// `0xEF` (lead byte of the full-width forms) and `#` (of `&#`): where the fold may be
    /// needed (`fold.rs`).
    fold: u64,
}

/// Defines `unsafe fn $name(&[u8; 64]) -> BlockMasks` from one SIMD width's intrinsics: the
/// 64 bytes in `64 / $width` lanes of `$width` bytes, each compared against every byte class.
/// `$mask` is the unsigned integer as wide as `$movemask`'s result has bits.
///
/// A byte is in `low..=high` when `x + (128 - low)`, as a signed byte, is below
/// `high - low + 1 - 128`: one add and one signed compare (`$cmpgt` with the bound first).
#[cfg(target_arch = "x86_64")]
macro_rules! simd_block_masks {
    (
        $(#[$attr:meta])*
        unsafe fn $name:ident;
        vector: $vector:ident, width: $width:literal, mask: $mask:ty,
        load: $load:ident, set1: $set1:ident, add: $add:ident, or: $or:ident,
        cmpeq: $cmpeq:ident, cmpgt: $cmpgt:ident, movemask: $movemask:ident $(,)?
    ) => {
        $(#[$attr])*
        #[inline(always)]
        unsafe fn $name(block: &[u8; 64]) -> BlockMasks {
            use std::arch::x86_64::*;
            #[inline(always)]
            unsafe fn in_range(x: $vector, low: u8, high: u8) -> $vector {
                let shifted = $add(x, $set1(128u8.wrapping_sub(low) as i8));
                $cmpgt($set1((i16::from(high - low) + 1 - 128) as i8), shifted)
            }
            let mut masks = BlockMasks::default();
            for lane in 0..64 / $width {
                // SAFETY: an unaligned load of `$width` bytes that lie inside `block`.
                let x = $load(block.as_ptr().add(lane * $width) as *const $vector);
                let folded = $or(x, $set1(0x20));
                let digit = in_range(x, b'0', b'9');
                let upper = in_range(x, b'A', b'Z');
                let letter = in_range(folded, b'a', b'z');
                let underscore = $cmpeq(x, $set1(b'_' as i8));
                let word = $or($or(digit, letter), underscore);
                let hex = $or(digit, in_range(folded, b'a', b'f'));
                let colon = $cmpeq(x, $set1(b':' as i8));
                let equals = $cmpeq(x, $set1(b'=' as i8));
                let quote = $cmpeq(x, $set1(b'"' as i8));
                let fold = $or($cmpeq(x, $set1(0xEFu8 as i8)), $cmpeq(x, $set1(b'#' as i8)));
                let shift = lane * $width;
                masks.digit |= u64::from($movemask(digit) as $mask) << shift;
                masks.upper |= u64::from($movemask(upper) as $mask) << shift;
                masks.word |= u64::from($movemask(word) as $mask) << shift;
                masks.hex |= u64::from($movemask(hex) as $mask) << shift;
                masks.colon |= u64::from($movemask(colon) as $mask) << shift;
                masks.equals |= u64::from($movemask(equals) as $mask) << shift;
                masks.quote |= u64::from($movemask(quote) as $mask) << shift;
                masks.fold |= u64::from($movemask(fold) as $mask) << shift;
            }
            masks
        }
    };
}

#[cfg(target_arch = "x86_64")]
simd_block_masks! {
    /// The masks with 16-byte SSE2 lanes; [`block_masks_sse2`] is the safe entry point.
    ///
    /// # Safety
    /// The CPU must support SSE2, which every x86_64 CPU does.
    unsafe fn sse2_block_masks;
    vector: __m128i, width: 16, mask: u16,
    load: _mm_loadu_si128, set1: _mm_set1_epi8, add: _mm_add_epi8, or: _mm_or_si128,
    cmpeq: _mm_cmpeq_epi8, cmpgt: _mm_cmpgt_epi8, movemask: _mm_movemask_epi8,
}

#[cfg(target_arch = "x86_64")]
simd_block_masks! {
    /// The same masks with 32-byte AVX2 lanes: about a third of the SSE2 cost.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    unsafe fn block_masks_avx2;
    vector: __m256i, width: 32, mask: u32,
    load: _mm256_loadu_si256, set1: _mm256_set1_epi8, add: _mm256_add_epi8, or: _mm256_or_si256,
    cmpeq: _mm256_cmpeq_epi8, cmpgt: _mm256_cmpgt_epi8, movemask: _mm256_movemask_epi8,
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn block_masks_sse2(block: &[u8; 64]) -> BlockMasks {
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe { sse2_block_masks(block) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn block_masks_portable(block: &[u8; 64]) -> BlockMasks {
    block_masks_scalar(block)
}

#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn block_masks_scalar(block: &[u8; 64]) -> BlockMasks {
    let mut masks = BlockMasks::default();
    for (index, &byte) in block.iter().enumerate() {
        let bit = 1u64 << index;
        if byte.is_ascii_digit() {
            masks.digit |= bit;
        }
        if byte.is_ascii_uppercase() {
            masks.upper |= bit;
        }
        if digits::is_word(byte) {
            masks.word |= bit;
        }
        if byte.is_ascii_hexdigit() {
            masks.hex |= bit;
        }
        if byte == b':' {
            masks.colon |= bit;
        }
        if byte == b'=' {
            masks.equals |= bit;
        }
        if byte == b'"' {
            masks.quote |= bit;
        }
        if byte == 0xEF || byte == b'#' {
            masks.fold |= bit;
        }
    }
    masks
}

/// Digit candidates of one block; `previous` is the byte before the block, `next` the one after.
#[inline(always)]
fn digit_candidates(masks: BlockMasks, previous: u8, next: u8) -> u64 {
    let previous_word = u64::from(digits::is_word(previous));
    let previous_upper = u64::from(previous.is_ascii_uppercase());
    let word_before = (masks.word << 1) | previous_word;
    // After a capital: IBAN check digits (two capitals before, not glued to a word byte before
    // them) and `%2B` (a percent-encoded `+`). The first bits of a block, whose bytes before
    // are not in the masks, are kept.
    let after_capital = masks.digit
        & ((masks.upper << 1) | previous_upper)
        & (((masks.upper | masks.digit) << 2) | 0b11)
        & !(masks.word << 3);
    // After two lowercase letters (or `_`), not glued to a word byte before them, and followed
    // by a digit: the check digits of an IBAN written in lower case (`de89 3704 …`).
    let lower = masks.word & !masks.digit & !masks.upper;
    let previous_lower = u64::from(previous.is_ascii_lowercase());
    let next_digit = u64::from(next.is_ascii_digit()) << 63;
    let after_lower = masks.digit
        & ((lower << 1) | previous_lower)
        & ((lower << 2) | 0b11)
        & !(masks.word << 3)
        & ((masks.digit >> 1) | next_digit);
    (masks.digit & !word_before)
        | after_capital
        | after_lower
        | ipv6_adjacent(masks, previous, next)
}

/// Hex digits next to a `:` that has a hex digit or `:` on each side — every IPv6 address has
/// one (`db8::1`, `::1`), a JSON `"key":1` or `https://` does not. At a block edge, where the
/// byte on the far side is not in the masks, any `:` counts.
#[inline(always)]
fn ipv6_adjacent(masks: BlockMasks, previous: u8, next: u8) -> u64 {
    let hex_or_colon = masks.hex | masks.colon;
    let colon = masks.colon
        & ((hex_or_colon << 1) | u64::from(previous.is_ascii_hexdigit() || previous == b':'))
        & ((hex_or_colon >> 1) | (u64::from(next.is_ascii_hexdigit() || next == b':') << 63));
    let colon_before = (colon << 1) | u64::from(previous == b':');
    let colon_after = (colon >> 1) | (u64::from(next == b':') << 63);
    masks.hex & (colon_before | colon_after)
}

/// Walks `input` once: digit candidates go to the digit detectors, keys and key terminators
/// to `keys` (findings into `out`). Uses AVX2 when the CPU has it. Returns whether `input`
/// spells a digit or `@` that the fold reads (`fold::spells_digit_or_at`).
pub(crate) fn scan_blocks(
    input: &[u8],
    detectors: DigitDetectors,
    terminators: Terminators,
    keys: &mut impl KeyVisitor,
    out: &mut Vec<RawFinding>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked above).
            unsafe { scan_blocks_avx2(input, detectors, terminators, keys, out) }
        } else {
            scan_blocks_with(input, detectors, terminators, keys, out, block_masks_sse2)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    scan_blocks_with(
        input,
        detectors,
        terminators,
        keys,
        out,
        block_masks_portable,
    );
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_blocks_avx2(
    input: &[u8],
    detectors: DigitDetectors,
    terminators: Terminators,
    keys: &mut impl KeyVisitor,
    out: &mut Vec<RawFinding>,
) -> bool {
    // SAFETY: this function only runs on a CPU with AVX2.
    scan_blocks_with(input, detectors, terminators, keys, out, |block| unsafe {
        block_masks_avx2(block)
    })
}

#[inline(always)]
fn scan_blocks_with(
    input: &[u8],
    detectors: DigitDetectors,
    terminators: Terminators,
    keys: &mut impl KeyVisitor,
    out: &mut Vec<RawFinding>,
    block_masks: impl Fn(&[u8; 64]) -> BlockMasks,
) -> bool {
    let with_digits = detectors.any();
    let mut fold = false;
    let mut digit_state = digits::DigitState::default();
    let mut padded = [0u8; 64];
    let mut block_start = 0;
    while block_start < input.len() {
        let block: &[u8; 64] = match input.get(block_start..block_start + 64) {
            Some(full) => full.try_into().expect("64 bytes"),
            None => {
                let tail = &input[block_start..];
                padded[..tail.len()].copy_from_slice(tail);
                padded[tail.len()..].fill(0);
                &padded
            }
        };
        let masks = block_masks(block);
        if masks.fold != 0 && !fold {
            fold = fold::spells_digit_or_at_any(input, block_start, masks.fold);
        }
        let previous = if block_start > 0 {
            input[block_start - 1]
        } else {
            b' '
        };
        if with_digits {
            let next = input.get(block_start + 64).copied().unwrap_or(b' ');
            let mut bits = digit_candidates(masks, previous, next);
            let near_colon = ipv6_adjacent(masks, previous, next);
            while bits != 0 {
                let offset = bits.trailing_zeros();
                bits &= bits - 1;
                let at = block_start + offset as usize;
                if at < digit_state.resume {
                    continue;
                }
                let bit = 1u64 << offset;
                let touches_colon = near_colon & bit != 0;
                if !touches_colon && masks.digit & bit != 0 {
                    // The digit run, from the mask when it ends inside the block.
                    let run = (!(masks.digit >> offset)).trailing_zeros();
                    let run_end = at + run as usize;
                    if offset + run < 64
                        && run_end < input.len()
                        && digits::is_lone_short_number(input, at, run_end)
                    {
                        digit_state.resume = run_end;
                        continue;
                    }
                }
                digits::examine(input, at, touches_colon, detectors, &mut digit_state, out);
            }
        }
        let (mut quoted, mut others) = match terminators {
            Terminators::None => (0, 0),
            Terminators::Equals => (0, masks.equals),
            Terminators::ColonAndEquals => {
                let quoted = masks.colon & ((masks.quote << 1) | u64::from(previous == b'"'));
                (quoted, (masks.colon & !quoted) | masks.equals)
            }
        };
        while quoted != 0 {
            let at = block_start + quoted.trailing_zeros() as usize;
            quoted &= quoted - 1;
            keys.quoted_key(at - 1, out);
        }
        while others != 0 {
            let at = block_start + others.trailing_zeros() as usize;
            others &= others - 1;
            keys.terminator(at, out);
        }
        block_start += 64;
    }
    fold
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoKeys;

    impl KeyVisitor for NoKeys {
        fn quoted_key(&mut self, _: usize, _: &mut Vec<RawFinding>) {}
        fn terminator(&mut self, _: usize, _: &mut Vec<RawFinding>) {}
    }

    #[test]
    fn the_block_pass_sees_what_the_fold_reads_wherever_it_stands() {
        let detectors = DigitDetectors {
            card: Some(0),
            ..DigitDetectors::default()
        };
        // A full-width digit or `@`, a reference to one; a full-width comma, a tab, `#` and
        // `&#` alone, an escaped `&`: none.
        let spellings: [(&[u8], bool); 8] = [
            ("\u{FF14}".as_bytes(), true),
            ("\u{FF20}".as_bytes(), true),
            (b"&#52;", true),
            (b"&#x40;", true),
            ("\u{FF0C}".as_bytes(), false),
            (b"&#9;", false),
            (b"# &#", false),
            (b"&amp;#52;", false),
        ];
        for (spelling, spelled) in spellings {
            for offset in 0..140 {
                let mut input = vec![b'a'; offset];
                input.extend_from_slice(spelling);
                input.extend_from_slice(&vec![b' '; offset % 7]);
                let seen = scan_blocks(
                    &input,
                    detectors,
                    Terminators::ColonAndEquals,
                    &mut NoKeys,
                    &mut Vec::new(),
                );
                assert_eq!(seen, fold::spells_digit_or_at(&input), "{input:?}");
                assert_eq!(seen, spelled);
            }
        }
    }

    #[test]
    fn simd_masks_match_the_scalar_definition() {
        let mut block = [0u8; 64];
        for seed in 0..256u32 {
            for (index, byte) in block.iter_mut().enumerate() {
                *byte = ((index as u32 * 37 + seed * 101 + seed / 7) % 256) as u8;
            }
            #[cfg(not(target_arch = "x86_64"))]
            assert_eq!(block_masks_portable(&block), block_masks_scalar(&block));
            #[cfg(target_arch = "x86_64")]
            {
                assert_eq!(block_masks_sse2(&block), block_masks_scalar(&block));
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked above).
                    let avx2 = unsafe { block_masks_avx2(&block) };
                    assert_eq!(avx2, block_masks_scalar(&block));
                }
            }
        }
    }
}
