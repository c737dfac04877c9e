//! A labelled corpus of API payloads for measuring the scanner (and other scanners).
//!
//! Deterministic: the same seed gives the same bytes. Families mirror what flows through an
//! egress gateway — customers, charges, messages (JSON and form-encoded), chat completions, CRM
//! contacts, logs (text and NDJSON) — and carry hard negatives next to the positives:
//! Luhn-invalid 16-digit numbers, order ids, UUIDs, hex hashes, base64 blobs, timestamps,
//! version strings, prices, public certificates, publishable keys, invalid IBANs and SSNs,
//! high-entropy values under ordinary keys and ordinary values under secret-like keys.
//! Every sample is ASCII, so byte offsets equal character offsets.

#![allow(dead_code)]

/// A labelled value: its class and byte range in the sample body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub class: &'static str,
    pub start: usize,
    pub end: usize,
}

/// How the body is encoded (mirrors the scanner's content-type hint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Json,
    Form,
    Text,
}

impl Syntax {
    pub fn name(self) -> &'static str {
        match self {
            Syntax::Json => "json",
            Syntax::Form => "form",
            Syntax::Text => "text",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub family: &'static str,
    pub syntax: Syntax,
    pub body: String,
    pub labels: Vec<Label>,
}

pub const FAMILIES: [&str; 8] = [
    "customers",
    "charges",
    "messages",
    "messages_form",
    "chat_completions",
    "crm_contacts",
    "logs_text",
    "logs_ndjson",
];

/// The families whose bodies are JSON.
pub const JSON_FAMILIES: [&str; 6] = [
    "customers",
    "charges",
    "messages",
    "chat_completions",
    "crm_contacts",
    "logs_ndjson",
];

/// `count` samples cycling through the families, from `seed`.
pub fn generate(seed: u64, count: usize) -> Vec<Sample> {
    let rng = Rng::new(seed);
    (0..count)
        .map(|index| sample(&rng, FAMILIES[index % FAMILIES.len()]))
        .collect()
}

pub fn sample(rng: &Rng, family: &'static str) -> Sample {
    let mut w = Writer::new();
    let syntax = match family {
        "customers" => {
            customers(rng, &mut w);
            Syntax::Json
        }
        "charges" => {
            charges(rng, &mut w);
            Syntax::Json
        }
        "messages" => {
            messages(rng, &mut w);
            Syntax::Json
        }
        "messages_form" => {
            messages_form(rng, &mut w);
            Syntax::Form
        }
        "chat_completions" => {
            chat_completion(rng, &mut w);
            Syntax::Json
        }
        "crm_contacts" => {
            crm_contacts(rng, &mut w);
            Syntax::Json
        }
        "logs_text" => {
            logs_text(rng, &mut w);
            Syntax::Text
        }
        "logs_ndjson" => {
            logs_ndjson(rng, &mut w);
            Syntax::Json
        }
        other => panic!("unknown family {other}"),
    };
    debug_assert!(w.out.is_ascii());
    Sample {
        family,
        syntax,
        body: w.out,
        labels: w.labels,
    }
}

// ---- deterministic randomness ------------------------------------------------------------------

pub struct Rng(std::cell::Cell<u64>);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(std::cell::Cell::new(seed ^ 0x9E37_79B9_7F4A_7C15))
    }
    pub fn next_u64(&self) -> u64 {
        self.0.set(self.0.get().wrapping_add(0x9E37_79B9_7F4A_7C15));
        let mut z = self.0.get();
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn range(&self, low: u64, high_inclusive: u64) -> u64 {
        low + self.below(high_inclusive - low + 1)
    }
    pub fn chance(&self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T: ?Sized>(&self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len() as u64) as usize]
    }
    pub fn chars_from(&self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len() as u64) as usize] as char)
            .collect()
    }
    pub fn digits(&self, len: usize) -> String {
        self.chars_from(b"0123456789", len)
    }
    pub fn alnum(&self, len: usize) -> String {
        self.chars_from(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            len,
        )
    }
    pub fn lower_alnum(&self, len: usize) -> String {
        self.chars_from(b"abcdefghijklmnopqrstuvwxyz0123456789", len)
    }
    pub fn hex(&self, len: usize) -> String {
        self.chars_from(b"0123456789abcdef", len)
    }
    pub fn bytes(&self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

// ---- a JSON writer that records label offsets --------------------------------------------------

pub struct Writer {
    pub out: String,
    pub labels: Vec<Label>,
    first: Vec<bool>,
    after_key: bool,
}

/// A piece of a string value: plain text, or a labelled value.
pub enum Part {
    Plain(String),
    Labelled(&'static str, String),
}

fn plain(text: impl Into<String>) -> Part {
    Part::Plain(text.into())
}

fn labelled(class: &'static str, text: impl Into<String>) -> Part {
    Part::Labelled(class, text.into())
}

impl Writer {
    fn new() -> Writer {
        Writer {
            out: String::new(),
            labels: Vec::new(),
            first: Vec::new(),
            after_key: false,
        }
    }
    fn separator(&mut self) {
        if self.after_key {
            self.after_key = false;
            return;
        }
        if let Some(first) = self.first.last_mut() {
            if !*first {
                self.out.push(',');
            }
            *first = false;
        }
    }
    fn open_object(&mut self) {
        self.separator();
        self.out.push('{');
        self.first.push(true);
    }
    fn close_object(&mut self) {
        self.out.push('}');
        self.first.pop();
    }
    fn open_array(&mut self) {
        self.separator();
        self.out.push('[');
        self.first.push(true);
    }
    fn close_array(&mut self) {
        self.out.push(']');
        self.first.pop();
    }
    fn key(&mut self, key: &str) {
        self.separator();
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
        self.after_key = true;
    }
    fn raw(&mut self, text: &str) {
        self.out.push_str(text);
    }
    fn label(&mut self, class: &'static str, text: &str) {
        let start = self.out.len();
        self.out.push_str(text);
        self.labels.push(Label {
            class,
            start,
            end: self.out.len(),
        });
    }
    fn parts(&mut self, parts: Vec<Part>) {
        for part in parts {
            match part {
                Part::Plain(text) => self.raw(&text),
                Part::Labelled(class, text) => self.label(class, &text),
            }
        }
    }
    fn string(&mut self, value: &str) {
        self.separator();
        self.out.push('"');
        self.out.push_str(value);
        self.out.push('"');
    }
    fn string_parts(&mut self, parts: Vec<Part>) {
        self.separator();
        self.out.push('"');
        self.parts(parts);
        self.out.push('"');
    }
    fn number(&mut self, value: &str) {
        self.separator();
        self.out.push_str(value);
    }
    fn field(&mut self, key: &str, value: &str) {
        self.key(key);
        self.string(value);
    }
    fn field_labelled(&mut self, key: &str, class: &'static str, value: &str) {
        self.key(key);
        self.string_parts(vec![labelled(class, value)]);
    }
    fn field_parts(&mut self, key: &str, parts: Vec<Part>) {
        self.key(key);
        self.string_parts(parts);
    }
    fn field_number(&mut self, key: &str, value: &str) {
        self.key(key);
        self.number(value);
    }
}

// ---- positive values ---------------------------------------------------------------------------

const FIRST: [&str; 16] = [
    "john", "jane", "maria", "wei", "ahmed", "olga", "liam", "sofia", "kenji", "amara", "lucas",
    "noor", "ivan", "chloe", "diego", "priya",
];
const LAST: [&str; 16] = [
    "smith", "doe", "garcia", "chen", "hassan", "ivanova", "murphy", "rossi", "tanaka", "okafor",
    "silva", "khan", "petrov", "martin", "lopez", "patel",
];
const DOMAINS: [&str; 10] = [
    "example.com",
    "mail.example.org",
    "acme.io",
    "corp.example.co.uk",
    "shop.example.de",
    "gmail.com",
    "outlook.com",
    "startup.dev",
    "example.fr",
    "uni.example.edu",
];

pub fn email(rng: &Rng) -> String {
    let first = rng.pick(&FIRST);
    let last = rng.pick(&LAST);
    let domain = rng.pick(&DOMAINS);
    match rng.below(5) {
        0 => format!("{first}.{last}@{domain}"),
        1 => format!("{first}{}@{domain}", rng.range(1, 999)),
        2 => format!(
            "{}{last}+{}@{domain}",
            &first[..1],
            rng.pick(&["news", "billing", "test"])
        ),
        3 => format!("{first}_{last}@{domain}"),
        _ => format!("{}.{}@{domain}", first.to_uppercase(), last),
    }
}

pub fn phone(rng: &Rng) -> String {
    let area = rng.range(201, 989);
    let exchange = rng.range(200, 989);
    let line = rng.digits(4);
    match rng.below(9) {
        0 => format!("+1{area}{exchange}{line}"),
        1 => format!("+1 {area} {exchange} {line}"),
        2 => format!("+1-{area}-{exchange}-{line}"),
        3 => format!("({area}) {exchange}-{line}"),
        4 => format!("{area}-{exchange}-{line}"),
        5 => format!("{area}.{exchange}.{line}"),
        6 => format!("+44 20 {} {}", rng.range(7000, 8999), rng.digits(4)),
        7 => format!(
            "+33 {} {} {} {} {}",
            rng.range(1, 9),
            rng.range(10, 99),
            rng.range(10, 99),
            rng.range(10, 99),
            rng.range(10, 99)
        ),
        _ => format!(
            "0{} {} {}",
            rng.range(20, 29),
            rng.range(7000, 8999),
            rng.digits(4)
        ),
    }
}

fn luhn_check_digit(body: &str) -> char {
    let mut sum = 0;
    for (index, byte) in body.bytes().rev().enumerate() {
        let mut digit = u32::from(byte - b'0');
        if index % 2 == 0 {
            digit *= 2;
            if digit > 9 {
                digit -= 9;
            }
        }
        sum += digit;
    }
    char::from(b'0' + ((10 - sum % 10) % 10) as u8)
}

fn card_digits(rng: &Rng) -> String {
    let (prefix, len) = match rng.below(5) {
        0 => ("4".to_owned(), 16),
        1 => (format!("5{}", rng.range(1, 5)), 16),
        2 => (rng.pick(&["34", "37"]).to_owned(), 15),
        3 => ("6011".to_owned(), 16),
        _ => (format!("{}", rng.range(2221, 2720)), 16),
    };
    let body = format!("{prefix}{}", rng.digits(len - 1 - prefix.len()));
    let check = luhn_check_digit(&body);
    format!("{body}{check}")
}

pub fn card(rng: &Rng) -> String {
    let digits = card_digits(rng);
    if digits.len() == 15 {
        return match rng.below(2) {
            0 => digits,
            _ => format!("{} {} {}", &digits[..4], &digits[4..10], &digits[10..]),
        };
    }
    match rng.below(3) {
        0 => digits,
        1 => digits
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" "),
        _ => digits
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("-"),
    }
}

/// A 16-digit number with a card-like prefix whose Luhn check fails.
pub fn luhn_invalid_16(rng: &Rng) -> String {
    let body = format!("{}{}", rng.pick(&["4", "51", "53", "6011"]), rng.digits(15));
    let body = &body[..15];
    let valid = luhn_check_digit(body).to_digit(10).unwrap() as u64;
    let wrong = (valid + 1 + rng.below(9)) % 10;
    format!("{body}{wrong}")
}

fn mod97(text: &str) -> u32 {
    let mut remainder = 0u32;
    for byte in text.bytes() {
        if byte.is_ascii_digit() {
            remainder = (remainder * 10 + u32::from(byte - b'0')) % 97;
        } else {
            remainder = (remainder * 100 + u32::from(byte - b'A') + 10) % 97;
        }
    }
    remainder
}

fn iban_compact(rng: &Rng, valid: bool) -> String {
    let (country, bban) = match rng.below(5) {
        0 => ("DE", rng.digits(18)),
        1 => (
            "GB",
            format!(
                "{}{}",
                rng.chars_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 4),
                rng.digits(14)
            ),
        ),
        2 => (
            "FR",
            format!(
                "{}{}{}",
                rng.digits(10),
                rng.chars_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 11),
                rng.digits(2)
            ),
        ),
        3 => (
            "NL",
            format!(
                "{}{}",
                rng.chars_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 4),
                rng.digits(10)
            ),
        ),
        _ => ("ES", rng.digits(20)),
    };
    let check = 98 - mod97(&format!("{bban}{country}00"));
    let check = if valid {
        check
    } else {
        (check + 1 + rng.below(90) as u32) % 97 + 2
    };
    format!("{country}{check:02}{bban}")
}

