//! Checks run on candidates: checksums, ranges, entropy. Pure functions over bytes.

use crate::rules::Validator;

pub(crate) fn validate(validator: Validator, candidate: &[u8]) -> bool {
    match validator {
        Validator::None => true,
        Validator::Luhn => luhn_valid(candidate),
        Validator::Iban => iban_valid(candidate),
        Validator::UsSsn => us_ssn_valid(candidate),
        Validator::Phone => phone_digits_plausible(candidate),
        Validator::IpAddress => ip_address_valid(candidate),
        Validator::Date => date_plausible(candidate),
    }
}

/// Luhn over the digits of `candidate` (other bytes ignored); needs 12 to 19 digits.
pub(crate) fn luhn_valid(candidate: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut count = 0usize;
    for &byte in candidate.iter().rev() {
        if !byte.is_ascii_digit() {
            continue;
        }
        let mut digit = u32::from(byte - b'0');
        if count % 2 == 1 {
            digit *= 2;
            if digit > 9 {
                digit -= 9;
            }
        }
        sum += digit;
        count += 1;
    }
    (12..=19).contains(&count) && sum.is_multiple_of(10)
}

/// Issuer prefixes of the major card networks (Visa, Mastercard, Amex, Discover, JCB, Diners,
/// UnionPay, Maestro). Random 16-digit ids starting with other digits are not cards.
pub(crate) fn card_issuer_known(digits: &[u8]) -> bool {
    let prefix = |n: usize| -> u32 {
        digits
            .iter()
            .take(n)
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'))
    };
    let len = digits.len();
    match digits.first() {
        Some(b'4') => matches!(len, 13 | 16 | 19),
        Some(b'5') => {
            (51..=55).contains(&prefix(2)) && len == 16
                || matches!(prefix(2), 50 | 56..=58) && len >= 12
        }
        Some(b'2') => (2221..=2720).contains(&prefix(4)) && len == 16,
        Some(b'3') => {
            matches!(prefix(2), 34 | 37) && len == 15
                || (3528..=3589).contains(&prefix(4)) && (16..=19).contains(&len)
                || (matches!(prefix(2), 36 | 38 | 39) || (300..=305).contains(&prefix(3)))
                    && (14..=19).contains(&len)
        }
        Some(b'6') => {
            (prefix(4) == 6011
                || prefix(2) == 65
                || (644..=649).contains(&prefix(3))
                || prefix(2) == 62
                || prefix(2) == 67)
                && (16..=19).contains(&len)
        }
        _ => false,
    }
}

/// IBAN registry lengths per country code.
fn iban_length(country: &[u8]) -> Option<usize> {
    let len = match country {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BR" => 29,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NL" => 18,
        b"NO" => 15,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"SA" => 24,
        b"SC" => 31,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        _ => return None,
    };
    Some(len)
}

pub(crate) fn iban_expected_length(country: &[u8]) -> Option<usize> {
    iban_length(country)
}

/// mod-97 over an IBAN (spaces ignored), with the country's registered length.
pub(crate) fn iban_valid(candidate: &[u8]) -> bool {
    let mut compact = [0u8; 34];
    let mut len = 0;
    for &byte in candidate {
        if byte == b' ' {
            continue;
        }
        if len == compact.len() || !byte.is_ascii_alphanumeric() {
            return false;
        }
        compact[len] = byte.to_ascii_uppercase();
        len += 1;
    }
    if len < 15 || iban_length(&compact[..2]) != Some(len) {
        return false;
    }
    if !compact[2].is_ascii_digit() || !compact[3].is_ascii_digit() {
        return false;
    }
    let rearranged = compact[4..len].iter().chain(compact[..4].iter());
    let mut remainder = 0u32;
    for &byte in rearranged {
        if byte.is_ascii_digit() {
            remainder = (remainder * 10 + u32::from(byte - b'0')) % 97;
        } else {
            let value = u32::from(byte - b'A') + 10;
            remainder = (remainder * 100 + value) % 97;
        }
    }
    remainder == 1
}