pub fn iban(rng: &Rng) -> String {
    let compact = iban_compact(rng, true);
    if rng.chance(50) {
        compact
    } else {
        compact
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub fn ssn(rng: &Rng) -> String {
    let mut area = rng.range(1, 899);
    if area == 666 {
        area = 667;
    }
    format!(
        "{area:03}-{:02}-{:04}",
        rng.range(1, 99),
        rng.range(1, 9999)
    )
}

pub fn ipv4(rng: &Rng) -> String {
    match rng.below(3) {
        0 => format!(
            "10.{}.{}.{}",
            rng.below(256),
            rng.below(256),
            rng.range(1, 254)
        ),
        1 => format!("192.168.{}.{}", rng.below(256), rng.range(1, 254)),
        _ => format!(
            "{}.{}.{}.{}",
            rng.range(11, 223),
            rng.below(256),
            rng.below(256),
            rng.range(1, 254)
        ),
    }
}

pub fn ipv6(rng: &Rng) -> String {
    let group = |rng: &Rng| format!("{:x}", rng.range(0x1000, 0x9fff));
    match rng.below(3) {
        0 => format!("2001:db8:{}:{}::{}", group(rng), group(rng), group(rng)),
        1 => (0..8).map(|_| group(rng)).collect::<Vec<_>>().join(":"),
        _ => format!(
            "fe80::{}:{}:{}:{}",
            group(rng),
            group(rng),
            group(rng),
            group(rng)
        ),
    }
}

pub fn ip(rng: &Rng) -> String {
    if rng.chance(70) {
        ipv4(rng)
    } else {
        ipv6(rng)
    }
}

pub fn date_of_birth(rng: &Rng) -> String {
    let (year, month, day) = (rng.range(1940, 2005), rng.range(1, 12), rng.range(1, 28));
    match rng.below(3) {
        0 | 1 => format!("{year}-{month:02}-{day:02}"),
        _ => format!("{month:02}/{day:02}/{year}"),
    }
}

pub fn aws_access_key(rng: &Rng) -> String {
    format!(
        "{}{}",
        rng.pick(&["AKIA", "ASIA"]),
        rng.chars_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
    )
}

pub fn github_token(rng: &Rng) -> String {
    if rng.chance(80) {
        format!("{}_{}", rng.pick(&["ghp", "gho", "ghs"]), rng.alnum(36))
    } else {
        format!("github_pat_{}_{}", rng.alnum(22), rng.alnum(59))
    }
}

pub fn stripe_key(rng: &Rng) -> String {
    format!(
        "{}_{}_{}",
        rng.pick(&["sk", "sk", "rk"]),
        rng.pick(&["live", "test"]),
        rng.alnum(rng.range(24, 99) as usize)
    )
}

pub fn slack_token(rng: &Rng) -> String {
    format!(
        "{}-{}-{}-{}",
        rng.pick(&["xoxb", "xoxp"]),
        rng.digits(11),
        rng.digits(13),
        rng.alnum(24)
    )
}

pub fn openai_key(rng: &Rng) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    if rng.chance(70) {
        format!(
            "sk-proj-{}T3BlbkFJ{}",
            rng.chars_from(alphabet, 74),
            rng.chars_from(alphabet, 74)
        )
    } else {
        format!("sk-{}T3BlbkFJ{}", rng.alnum(20), rng.alnum(20))
    }
}

pub fn base64(bytes: &[u8], url_safe: bool) -> String {
    let alphabet: &[u8] = if url_safe {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        if !url_safe {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

pub fn jwt(rng: &Rng) -> String {
    let header = base64(br#"{"alg":"RS256","typ":"JWT"}"#, true);
    let payload = format!(
        r#"{{"sub":"{}","iat":{},"exp":{},"scope":"read write"}}"#,
        rng.alnum(12),
        1_700_000_000 + rng.below(10_000_000),
        1_800_000_000 + rng.below(10_000_000)
    );
    let payload = base64(payload.as_bytes(), true);
    let signature = base64(&rng.bytes(64), true);
    format!("{header}.{payload}.{signature}")
}

/// A PEM private key as it appears inside a JSON string (`\n` escaped).
pub fn private_key_json_escaped(rng: &Rng) -> String {
    let kind = rng.pick(&[
        "RSA PRIVATE KEY",
        "PRIVATE KEY",
        "EC PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
    ]);
    let body = base64(&rng.bytes(rng.range(120, 900) as usize), false);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {kind}-----\\n{}\\n-----END {kind}-----",
        lines.join("\\n")
    )
}

pub fn certificate_json_escaped(rng: &Rng) -> String {
    let body = base64(&rng.bytes(600), false);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\\n{}\\n-----END CERTIFICATE-----",
        lines.join("\\n")
    )
}

pub fn generic_secret(rng: &Rng) -> String {
    match rng.below(4) {
        0 => rng.chars_from(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%^*+-_=~",
            rng.range(16, 32) as usize,
        ),
        1 => rng.hex(40),
        2 => base64(&rng.bytes(30), false),
        _ => rng.alnum(rng.range(24, 48) as usize),
    }
}

// ---- hard negatives -----------------------------------------------------------------------------

pub fn uuid(rng: &Rng) -> String {
    let hex = rng.hex(32);
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..]
    )
}

fn object_id(rng: &Rng, prefix: &str) -> String {
    format!("{prefix}_{}", rng.alnum(24))
}

fn order_id(rng: &Rng) -> String {
    match rng.below(4) {
        0 => format!("ORD-{}-{:06}", rng.range(2019, 2025), rng.below(1_000_000)),
        1 => format!("order_{}", rng.digits(16)),
        2 => format!("#{}", rng.range(100_000, 999_999)),
        _ => format!("INV-{}-{}", rng.digits(4), rng.digits(4)),
    }
}

fn iso_timestamp(rng: &Rng) -> String {
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        rng.range(2019, 2025),
        rng.range(1, 12),
        rng.range(1, 28),
        rng.below(24),
        rng.below(60),
        rng.below(60)
    )
}

fn unix_seconds(rng: &Rng) -> String {
    format!("{}", 1_600_000_000 + rng.below(200_000_000))
}

fn version(rng: &Rng) -> String {
    match rng.below(3) {
        0 => format!("{}.{}.{}", rng.below(20), rng.below(40), rng.below(100)),
        1 => format!("v{}.{}.{}", rng.below(5), rng.below(30), rng.below(10)),
        _ => format!(
            "{}-{:02}-{:02}",
            rng.range(2019, 2025),
            rng.range(1, 12),
            rng.range(1, 28)
        ),
    }
}

fn price(rng: &Rng) -> String {
    match rng.below(3) {
        0 => format!("{}.{:02}", rng.range(1, 999), rng.below(100)),
        1 => format!(
            "{},{:03}.{:02}",
            rng.range(1, 99),
            rng.below(1000),
            rng.below(100)
        ),
        _ => format!("{}", rng.range(100, 999_999)),
    }
}

fn user_agent(rng: &Rng) -> String {
    format!("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.{}.{} Safari/537.36", rng.range(100, 130), rng.range(1000, 6999), rng.range(10, 200))
}

/// One hard negative value that none of the classes should match.
fn hard_negative(rng: &Rng) -> String {
    match rng.below(14) {
        0 => luhn_invalid_16(rng),
        1 => order_id(rng),
        2 => uuid(rng),
        3 => rng.hex(64),
        4 => base64(&rng.bytes(rng.range(48, 300) as usize), false),
        5 => iso_timestamp(rng),
        6 => version(rng),
        7 => price(rng),
        8 => iban_compact(rng, false),
        9 => format!(
            "{}-{:02}-{:04}",
            rng.pick(&["000", "666", "912"]),
            rng.range(1, 99),
            rng.range(1, 9999)
        ),
        10 => format!(
            "1Z{}{}",
            rng.chars_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 6),
            rng.digits(10)
        ),
        11 => format!("pk_live_{}", rng.alnum(24)),
        12 => format!(
            "{}",
            1_000_000_000_000_000u64 + rng.below(8_000_000_000_000_000)
        ),
        _ => format!("{}-{}", rng.range(10000, 99999), rng.digits(4)),
    }
}