/// `AAA-GG-SSSS` or 9 digits with valid ranges.
pub(crate) fn us_ssn_valid(candidate: &[u8]) -> bool {
    let mut digits = [0u32; 9];
    let mut count = 0;
    for &byte in candidate {
        if byte.is_ascii_digit() {
            if count == 9 {
                return false;
            }
            digits[count] = u32::from(byte - b'0');
            count += 1;
        } else if byte != b'-' && byte != b' ' {
            return false;
        }
    }
    if count != 9 {
        return false;
    }
    let area = digits[0] * 100 + digits[1] * 10 + digits[2];
    let group = digits[3] * 10 + digits[4];
    let serial = digits[5] * 1000 + digits[6] * 100 + digits[7] * 10 + digits[8];
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

pub(crate) fn phone_digits_plausible(candidate: &[u8]) -> bool {
    let digits: Vec<u8> = candidate
        .iter()
        .copied()
        .filter(u8::is_ascii_digit)
        .collect();
    (7..=15).contains(&digits.len()) && digits.iter().any(|&d| d != digits[0])
}

pub(crate) fn ip_address_valid(candidate: &[u8]) -> bool {
    std::str::from_utf8(candidate)
        .ok()
        .and_then(|text| text.parse::<std::net::IpAddr>().ok())
        .is_some()
}

pub(crate) fn date_plausible(candidate: &[u8]) -> bool {
    let groups: Vec<u32> = candidate
        .split(|byte| !byte.is_ascii_digit())
        .filter(|group| !group.is_empty())
        .map(|group| {
            group.iter().fold(0u32, |acc, &d| {
                acc.saturating_mul(10).saturating_add(u32::from(d - b'0'))
            })
        })
        .collect();
    let (year, month, day) = match groups.as_slice() {
        [year, month, day, ..] if *year >= 1000 => (*year, *month, *day),
        [day_or_month, month_or_day, year, ..] => {
            // d/m/Y or m/d/Y: accept if either reading is a date.
            let (a, b) = (*day_or_month, *month_or_day);
            let month = if (1..=12).contains(&a) { a } else { b };
            let day = if month == a { b } else { a };
            (*year, month, day)
        }
        [compact] if candidate.len() == 8 => (compact / 10_000, compact / 100 % 100, compact % 100),
        _ => return false,
    };
    (1900..=2100).contains(&year) && (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// Shannon entropy in bits per byte.
///
/// The terms `-p·log2(p)` are added in byte order, as a plain loop over the 256 counts would
/// add them, so the result is the same to the last bit; but each distinct count's term is
/// computed once (most bytes of a token occur once or twice), and only bytes that occur are
/// visited.
pub(crate) fn shannon_entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    let mut present = [0u64; 4];
    for &byte in bytes {
        counts[usize::from(byte)] += 1;
        present[usize::from(byte / 64)] |= 1u64 << (byte % 64);
    }
    let total = bytes.len() as f64;
    let term = |count: u32| {
        let p = f64::from(count) / total;
        -p * p.log2()
    };
    // Terms of counts 1..=16, computed on first use.
    let mut small_terms = [f64::NAN; 17];
    let mut entropy = 0.0;
    for (word_index, &word) in present.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let byte = word_index * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let count = counts[byte];
            entropy += match small_terms.get_mut(count as usize) {
                Some(cached) => {
                    if cached.is_nan() {
                        *cached = term(count);
                    }
                    *cached
                }
                None => term(count),
            };
        }
    }
    entropy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert!(luhn_valid(b"4111 1111 1111 1111"));
        assert!(!luhn_valid(b"4111 1111 1111 1112"));
        assert!(iban_valid(b"DE89 3704 0044 0532 0130 00"));
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(!iban_valid(b"GB82WEST12345698765433"));
        assert!(us_ssn_valid(b"123-45-6789"));
        assert!(!us_ssn_valid(b"666-45-6789"));
        assert!(!us_ssn_valid(b"123-00-6789"));
        assert!(date_plausible(b"1985-04-12"));
        assert!(date_plausible(b"12/31/1990"));
        assert!(!date_plausible(b"1985-13-12"));
        assert!(shannon_entropy(b"aaaaaaaa") < 0.1);
        assert!(shannon_entropy(b"q8Z!x2Lp#v9T") > 3.5);
        let plain = |bytes: &[u8]| -> f64 {
            let mut counts = [0u32; 256];
            for &byte in bytes {
                counts[usize::from(byte)] += 1;
            }
            let total = bytes.len() as f64;
            counts
                .iter()
                .filter(|&&count| count > 0)
                .map(|&count| {
                    let p = f64::from(count) / total;
                    -p * p.log2()
                })
                .sum()
        };
        let mut state = 7u64;
        for len in 1..400usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 59) as u8 * (1 + (len % 7) as u8)
                })
                .collect();
            assert_eq!(shannon_entropy(&bytes), plain(&bytes));
        }
    }
}