fn negative_fields(rng: &Rng, w: &mut Writer, count: usize) {
    const KEYS: [&str; 10] = [
        "reference",
        "external_id",
        "checksum",
        "trace",
        "note_ref",
        "batch",
        "sku",
        "lookup_key",
        "etag",
        "correlation",
    ];
    for _ in 0..count {
        let key = rng.pick(&KEYS);
        let value = hard_negative(rng);
        w.field(key, &value);
    }
}

// ---- free text -----------------------------------------------------------------------------------

fn sentence(rng: &Rng) -> Vec<Part> {
    match rng.below(22) {
        0 => vec![
            plain("Hi, you can reach me at "),
            labelled("pii.email", email(rng)),
            plain(" or "),
            labelled("pii.phone", phone(rng)),
            plain(". "),
        ],
        1 => vec![
            plain("Please charge my card "),
            labelled("payment.card", card(rng)),
            plain(format!(
                " exp {:02}/{} cvc {}. ",
                rng.range(1, 12),
                rng.range(25, 31),
                rng.digits(3)
            )),
        ],
        2 => vec![
            plain("Wire the refund to IBAN "),
            labelled("payment.iban", iban(rng)),
            plain(" by Friday. "),
        ],
        3 => vec![
            plain("My SSN is "),
            labelled("pii.us_ssn", ssn(rng)),
            plain(" if you need it for the form. "),
        ],
        4 => vec![
            plain("The request came from "),
            labelled("pii.ip_address", ip(rng)),
            plain(format!(" and took {} ms. ", rng.range(3, 900))),
        ],
        5 => vec![
            plain("here is our key "),
            labelled("secret.openai_key", openai_key(rng)),
            plain(" - why does it fail? "),
        ],
        6 => vec![
            plain("deploy with "),
            labelled("secret.aws_access_key", aws_access_key(rng)),
            plain(" then push. "),
        ],
        7 => vec![
            plain("CI uses "),
            labelled("secret.github_token", github_token(rng)),
            plain(" for checkout. "),
        ],
        8 => vec![
            plain("Authorization: Bearer "),
            labelled("secret.jwt", jwt(rng)),
            plain(" "),
        ],
        9 => vec![
            plain("our bot token is "),
            labelled("secret.slack_token", slack_token(rng)),
            plain(" "),
        ],
        10 => vec![
            plain("stripe secret "),
            labelled("secret.stripe_key", stripe_key(rng)),
            plain(" leaked? "),
        ],
        11 => vec![plain(format!(
            "Order {} shipped, tracking 1Z{}{}. ",
            order_id(rng),
            rng.chars_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 6),
            rng.digits(10)
        ))],
        12 => vec![plain(format!(
            "Version {} was released on {}. ",
            version(rng),
            iso_timestamp(rng)
        ))],
        13 => vec![plain(format!(
            "Total ${} (ref {}). ",
            price(rng),
            luhn_invalid_16(rng)
        ))],
        14 => vec![plain(format!(
            "@{} can you check the build {}? ",
            rng.pick(&FIRST),
            rng.hex(12)
        ))],
        15 => vec![plain(format!(
            "request id {} and hash {}. ",
            uuid(rng),
            rng.hex(40)
        ))],
        16 => vec![plain(format!(
            "We met {} times in {} and spent {} minutes on it. ",
            rng.range(2, 40),
            rng.range(2019, 2025),
            rng.range(10, 300)
        ))],
        17 => vec![plain(format!(
            "Call extension {} or room {}-{}. ",
            rng.range(100, 9999),
            rng.range(1, 40),
            rng.range(100, 999)
        ))],
        18 => vec![plain(format!(
            "The blob {} is attached. ",
            base64(&rng.bytes(rng.range(30, 120) as usize), false)
        ))],
        19 => vec![plain(format!(
            "Invoice {} due {} for {} EUR. ",
            order_id(rng),
            version(rng),
            price(rng)
        ))],
        20 => vec![plain(format!(
            "Chrome/{}.0.{}.{} crashed at {}:{:02}. ",
            rng.range(100, 130),
            rng.range(1000, 6999),
            rng.range(10, 200),
            rng.range(1, 12),
            rng.below(60)
        ))],
        _ => vec![plain(format!(
            "Thanks, {}! The meeting is at {}:{:02} on {}. ",
            rng.pick(&FIRST),
            rng.range(1, 12),
            rng.below(60),
            rng.pick(&["Monday", "Tuesday", "Friday"])
        ))],
    }
}

fn text(rng: &Rng, sentences: usize) -> Vec<Part> {
    let mut parts = Vec::new();
    for _ in 0..sentences {
        parts.extend(sentence(rng));
        if rng.chance(15) {
            parts.push(plain("\\n"));
        }
    }
    parts
}

// ---- families ------------------------------------------------------------------------------------

fn address(rng: &Rng, w: &mut Writer) {
    w.key("address");
    w.open_object();
    w.field(
        "line1",
        &format!(
            "{} {} Street",
            rng.range(1, 9999),
            rng.pick(&["Market", "Main", "Oak", "Baker"])
        ),
    );
    w.field(
        "city",
        rng.pick(&["San Francisco", "London", "Paris", "Berlin"]),
    );
    w.field("postal_code", &format!("{}", rng.range(10000, 99999)));
    w.field("country", rng.pick(&["US", "GB", "FR", "DE"]));
    w.close_object();
}

fn customers(rng: &Rng, w: &mut Writer) {
    w.open_object();
    w.field("object", "list");
    w.key("data");
    w.open_array();
    for _ in 0..rng.range(1, 4) {
        w.open_object();
        w.field("id", &object_id(rng, "cus"));
        w.field("object", "customer");
        w.field_labelled("email", "pii.email", &email(rng));
        w.field("name", &format!("{} {}", rng.pick(&FIRST), rng.pick(&LAST)));
        let phone_value = phone(rng);
        w.field_labelled("phone", "pii.phone", &phone_value);
        address(rng, w);
        w.field_number("created", &unix_seconds(rng));
        w.field_number("balance", &format!("{}", rng.below(100_000)));
        w.field("currency", "usd");
        if rng.chance(40) {
            w.field_labelled("date_of_birth", "pii.date_of_birth", &date_of_birth(rng));
        }
        if rng.chance(25) {
            w.field_labelled("tax_id", "pii.us_ssn", &ssn(rng));
        }
        if rng.chance(30) {
            w.field_labelled("last_login_ip", "pii.ip_address", &ip(rng));
        }
        w.field("ssn_last4", &rng.digits(4));
        w.field(
            "invoice_prefix",
            &rng.chars_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 8),
        );
        w.key("metadata");
        w.open_object();
        w.field("order_id", &order_id(rng));
        w.field("crm_id", &uuid(rng));
        negative_fields(rng, w, rng.range(1, 3) as usize);
        w.close_object();
        w.close_object();
    }
    w.close_array();
    w.field("url", "/v1/customers");
    w.key("has_more");
    w.number("false");
    w.close_object();
}

fn charges(rng: &Rng, w: &mut Writer) {
    w.open_object();
    w.field("id", &object_id(rng, "ch"));
    w.field("object", "charge");
    w.field_number("amount", &format!("{}", rng.range(100, 500_000)));
    w.field_number("amount_captured", &format!("{}", rng.range(100, 500_000)));
    w.field("balance_transaction", &object_id(rng, "txn"));
    w.field_number("created", &unix_seconds(rng));
    w.field("currency", rng.pick(&["usd", "eur", "gbp"]));
    w.field("customer", &object_id(rng, "cus"));
    w.field("idempotency_key", &uuid(rng));
    w.key("payment_method_details");
    w.open_object();
    if rng.chance(70) {
        w.key("card");
        w.open_object();
        w.field("brand", rng.pick(&["visa", "mastercard", "amex"]));
        if rng.chance(50) {
            w.field_labelled("number", "payment.card", &card(rng));
        } else {
            w.field("last4", &rng.digits(4));
        }
        w.field_number("exp_month", &format!("{}", rng.range(1, 12)));
        w.field_number("exp_year", &format!("{}", rng.range(2025, 2032)));
        w.field("fingerprint", &rng.alnum(16));
        w.field("network_transaction_id", &rng.digits(15));
        w.close_object();
    } else {
        w.key("sepa_debit");
        w.open_object();
        w.field_labelled("iban", "payment.iban", &iban(rng));
        w.field("bank_code", &rng.digits(8));
        w.field("mandate", &object_id(rng, "mandate"));
        w.close_object();
    }
    w.close_object();
    w.field_labelled("receipt_email", "pii.email", &email(rng));
    w.field(
        "receipt_number",
        &format!("{}-{}", rng.digits(4), rng.digits(4)),
    );
    w.field(
        "receipt_url",
        &format!("https://pay.example.com/receipts/{}", rng.alnum(40)),
    );
    w.field("statement_descriptor", "ACME STORE");
    if rng.chance(30) {
        w.key("billing_details");
        w.open_object();
        w.field_labelled("phone", "pii.phone", &phone(rng));
        w.field_labelled("email", "pii.email", &email(rng));
        w.close_object();
    }
    w.key("metadata");
    w.open_object();
    w.field("order_number", &luhn_invalid_16(rng));
    w.field("cart_hash", &rng.hex(64));
    negative_fields(rng, w, rng.range(2, 5) as usize);
    w.close_object();
    w.key("outcome");
    w.open_object();
    w.field("network_status", "approved_by_network");
    w.field_number("risk_score", &format!("{}", rng.below(100)));
    w.close_object();
    w.close_object();
}

fn messages(rng: &Rng, w: &mut Writer) {
    w.open_object();
    w.field("sid", &format!("SM{}", rng.hex(32)));
    w.field("account_sid", &format!("AC{}", rng.hex(32)));
    w.field_labelled(
        "to",
        "pii.phone",
        &format!(
            "+1{}{}{}",
            rng.range(201, 989),
            rng.range(200, 989),
            rng.digits(4)
        ),
    );
    w.field_labelled(
        "from",
        "pii.phone",
        &format!(
            "+1{}{}{}",
            rng.range(201, 989),
            rng.range(200, 989),
            rng.digits(4)
        ),
    );
    w.field_parts("body", text(rng, rng.range(1, 3) as usize));
    w.field("status", "queued");
    w.field(
        "date_created",
        &format!(
            "Wed, {:02} May 2024 {:02}:{:02}:{:02} +0000",
            rng.range(1, 28),
            rng.below(24),
            rng.below(60),
            rng.below(60)
        ),
    );
    w.field_number("num_segments", &format!("{}", rng.range(1, 4)));
    w.field("price", &format!("-0.{:04}", rng.below(10_000)));
    w.field("api_version", "2010-04-01");
    w.field(
        "uri",
        &format!(
            "/2010-04-01/Accounts/AC{}/Messages/SM{}.json",
            rng.hex(32),
            rng.hex(32)
        ),
    );
    w.close_object();
}

fn form_escape(text: &str) -> String {
    text.replace('@', "%40")
        .replace('+', "%2B")
        .replace(' ', "+")
}

fn messages_form(rng: &Rng, w: &mut Writer) {
    w.raw("To=");
    w.label(
        "pii.phone",
        &form_escape(&format!(
            "+1{}{}{}",
            rng.range(201, 989),
            rng.range(200, 989),
            rng.digits(4)
        )),
    );
    w.raw("&From=");
    w.label(
        "pii.phone",
        &form_escape(&format!(
            "+1{}{}{}",
            rng.range(201, 989),
            rng.range(200, 989),
            rng.digits(4)
        )),
    );
    w.raw("&Body=");
    w.raw(&format!("Your+code+is+{}", rng.digits(6)));
    if rng.chance(50) {
        w.raw("&customer_email=");
        w.label("pii.email", &form_escape(&email(rng)));
    }
    if rng.chance(30) {
        w.raw("&password=");
        w.label("secret.generic", &rng.alnum(rng.range(16, 32) as usize));
    }
    if rng.chance(30) {
        w.raw("&card[number]=");
        w.label("payment.card", &card_digits(rng));
    }
    w.raw(&format!(
        "&StatusCallback=https%3A%2F%2Fhooks.example.com%2Fsms%2F{}",
        rng.alnum(12)
    ));
    w.raw(&format!("&MessagingServiceSid=MG{}", rng.hex(32)));
}

fn chat_completion(rng: &Rng, w: &mut Writer) {
    w.open_object();
    if rng.chance(50) {
        w.field(
            "model",
            rng.pick(&["gpt-4o-2024-08-06", "gpt-4o-mini", "o3-mini-2025-01-31"]),
        );
        w.key("messages");
        w.open_array();
        w.open_object();
        w.field("role", "system");
        w.field(
            "content",
            "You are a helpful support assistant. Answer briefly.",
        );
        w.close_object();
        for _ in 0..rng.range(1, 3) {
            w.open_object();
            w.field("role", rng.pick(&["user", "assistant"]));
            w.field_parts("content", text(rng, rng.range(1, 4) as usize));
            w.close_object();
        }
        w.close_array();
        w.field_number("temperature", &format!("0.{}", rng.below(10)));
        w.field_number("max_tokens", &format!("{}", rng.range(64, 4096)));
        w.field("user", &uuid(rng));
    } else {
        w.field("id", &format!("chatcmpl-{}", rng.alnum(29)));
        w.field("object", "chat.completion");
        w.field_number("created", &unix_seconds(rng));
        w.field("model", "gpt-4o-2024-08-06");
        w.key("choices");
        w.open_array();
        w.open_object();
        w.field_number("index", "0");
        w.key("message");
        w.open_object();
        w.field("role", "assistant");
        w.field_parts("content", text(rng, rng.range(1, 4) as usize));
        w.close_object();
        w.field("finish_reason", "stop");
        w.close_object();
        w.close_array();
        w.key("usage");
        w.open_object();
        w.field_number("prompt_tokens", &format!("{}", rng.range(10, 4000)));
        w.field_number("completion_tokens", &format!("{}", rng.range(10, 4000)));
        w.field_number("total_tokens", &format!("{}", rng.range(20, 8000)));
        w.close_object();
        w.field("system_fingerprint", &format!("fp_{}", rng.hex(10)));
    }
    w.close_object();
}

fn crm_contacts(rng: &Rng, w: &mut Writer) {
    w.open_object();
    w.field_number("totalSize", "1");
    w.key("records");
    w.open_array();
    for _ in 0..rng.range(1, 3) {
        w.open_object();
        w.key("attributes");
        w.open_object();
        w.field("type", "Contact");
        w.field(
            "url",
            &format!("/services/data/v60.0/sobjects/Contact/003{}", rng.alnum(15)),
        );
        w.close_object();
        w.field("Id", &format!("003{}", rng.alnum(15)));
        w.field("FirstName", rng.pick(&FIRST));
        w.field("LastName", rng.pick(&LAST));
        w.field_labelled("Email", "pii.email", &email(rng));
        w.field_labelled("Phone", "pii.phone", &phone(rng));
        if rng.chance(50) {
            // A bare national number only a key makes a phone number.
            w.field_labelled(
                "MobilePhone",
                "pii.phone",
                &format!(
                    "{}{}{}",
                    rng.range(201, 989),
                    rng.range(200, 989),
                    rng.digits(4)
                ),
            );
        }
        w.field_labelled(
            rng.pick(&["Birthdate", "birthDate", "dob"]),
            "pii.date_of_birth",
            &date_of_birth(rng),
        );
        if rng.chance(40) {
            // A bare 9-digit SSN only the key makes an SSN.
            w.field_labelled("SSN__c", "pii.us_ssn", &ssn(rng).replace('-', ""));
        }
        w.field("MailingCity", rng.pick(&["Austin", "Leeds", "Lyon"]));
        w.field(
            "LastModifiedDate",
            &iso_timestamp(rng).replace('Z', ".000+0000"),
        );
        w.field("OwnerId", &format!("005{}", rng.alnum(15)));
        w.field("LeadSource", "Web");
        w.field_number("NumberOfEmployees", &format!("{}", rng.range(1, 50_000)));
        w.field("AccountNumber", &rng.digits(rng.range(8, 12) as usize));
        if rng.chance(30) {
            w.field_parts("Description", text(rng, 2));
        }
        w.close_object();
    }
    w.close_array();
    w.key("done");
    w.number("true");
    w.close_object();
}

fn log_line_parts(rng: &Rng) -> Vec<Part> {
    match rng.below(10) {
        0 => vec![
            plain("auth ok user="),
            labelled("pii.email", email(rng)),
            plain(" ip="),
            labelled("pii.ip_address", ip(rng)),
            plain(format!(" latency_ms={}", rng.range(1, 900))),
        ],
        1 => vec![
            plain("login failed user="),
            plain(rng.pick(&FIRST).to_owned()),
            plain(" password="),
            labelled(
                "secret.generic",
                generic_secret(rng).replace(['"', '\\'], "x"),
            ),
            plain(format!(" attempts={}", rng.range(1, 5))),
        ],
        2 => vec![
            plain("config AWS_ACCESS_KEY_ID="),
            labelled("secret.aws_access_key", aws_access_key(rng)),
            plain(" AWS_SECRET_ACCESS_KEY="),
            labelled("secret.generic", base64(&rng.bytes(30), false)),
            plain(format!(" region=us-east-{}", rng.range(1, 2))),
        ],
        3 => vec![
            plain("git clone with GITHUB_TOKEN="),
            labelled("secret.github_token", github_token(rng)),
            plain(format!(" sha={}", rng.hex(40))),
        ],
        4 => vec![
            plain("webhook post slack token="),
            labelled("secret.slack_token", slack_token(rng)),
            plain(format!(" status={}", rng.pick(&["200", "429", "500"]))),
        ],
        5 => vec![plain(format!(
            "GET /v1/charges?limit={} status=200 request_id=req_{} bytes={}",
            rng.range(1, 100),
            rng.alnum(14),
            rng.range(100, 90_000)
        ))],
        6 => vec![plain(format!(
            "worker {} processed batch {} in {}.{}s version={}",
            rng.range(1, 16),
            uuid(rng),
            rng.range(0, 30),
            rng.digits(3),
            version(rng)
        ))],
        7 => vec![
            plain("client "),
            labelled("pii.ip_address", ip(rng)),
            plain(format!(" ua=\"{}\"", user_agent(rng))),
        ],
        8 => vec![
            plain("outbound sms to="),
            labelled("pii.phone", phone(rng).replace(' ', "-")),
            plain(format!(" segments={}", rng.range(1, 3))),
        ],
        _ => vec![
            plain("payment declined card="),
            labelled("payment.card", card_digits(rng)),
            plain(format!(
                " amount={} ref={}",
                price(rng),
                luhn_invalid_16(rng)
            )),
        ],
    }
}

fn logs_text(rng: &Rng, w: &mut Writer) {
    for _ in 0..rng.range(3, 10) {
        w.raw(&format!(
            "{} {} ",
            iso_timestamp(rng),
            rng.pick(&["INFO", "WARN", "ERROR", "DEBUG"])
        ));
        let parts = log_line_parts(rng);
        // Text bodies carry no JSON escapes: the quoted user agent stays as is.
        w.parts(
            parts
                .into_iter()
                .map(|part| match part {
                    Part::Plain(text) => Part::Plain(text.replace("\\\"", "\"")),
                    other => other,
                })
                .collect(),
        );
        w.raw("\n");
    }
    if rng.chance(20) {
        w.raw("-----BEGIN PRIVATE KEY-----\n");
        let body = base64(&rng.bytes(rng.range(120, 600) as usize), false);
        let start = w.out.len() - "-----BEGIN PRIVATE KEY-----\n".len();
        for line in body.as_bytes().chunks(64) {
            w.raw(std::str::from_utf8(line).unwrap());
            w.raw("\n");
        }
        w.raw("-----END PRIVATE KEY-----");
        w.labels.push(Label {
            class: "secret.private_key",
            start,
            end: w.out.len(),
        });
        w.raw("\n");
    }
}

fn logs_ndjson(rng: &Rng, w: &mut Writer) {
    for line in 0..rng.range(2, 6) {
        if line > 0 {
            w.raw("\n");
        }
        w.first.clear();
        w.after_key = false;
        w.open_object();
        w.field("ts", &iso_timestamp(rng));
        w.field("level", rng.pick(&["info", "warn", "error"]));
        w.field("service", rng.pick(&["billing", "auth", "notifier"]));
        w.field("trace_id", &rng.hex(32));
        let parts = log_line_parts(rng).into_iter().map(|part| match part {
            Part::Plain(text) => Part::Plain(text.replace('"', "\\\"")),
            other => other,
        });
        w.field_parts("msg", parts.collect());
        match rng.below(8) {
            0 => {
                w.key("credentials");
                w.open_object();
                w.field_labelled(
                    rng.pick(&[
                        "client_secret",
                        "apiKey",
                        "db_password",
                        "access_token",
                        "secretKey",
                    ]),
                    "secret.generic",
                    &generic_secret(rng),
                );
                w.field("token_type", "bearer");
                w.field_number("expires_in", "3600");
                w.close_object();
            }
            1 => w.field_labelled(
                "private_key",
                "secret.private_key",
                &private_key_json_escaped(rng),
            ),
            2 => w.field("certificate", &certificate_json_escaped(rng)),
            3 => w.field_labelled("api_key", "secret.stripe_key", &stripe_key(rng)),
            4 => w.field_labelled("authorization", "secret.jwt", &jwt(rng)),
            5 => w.field_labelled("openai_api_key", "secret.openai_key", &openai_key(rng)),
            6 => {
                w.field("password_changed_at", &iso_timestamp(rng));
                w.field("secret_version", &format!("{}", rng.range(1, 9)));
                w.field_number("password_reset_required", "false");
            }
            _ => {
                w.field(
                    "request_body",
                    &format!(
                        "{{\\\"user\\\":\\\"{}\\\",\\\"ok\\\":true}}",
                        rng.pick(&FIRST)
                    ),
                );
            }
        }
        w.field_number("duration_ms", &format!("{}", rng.range(1, 5000)));
        w.close_object();
    }
}
