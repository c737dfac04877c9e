//! Behaviour baselines over gateway call events, and the alerts they raise.
//!
//! [`Engine::observe`] takes one [`DetectEvent`] (a line of `events.jsonl`) and the current time,
//! and returns the [`Alert`]s it caused. It is sans-IO: no clock, no files; state moves in and
//! out only through [`Engine::snapshot`] and [`Engine::restore`].
//!
//! ## Keys and metrics
//! Every event updates up to three keys: the integration, (integration, caller) and
//! (integration, caller, operation). Each key keeps per-minute buckets of: request count,
//! request bytes, response bytes, 4xx and 5xx ratios, vendor 401/403 count, caller
//! authentication failures (401 `caller_unauthenticated`, and the forward proxy's 407
//! `proxy_auth_required`, attributed to the integration named in the event, or `(none)`), and
//! mean latency.
//!
//! A closed bucket updates the key's baseline for each metric: an exponentially weighted level
//! and mean absolute deviation (re-learning a new normal within about
//! [`EngineConfig::relearn_minutes`]) and, for counts, byte volumes and latency, a seasonal
//! profile by hour of day × weekday/weekend (learned from minutes with activity, capped so a
//! spike is not learned as normal). The expected value is the larger of the level and the
//! seasonal value, so the daily ramp does not alert and a benign level shift stops alerting
//! once the level has caught up. The open bucket is checked on every event, so a spike alerts
//! within seconds, not at the end of the minute.
//!
//! Two checks look further back: error ratios and vendor authentication failures over the last
//! 5, 10 and 30 minutes against the key's long-run rates (keys with a few calls a minute), and,
//! on caller and operation keys, the last hour's bytes against its calls times the usual bytes
//! per call (a slow leak under the per-minute floor). docs/DETECTION.md has the rules.
//!
//! Novelty: a caller new to an integration (not to `(none)`), an operation or source address new
//! to a caller, and an hour of the week the caller rarely uses — each only after a warm-up.
//!
//! ## Bounded memory
//! At most [`EngineConfig::max_keys`] keys; keys idle longer than
//! [`EngineConfig::idle_eviction_seconds`] are evicted, and past the cap the least recently
//! seen are evicted first. Novelty sets are capped per key. Seasonal profiles are allocated
//! only for keys that have lived through their warm-up.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use crate::timestamp::{format_rfc3339_millis, hour_of_week, parse_rfc3339_millis};

/// The fields of a gateway call event (docs/EVENTS.md) the engine reads. Deserializes straight
/// from an `events.jsonl` line; unknown fields are ignored, since the schema only grows.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct DetectEvent {
    /// Start of the call, unix milliseconds (`time` in the event, RFC 3339).
    #[serde(
        rename = "time",
        deserialize_with = "deserialize_rfc3339_millis",
        serialize_with = "serialize_rfc3339_millis"
    )]
    pub time_unix_ms: i64,
    #[serde(default)]
    pub integration: Option<Arc<str>>,
    #[serde(default)]
    pub caller: Option<Arc<str>>,
    #[serde(default)]
    pub operation: Option<Arc<str>>,
    pub status: u16,
    #[serde(default)]
    pub request_bytes: u64,
    #[serde(default)]
    pub response_bytes: u64,
    #[serde(default)]
    pub duration_ms: f64,
    #[serde(default)]
    pub source_ip: Option<Arc<str>>,
    #[serde(default)]
    pub decision: Option<Cow<'static, str>>,
    #[serde(default)]
    pub reason: Option<Cow<'static, str>>,
    /// The forward proxy's destination host (`host` in the event).
    #[serde(default)]
    pub host: Option<Arc<str>>,
}

fn deserialize_rfc3339_millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    parse_rfc3339_millis(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "time `{text}` is not RFC 3339 (2026-11-28T09:15:23.266Z)"
        ))
    })
}

fn serialize_rfc3339_millis<S: serde::Serializer>(
    value: &i64,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_rfc3339_millis(*value))
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Requests per minute far above the baseline.
    RateSpike,
    /// Request bytes sent to the vendor per minute far above the baseline.
    VolumeOut,
    /// Response bytes received from the vendor per minute far above the baseline (bulk reads,
    /// exfiltration through the integration).
    VolumeIn,
    /// 4xx or 5xx ratio far above the baseline.
    ErrorSpike,
    /// The vendor answering 401/403 more than usual (revoked or rotated credential).
    VendorAuthFailures,
    /// Calls refused at the gateway for missing or unknown caller credentials.
    CallerAuthFailures,
    /// Mean latency far above the baseline.
    Latency,
    NewCaller,
    NewOperation,
    NewSource,
    /// A caller active in an hour of the week it rarely uses.
    OffHours,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateSpike => "rate_spike",
            Self::VolumeOut => "volume_out",
            Self::VolumeIn => "volume_in",
            Self::ErrorSpike => "error_spike",
            Self::VendorAuthFailures => "vendor_auth_failures",
            Self::CallerAuthFailures => "caller_auth_failures",
            Self::Latency => "latency",
            Self::NewCaller => "new_caller",
            Self::NewOperation => "new_operation",
            Self::NewSource => "new_source",
            Self::OffHours => "off_hours",
        }
    }
}

/// One alert, as written to `alerts.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// When the engine raised it (the `now` passed to [`Engine::observe`]), RFC 3339 UTC.
    pub time: String,
    pub integration: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    pub kind: AlertKind,
    /// Severity in [0, 1]: 0.5 at the alert threshold, approaching 1 far above it.
    pub score: f64,
    /// The observed value: per-minute count, bytes, ratio or mean milliseconds; for novelty,
    /// 1 (or the hour-of-week's share of activity for `off_hours`).
    pub observed: f64,
    /// The expected value it was compared with (0 for novelty).
    pub baseline: f64,
}

/// Engine settings. Defaults suit per-minute API traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Closed buckets a key needs before its metrics may alert.
    pub warmup_minutes: u32,
    /// Time constant of the baselines: after a lasting change, the level has moved ~63 % of the
    /// way to the new normal after this many minutes.
    pub relearn_minutes: f64,
    /// How far above the baseline (in deviations) an observation must be to alert.
    pub alert_deviations: f64,
    /// And how many times the baseline.
    pub alert_ratio: f64,
    /// Counts (requests, failures, errors) alert only when the Poisson probability of seeing
    /// at least as many by chance around the baseline is below this.
    pub alert_chance_probability: f64,
    /// Least requests per minute (or failures per minute) before count alerts fire.
    pub min_alert_count: f64,
    /// Least bytes per minute before volume alerts fire.
    pub min_alert_bytes: f64,
    /// Least requests in a minute before ratio and latency alerts are considered.
    pub min_requests_for_ratio: u32,
    /// Least absolute increase of an error ratio (0.2 = 20 points) to alert.
    pub min_ratio_increase: f64,
    /// Least absolute increase of mean latency to alert, milliseconds.
    pub min_latency_increase_ms: f64,
    /// Error ratios and vendor authentication failures are also checked over this many
    /// minutes (the open one and those before it) against the key's long-run rates, so a key
    /// with a few calls a minute can alert too.
    pub window_minutes: u32,
    /// Time constant of those long-run rates, minutes.
    pub long_run_minutes: f64,
    /// Slow volume check (caller and operation keys): bytes over the last
    /// `slow_volume_window_minutes` are compared with the calls made in them times the bytes
    /// per call over the last ~`slow_volume_minutes` (the time constant of that baseline).
    pub slow_volume_window_minutes: u32,
    pub slow_volume_minutes: f64,
    /// Novelty alerts start once the integration (and, for a caller's novelties, the caller)
    /// has been seen for this long.
    pub novelty_warmup_seconds: i64,
    /// An hour of the week is "off hours" for a caller when it holds less than this share of the
    /// caller's activity, after `off_hours_min_events` events.
    pub off_hours_max_share: f64,
    pub off_hours_min_events: u64,
    /// And only when the caller averaged fewer than this many events a week in that hour and
    /// the hours either side of it (a caller quietly active every night is not off hours).
    pub off_hours_max_weekly_events: f64,
    /// And only once the caller has been seen for this long (a week: every hour of the week
    /// has had its chance).
    pub off_hours_warmup_seconds: i64,
    /// The same alert (key and kind) is not repeated within this many seconds.
    pub alert_cooldown_seconds: i64,
    /// Most keys kept; past it the least recently seen are evicted.
    pub max_keys: usize,
    /// Most hosts no integration registers that are keyed on their own (`host:<name>`, from
    /// forward-proxy calls let through to them); the calls to further hosts count under
    /// `(none)`, so a caller spraying names cannot evict the other keys' baselines.
    pub max_host_keys: usize,
    /// Most of those host keys one caller's calls may open: one caller spraying names cannot
    /// take every place and leave the hosts the other callers reach uncounted.
    pub max_host_keys_per_caller: usize,
    /// Keys idle for longer are evicted.
    pub idle_eviction_seconds: i64,
    /// Most callers, operations or source addresses remembered per key.
    pub max_novelty_entries: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            warmup_minutes: 30,
            relearn_minutes: 30.0,
            alert_deviations: 6.0,
            alert_ratio: 3.0,
            alert_chance_probability: 1e-9,
            min_alert_count: 10.0,
            min_alert_bytes: 1_000_000.0,
            min_requests_for_ratio: 10,
            min_ratio_increase: 0.2,
            min_latency_increase_ms: 200.0,
            window_minutes: 30,
            long_run_minutes: 1_440.0,
            slow_volume_window_minutes: 60,
            slow_volume_minutes: 1_440.0,
            novelty_warmup_seconds: 86_400,
            off_hours_max_share: 0.002,
            off_hours_min_events: 5_000,
            off_hours_max_weekly_events: 10.0,
            off_hours_warmup_seconds: 7 * 86_400,
            alert_cooldown_seconds: 600,
            max_keys: 50_000,
            max_host_keys: 1_000,
            max_host_keys_per_caller: 100,
            idle_eviction_seconds: 7 * 86_400,
            max_novelty_entries: 1_024,
        }
    }
}

const METRICS: usize = 8;
const RATE: usize = 0;
const REQUEST_BYTES: usize = 1;
const RESPONSE_BYTES: usize = 2;
const RATIO_4XX: usize = 3;
const RATIO_5XX: usize = 4;
const VENDOR_AUTH: usize = 5;
const CALLER_AUTH: usize = 6;
const LATENCY: usize = 7;
const SEASONAL_SLOTS: usize = 48;
/// Minutes of data a seasonal slot needs before it is used.
const SEASONAL_MIN_MINUTES: u16 = 30;
const MINUTE_MS: i64 = 60_000;
/// Empty minutes replayed one by one into a baseline after a gap; longer gaps decay in closed
/// form.
const MAX_GAP_FILL_MINUTES: i64 = 1_440;

/// The gateway's refusals recorded with `decision: allow` (past authorization) that are the
/// caller's doing, or the gateway's own limits, not the vendor's: like a `deny`, they count on
/// the caller's keys only, not on the integration's (docs/EVENTS.md).
const CALLER_REFUSALS: &[&str] = &[
    "rate_limited",
    "too_many_concurrent_calls",
    "concurrency_limited",
    "request_decoders_busy",
    // 503: the gateway's own bound on name lookups in flight was full (as for
    // `concurrency_limited` and `request_decoders_busy`, a gateway limit: no vendor was asked,
    // and its 5xx are not the vendor's outage).
    "resolver_busy",
    // 503: the gateway's memory bound on bodies read to be scanned (no vendor was asked); 502:
    // the same bound, and that on `br` answers read for the injected credential, withholding
    // an answer the vendor gave (the vendor is not at fault).
    "scanners_busy",
    // 503: the same bound on OAuth2 integrations' bodies, read whole to be replayed.
    "request_bodies_busy",
    "response_scanners_busy",
    "response_decoders_busy",
    // 502: the target dialled is one of Postern's own listeners: the caller asked for Postern
    // itself, nothing reached a vendor.
    "upstream_is_postern",
    "data_class_not_approved",
    "caller_token_in_url",
    "caller_token_in_body",
    // 400: the caller's own vendor token in a bearer integration's form body.
    "vendor_credential_in_body",
    // 400: the caller asked the vendor to run another method than the one granted.
    "method_override_refused",
    "request_too_large",
    "request_body_undecodable",
    "unsupported_content_encoding",
    "request_body_error",
    "request_body_timeout",
];

/// The gateway's refusals for missing, unknown or no longer valid caller credentials: the
/// listener's 401 and the forward proxy's 407 (`Proxy-Authorization`), counted as caller
/// authentication failures, not in the 4xx ratio (docs/EVENTS.md).
const CALLER_AUTH_FAILURES: &[&str] = &["caller_unauthenticated", "proxy_auth_required"];

/// The metrics whose alert is raised again, whatever the cooldown, when the value grows to
/// [`ESCALATION`] times the one it was raised on: a small decoy (1 MB sent) must not stand for
/// the gigabytes that follow it within the minute or the cooldown.
const ESCALATING: u8 = (1 << RATE) | (1 << REQUEST_BYTES) | (1 << RESPONSE_BYTES);

/// How much larger than the value an alert was raised on a value must grow to alert again.
const ESCALATION: f64 = 10.0;

fn metric_kind(metric: usize) -> AlertKind {
    match metric {
        RATE => AlertKind::RateSpike,
        REQUEST_BYTES => AlertKind::VolumeOut,
        RESPONSE_BYTES => AlertKind::VolumeIn,
        RATIO_4XX | RATIO_5XX => AlertKind::ErrorSpike,
        VENDOR_AUTH => AlertKind::VendorAuthFailures,
        CALLER_AUTH => AlertKind::CallerAuthFailures,
        _ => {
            debug_assert_eq!(metric, LATENCY);
            AlertKind::Latency
        }
    }
}

/// Count-like metrics: empty minutes count as 0 and they have a seasonal profile.
fn is_count_metric(metric: usize) -> bool {
    matches!(
        metric,
        RATE | REQUEST_BYTES | RESPONSE_BYTES | VENDOR_AUTH | CALLER_AUTH
    )
}

/// Hour of day × weekday/weekend slot of a unix millisecond time.
fn seasonal_slot(unix_ms: i64) -> usize {
    let hour_of_week = hour_of_week(unix_ms.div_euclid(1_000));
    let weekend = usize::from(hour_of_week >= 5 * 24);
    weekend * 24 + hour_of_week % 24
}

/// The seasonal profile of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Seasonal {
    mean: Vec<f32>,
    minutes: Vec<u16>,
    /// The hour (unix hour) being learned, and its slot's mean when that hour began: what a
    /// minute teaches is capped relative to it, so one spike cannot compound within the hour.
    #[serde(default)]
    visit_hour: i64,
    #[serde(default)]
    visit_mean: f32,
}

/// Exponentially weighted level and deviation of one metric, with an optional seasonal profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Baseline {
    level: f64,
    deviation: f64,
    updates: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seasonal: Option<Box<Seasonal>>,
}

impl Baseline {
    /// Learns the value of closed minute `minute` (into the seasonal profile too when
    /// `keep_seasonal`). What a seasonal slot learns is capped at `seasonal_cap` times the
    /// slot's mean when the hour began: a spike is not learned as the slot's normal, while a
    /// pattern that recurs (a nightly batch) is learned within a few days.
    fn update(
        &mut self,
        value: f64,
        minute: i64,
        alpha: f64,
        keep_seasonal: bool,
        seasonal_cap: f64,
    ) {
        let slot = seasonal_slot(minute * MINUTE_MS);
        if self.updates == 0 {
            self.level = value;
        } else {
            let error = value - self.level;
            self.level += alpha * error;
            self.deviation += alpha * (error.abs() - self.deviation);
        }
        self.updates = self.updates.saturating_add(1);
        // The seasonal profile learns the slot's minutes with activity: a batch job busy for
        // ten minutes of the hour is expected at its busy rate, not at a sixth of it.
        if keep_seasonal && value > 0.0 {
            let seasonal = self.seasonal.get_or_insert_with(|| {
                Box::new(Seasonal {
                    mean: vec![0.0; SEASONAL_SLOTS],
                    minutes: vec![0; SEASONAL_SLOTS],
                    visit_hour: i64::MIN,
                    visit_mean: 0.0,
                })
            });
            let hour = minute.div_euclid(60);
            if seasonal.visit_hour != hour {
                seasonal.visit_hour = hour;
                seasonal.visit_mean = seasonal.mean[slot];
            }
            let minutes = &mut seasonal.minutes[slot];
            let mean = &mut seasonal.mean[slot];
            // A slot's first hour has no reference yet: capped relative to its mean so far.
            let reference = if seasonal.visit_mean > 0.0 {
                f64::from(seasonal.visit_mean)
            } else {
                f64::from(*mean)
            };
            let value = if *minutes > 0 {
                value.min(seasonal_cap * reference)
            } else {
                value
            };
            *minutes = minutes.saturating_add(1);
            // Running mean for the first week of a slot's minutes, then exponential.
            let weight = 1.0 / f64::from((*minutes).min(7 * 60));
            *mean += (weight * (value - f64::from(*mean))) as f32;
        }
    }

    /// Decays a count baseline over `minutes` empty minutes in closed form.
    fn decay(&mut self, minutes: i64, alpha: f64) {
        let keep = (1.0 - alpha).powf(minutes as f64);
        self.deviation = self.deviation * keep + self.level * (1.0 - keep) * 0.5;
        self.level *= keep;
    }

    fn expected(&self, slot: usize) -> f64 {
        let seasonal = self
            .seasonal
            .as_ref()
            .filter(|seasonal| seasonal.minutes[slot] >= SEASONAL_MIN_MINUTES)
            .map_or(0.0, |seasonal| f64::from(seasonal.mean[slot]));
        self.level.max(seasonal)
    }
}

/// An event more than this many minutes older than its key's open minute is left out of the
/// per-minute rates (events a little late, out of order, count in the open minute).
const STALE_EVENT_MINUTES: i64 = 2;

/// How long (the engine's clock) a key's rates wait for a clock set back to catch up before
/// its open minute starts again at the new time.
const BEHIND_LIMIT_MS: i64 = 10 * MINUTE_MS;

/// The accumulators of the open minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Bucket {
    minute: i64,
    requests: u32,
    request_bytes: f64,
    response_bytes: f64,
    status_4xx: u32,
    status_5xx: u32,
    vendor_auth_failures: u32,
    caller_auth_failures: u32,
    latency_sum_ms: f64,
    latency_count: u32,
    /// The slowest forwarded call of the minute, left out of the minute's mean latency: one
    /// timed-out call is not a slowdown.
    #[serde(default)]
    latency_max_ms: f64,
    /// Metrics that already alerted in this minute (bit per metric).
    alerted: u8,
}

impl Bucket {
    /// Request and response bytes, each 0 when its per-minute check alerted in this minute (a
    /// burst already reported is not counted again by the slow volume check).
    fn unalerted_bytes(&self) -> (f64, f64) {
        let unless = |metric: usize, bytes: f64| {
            if self.alerted & (1 << metric) == 0 {
                bytes
            } else {
                0.0
            }
        };
        (
            unless(REQUEST_BYTES, self.request_bytes),
            unless(RESPONSE_BYTES, self.response_bytes),
        )
    }

    /// The bucket's value of `metric`, `None` when there is too little data for it.
    fn value(&self, metric: usize, min_requests_for_ratio: u32) -> Option<f64> {
        let requests = f64::from(self.requests);
        match metric {
            RATE => Some(requests),
            REQUEST_BYTES => Some(self.request_bytes),
            RESPONSE_BYTES => Some(self.response_bytes),
            RATIO_4XX => (self.requests >= min_requests_for_ratio)
                .then(|| f64::from(self.status_4xx) / requests),
            RATIO_5XX => (self.requests >= min_requests_for_ratio)
                .then(|| f64::from(self.status_5xx) / requests),
            VENDOR_AUTH => Some(f64::from(self.vendor_auth_failures)),
            CALLER_AUTH => Some(f64::from(self.caller_auth_failures)),
            _ => (self.latency_count >= min_requests_for_ratio.max(2)).then(|| {
                (self.latency_sum_ms - self.latency_max_ms) / f64::from(self.latency_count - 1)
            }),
        }
    }
}

/// Novelty memory of a key: names first seen, with when they were last seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct NoveltySet {
    /// foldhash, seeded at random (source addresses are the callers' to choose): three lookups
    /// per event, which SipHash made ~1,200 instructions.
    entries: HashMap<String, i64, foldhash::quality::RandomState>,
}

impl NoveltySet {
    /// Records `name`: `None` when it was known, else whether the set was full (past `cap` its
    /// stalest entry is forgotten to make room, so `name` may be one forgotten before, not a
    /// new one).
    fn record(&mut self, name: &str, now_ms: i64, cap: usize) -> Option<bool> {
        if let Some(last_seen) = self.entries.get_mut(name) {
            *last_seen = now_ms;
            return None;
        }
        let full = self.entries.len() >= cap.max(1);
        if full {
            if let Some(stalest) = self
                .entries
                .iter()
                .min_by_key(|(_, &seen)| seen)
                .map(|(name, _)| name.clone())
            {
                self.entries.remove(&stalest);
            }
        }
        self.entries.insert(name.to_owned(), now_ms);
        Some(full)
    }
}

/// Whether a name new to a novelty set raises `kind`: always while the set has room (the name
/// was never seen); once it is full (more distinct names than it keeps, each miss possibly one
/// it forgot), at most once per `quiet_ms`, so a key with more sources than the cap does not
/// alert on nearly every call.
fn novelty_due(
    last_alert_ms: &mut HashMap<AlertKind, i64>,
    kind: AlertKind,
    full: bool,
    now_ms: i64,
    quiet_ms: i64,
) -> bool {
    if full
        && last_alert_ms
            .get(&kind)
            .is_some_and(|&last| now_ms - last < quiet_ms)
    {
        return false;
    }
    last_alert_ms.insert(kind, now_ms);
    true
}

impl KeyState {
    /// Whether the arrays the engine indexes have the lengths it indexes them by.
    fn has_this_shape(&self) -> bool {
        self.baselines.len() == METRICS
            && (self.hours.is_empty() || self.hours.len() == 168)
            && self.baselines.iter().all(|baseline| {
                baseline.seasonal.as_ref().is_none_or(|seasonal| {
                    seasonal.mean.len() == SEASONAL_SLOTS
                        && seasonal.minutes.len() == SEASONAL_SLOTS
                })
            })
    }
}

/// Everything the engine knows about one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KeyState {
    first_seen_ms: i64,
    last_seen_ms: i64,
    bucket: Bucket,
    closed_minutes: u32,
    baselines: Vec<Baseline>,
    last_alert_ms: HashMap<AlertKind, i64>,
    /// The value each volume or rate alert (of [`ESCALATING`] metrics) was raised on: one ten
    /// times larger alerts again, in the same minute or within the cooldown.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    last_alert_observed: HashMap<AlertKind, f64>,
    /// Integration keys: callers seen. Caller keys: operations and source addresses seen.
    callers: NoveltySet,
    operations: NoveltySet,
    sources: NoveltySet,
    /// Caller keys: events per hour of the week.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    hours: Vec<u32>,
    /// Counts of the last `window_minutes - 1` closed minutes, oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    recent: VecDeque<MinuteCounts>,
    #[serde(default)]
    totals: Totals,
    /// Mean latency of the previous minute when it had enough calls (and was the minute just
    /// before the open one), else 0.
    #[serde(default)]
    previous_latency_ms: f64,
    /// Caller and operation keys: calls and bytes per 5-minute step over the last
    /// `slow_volume_window_minutes`, oldest first, for the slow volume check.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    volume_steps: VecDeque<VolumeStep>,
    /// When (the engine's clock) an event that ended far before the open minute came
    /// ([`STALE_EVENT_MINUTES`]): the clock was set back. Until a newer minute opens, events of
    /// the open minute or before are left out of the rates (counted, a clock catching up would
    /// pile them up there); after [`BEHIND_LIMIT_MS`] the open minute starts again at the new
    /// time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    behind_since_ms: Option<i64>,
    /// Caller keys: made again for a dormant caller its integration already knew once the
    /// integration was warm (the integration last saw it `idle_eviction_seconds` or more ago,
    /// so its earlier key was evicted as idle, or under `max_keys` while idle): its novelty
    /// alerts need no warm-up of their own, or a dormant credential coming back — what a thief
    /// reuses — would go a day without `new_source` or `new_operation`. Not for a caller whose
    /// key `max_keys` pushed out while it was active: each such eviction would raise its usual
    /// operations and addresses again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    returned: bool,
}

/// Calls and bytes of one 5-minute step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct VolumeStep {
    /// Unix minute / `VOLUME_STEP_MINUTES`.
    step: i64,
    requests: u32,
    request_bytes: f64,
    response_bytes: f64,
}

const VOLUME_STEP_MINUTES: i64 = 5;

/// The counts of one closed minute kept for the window checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct MinuteCounts {
    requests: u32,
    status_4xx: u32,
    status_5xx: u32,
    vendor_auth_failures: u32,
}

impl MinuteCounts {
    fn of(bucket: &Bucket) -> Self {
        MinuteCounts {
            requests: bucket.requests,
            status_4xx: bucket.status_4xx,
            status_5xx: bucket.status_5xx,
            vendor_auth_failures: bucket.vendor_auth_failures,
        }
    }

    fn add(&mut self, other: &MinuteCounts) {
        self.requests += other.requests;
        self.status_4xx += other.status_4xx;
        self.status_5xx += other.status_5xx;
        self.vendor_auth_failures += other.vendor_auth_failures;
    }
}

/// Long-run rates for the window checks (exponentially weighted sums over closed minutes:
/// `sum = keep × sum + this minute`), and bytes per call for the slow volume check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Totals {
    /// Time constant `long_run_minutes`.
    requests: f64,
    status_4xx: f64,
    status_5xx: f64,
    vendor_auth_failures: f64,
    /// Bytes per call: a mean over the last ~`slow_volume_minutes` minutes with calls, each
    /// minute counting once (a flood of calls in a few minutes does not swamp it), a minute's
    /// value capped at `alert_ratio` times the mean; minutes whose volume alerted are left out.
    request_bytes_per_call: f64,
    response_bytes_per_call: f64,
    /// Minutes with calls learned into them.
    minutes_with_calls: u32,
}

/// The weight an exponentially weighted sum keeps per minute, for a time constant in minutes.
fn keep_per_minute(time_constant_minutes: f64) -> f64 {
    1.0 - 1.0 / time_constant_minutes.max(1.0)
}

impl Totals {
    /// Adds the closed minute `bucket`, then decays over the `empty` empty minutes after it.
    fn close(&mut self, bucket: &Bucket, empty: i64, config: &EngineConfig) {
        let minutes = 1.0 + empty.max(0) as f64;
        let long = keep_per_minute(config.long_run_minutes);
        let step = |sum: &mut f64, keep: f64, value: f64| {
            *sum = (keep * *sum + value) * keep.powf(minutes - 1.0);
        };
        step(&mut self.requests, long, f64::from(bucket.requests));
        step(&mut self.status_4xx, long, f64::from(bucket.status_4xx));
        step(&mut self.status_5xx, long, f64::from(bucket.status_5xx));
        step(
            &mut self.vendor_auth_failures,
            long,
            f64::from(bucket.vendor_auth_failures),
        );
        if bucket.requests > 0 {
            let learned = self.minutes_with_calls >= MIN_SLOW_VOLUME_MINUTES;
            self.minutes_with_calls = self.minutes_with_calls.saturating_add(1);
            let horizon = config.slow_volume_minutes.max(1.0);
            let weight = 1.0 / f64::from(self.minutes_with_calls).min(horizon);
            let calls = f64::from(bucket.requests);
            for (mean, bytes, metric) in [
                (
                    &mut self.request_bytes_per_call,
                    bucket.request_bytes,
                    REQUEST_BYTES,
                ),
                (
                    &mut self.response_bytes_per_call,
                    bucket.response_bytes,
                    RESPONSE_BYTES,
                ),
            ] {
                if bucket.alerted & (1 << metric) != 0 {
                    continue;
                }
                // Capped once learned, as the seasonal profile is: hours of exfiltration are
                // not learned as the caller's normal by the next day.
                let cap = if learned {
                    config.alert_ratio * mean.max(100.0)
                } else {
                    f64::INFINITY
                };
                *mean += weight * ((bytes / calls).min(cap) - *mean);
            }
        }
    }
}

impl KeyState {
    fn new(now_ms: i64, minute: i64) -> Self {
        Self {
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            bucket: Bucket {
                minute,
                ..Bucket::default()
            },
            closed_minutes: 0,
            baselines: vec![Baseline::default(); METRICS],
            last_alert_ms: HashMap::new(),
            last_alert_observed: HashMap::new(),
            callers: NoveltySet::default(),
            operations: NoveltySet::default(),
            sources: NoveltySet::default(),
            hours: Vec::new(),
            recent: VecDeque::new(),
            totals: Totals::default(),
            previous_latency_ms: 0.0,
            volume_steps: VecDeque::new(),
            behind_since_ms: None,
            returned: false,
        }
    }
}

/// A key: an integration, optionally narrowed to a caller and an operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MetricKey {
    pub integration: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Arc<str>>,
}

impl MetricKey {
    /// The integration-level key of a host no integration registers (`host:<name>`).
    fn is_host_level(&self) -> bool {
        self.caller.is_none()
            && self.operation.is_none()
            && self.integration.starts_with(HOST_KEY_PREFIX)
    }
}

/// The engine's whole state, for persisting across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    pub version: u32,
    pub config: EngineConfig,
    keys: Vec<(MetricKey, KeyState)>,
}

impl EngineSnapshot {
    /// Keys the snapshot holds (of every level).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

/// Current snapshot format.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The name used for events that carry no integration.
pub const NO_INTEGRATION: &str = "(none)";

/// The behaviour-baseline engine.
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
    /// foldhash: three lookups per event, and the names come from the gateway's config.
    keys: HashMap<MetricKey, KeyState, foldhash::fast::RandomState>,
    last_sweep_ms: i64,
    /// Integration-level keys of unregistered hosts (`host:<name>`) held now.
    host_keys: usize,
    /// The caller whose call opened each host key (by its name, `host:<name>`), and how many
    /// each caller opened ([`EngineConfig::max_host_keys_per_caller`]). Not in snapshots: the
    /// keys a restored engine holds count against the total, not against any caller.
    host_key_openers: HashMap<Arc<str>, Option<Arc<str>>, foldhash::fast::RandomState>,
    opened_host_keys: HashMap<Option<Arc<str>>, usize, foldhash::fast::RandomState>,
}

/// The prefix of the key of a host no integration registers: `host:api.github.com`.
pub const HOST_KEY_PREFIX: &str = "host:";

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            keys: HashMap::default(),
            last_sweep_ms: i64::MIN,
            host_keys: 0,
            host_key_openers: HashMap::default(),
            opened_host_keys: HashMap::default(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Keys currently tracked.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The names integration-level keys are tracked under (integrations, `host:<name>`,
    /// `(none)`), sorted.
    pub fn integration_names(&self) -> Vec<Arc<str>> {
        let mut names: Vec<Arc<str>> = self
            .keys
            .keys()
            .filter(|key| key.caller.is_none() && key.operation.is_none())
            .map(|key| key.integration.clone())
            .collect();
        names.sort();
        names
    }

    /// Everything needed to continue where this engine stands.
    pub fn snapshot(&self) -> EngineSnapshot {
        let mut keys: Vec<(MetricKey, KeyState)> = self
            .keys
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        EngineSnapshot {
            version: SNAPSHOT_VERSION,
            config: self.config.clone(),
            keys,
        }
    }

    /// An engine continuing from `snapshot`, with its configuration.
    pub fn restore(snapshot: EngineSnapshot) -> Self {
        let config = snapshot.config.clone();
        Self::restore_with(snapshot, config)
    }

    /// An engine continuing from `snapshot`'s baselines, with `config` (the gateway's own: a
    /// snapshot's would keep an install on the defaults it was first written with). A key whose
    /// state is not of this version's shape (a damaged file, or one another version wrote) is
    /// dropped, to be learned again, rather than panic the detector at its first event; a
    /// snapshot of another version is not restored at all.
    pub fn restore_with(snapshot: EngineSnapshot, config: EngineConfig) -> Self {
        let keys: HashMap<MetricKey, KeyState, foldhash::fast::RandomState> =
            match snapshot.version == SNAPSHOT_VERSION {
                true => snapshot
                    .keys
                    .into_iter()
                    .filter(|(_, state)| state.has_this_shape())
                    .collect(),
                false => HashMap::default(),
            };
        let host_keys = keys.keys().filter(|key| key.is_host_level()).count();
        Self {
            config,
            keys,
            last_sweep_ms: i64::MIN,
            host_keys,
            host_key_openers: HashMap::default(),
            opened_host_keys: HashMap::default(),
        }
    }

    /// Feeds one event; `now_ms` is the current time (in replay, the event's time). Returns the
    /// alerts it raised.
    pub fn observe(&mut self, event: &DetectEvent, now_ms: i64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        self.sweep(now_ms);
        // A call the gateway refused to a known caller is that caller's doing: it counts on the
        // caller's keys only. On the integration's own key, any caller's steady refusals
        // (`not_granted` to an integration it has no grant on) would pad the requests every
        // error ratio divides by, hiding a vendor's outage or a revoked vendor key, and a burst
        // of them would read as the vendor's incident. Unidentified refusals have no caller key
        // and stay counted here (`caller_auth_failures`).
        let refused_known_caller = event.caller.is_some()
            && (event.decision.as_deref() == Some("deny")
                || event
                    .reason
                    .as_deref()
                    .is_some_and(|reason| CALLER_REFUSALS.contains(&reason)));
        let (integration, opens_host_key) = self.integration_of(event, refused_known_caller);
        let minute = event.time_unix_ms.div_euclid(MINUTE_MS);

        let integration_key = MetricKey {
            integration: integration.clone(),
            caller: None,
            operation: None,
        };
        if !refused_known_caller {
            if opens_host_key {
                self.count_host_key(&integration, &event.caller);
            }
            self.observe_key(&integration_key, event, minute, now_ms, &mut alerts);
        }
        if let Some(caller) = &event.caller {
            let caller_key = MetricKey {
                integration: integration.clone(),
                caller: Some(caller.clone()),
                operation: None,
            };
            self.observe_novelty(&integration_key, &caller_key, event, now_ms, &mut alerts);
            self.observe_key(&caller_key, event, minute, now_ms, &mut alerts);
            if let Some(operation) = &event.operation {
                let operation_key = MetricKey {
                    operation: Some(operation.clone()),
                    ..caller_key
                };
                self.observe_key(&operation_key, event, minute, now_ms, &mut alerts);
            }
        }
        alerts
    }

    /// The name an event is keyed under: its integration; for a forward-proxy call let
    /// through to a host no integration registers, `host:<name>` (while fewer than
    /// `max_host_keys` such keys are held, and fewer than `max_host_keys_per_caller` opened by
    /// the event's caller, or its key is held already); else `(none)`. And whether the event
    /// opens that host key ([`Engine::count_host_key`]).
    ///
    /// A call refused as its caller's doing (`refused_known_caller`) counts on its caller's
    /// keys alone, so it adds no host key, and takes no place under the caps: it is keyed
    /// `host:<name>` only when that host's key is held already, else `(none)`. Keyed by a host
    /// of its own, each such call to a new name would add caller keys under a `host:` name
    /// the caps never counted, and a caller spraying names would push every other key out.
    fn integration_of(&self, event: &DetectEvent, refused_known_caller: bool) -> (Arc<str>, bool) {
        if let Some(integration) = &event.integration {
            // No integration is named `host:…` (names take no `:`); a replayed event that says
            // so is not counted as a host key.
            if integration.starts_with(HOST_KEY_PREFIX) {
                return (Arc::from(NO_INTEGRATION), false);
            }
            return (integration.clone(), false);
        }
        let allowed = event.decision.as_deref() == Some("allow");
        if let (Some(host), true) = (&event.host, allowed) {
            let key = MetricKey {
                integration: Arc::from(format!("{HOST_KEY_PREFIX}{host}")),
                caller: None,
                operation: None,
            };
            if self.keys.contains_key(&key) {
                return (key.integration, false);
            }
            if refused_known_caller {
                return (Arc::from(NO_INTEGRATION), false);
            }
            let opened = self.opened_host_keys.get(&event.caller).copied();
            if self.host_keys < self.config.max_host_keys
                && opened.unwrap_or(0) < self.config.max_host_keys_per_caller
            {
                return (key.integration, true);
            }
        }
        (Arc::from(NO_INTEGRATION), false)
    }

    /// The keys, and the host keys' counts beside them, borrowed apart for a sweep.
    #[allow(clippy::type_complexity)]
    fn keys_and_host_counts(
        &mut self,
    ) -> (
        &mut HashMap<MetricKey, KeyState, foldhash::fast::RandomState>,
        HostKeys<'_>,
    ) {
        (
            &mut self.keys,
            HostKeys {
                held: &mut self.host_keys,
                openers: &mut self.host_key_openers,
                opened: &mut self.opened_host_keys,
            },
        )
    }

    /// A host key is about to be added for `caller`'s event: counted, with its opener.
    fn count_host_key(&mut self, name: &Arc<str>, caller: &Option<Arc<str>>) {
        self.host_keys += 1;
        *self.opened_host_keys.entry(caller.clone()).or_default() += 1;
        self.host_key_openers.insert(name.clone(), caller.clone());
    }

    fn observe_novelty(
        &mut self,
        integration_key: &MetricKey,
        caller_key: &MetricKey,
        event: &DetectEvent,
        now_ms: i64,
        alerts: &mut Vec<Alert>,
    ) {
        let config = &self.config;
        let warm_ms = config.novelty_warmup_seconds * 1_000;
        let caller = caller_key.caller.as_deref().unwrap_or_default();
        let alert = |kind: AlertKind, score: f64, observed: f64, operation: Option<&str>| Alert {
            time: format_rfc3339_millis(now_ms),
            integration: caller_key.integration.to_string(),
            caller: caller_key.caller.as_deref().map(str::to_string),
            operation: operation.map(str::to_string),
            kind,
            score,
            observed,
            baseline: 0.0,
        };
        let quiet_ms = config.alert_cooldown_seconds * 1_000;
        // Records `name` in `set`: whether that is news worth an alert of `kind` (first seen,
        // its key warm, and past a full set not within the cooldown of the last such alert).
        let news = |set: &mut NoveltySet,
                    last_alert_ms: &mut HashMap<AlertKind, i64>,
                    name: &str,
                    kind: AlertKind,
                    warm: bool| {
            set.record(name, now_ms, config.max_novelty_entries)
                .is_some_and(|full| {
                    warm && novelty_due(last_alert_ms, kind, full, now_ms, quiet_ms)
                })
        };
        // Whether the integration, warm, knew the caller before this event and had not seen it
        // for `idle_eviction_seconds`: a caller key made now is then a dormant caller's made
        // again, not a new caller's. The callers set holds when each was last seen on this
        // integration (read before this event records it); a caller seen more recently whose
        // key is missing lost it to `max_keys` while active, and is warmed up as a new key is.
        let idle_ms = config.idle_eviction_seconds.saturating_mul(1_000);
        let mut returning = false;
        if let Some(integration_state) = self.keys.get_mut(integration_key) {
            let integration_warm = now_ms - integration_state.first_seen_ms >= warm_ms;
            returning = integration_warm
                && integration_state
                    .callers
                    .entries
                    .get(caller)
                    .is_some_and(|&last_seen_ms| now_ms.saturating_sub(last_seen_ms) >= idle_ms);
            // `(none)` holds the calls no integration answers for (refused before routing, by
            // host policy, or as their caller's doing to a host with no key): a caller's first
            // such refusal is not a new identity on any integration, so it raises no
            // `new_caller` (it is still recorded: a dormant caller's return is judged by it).
            let raises_new_caller =
                integration_warm && &*integration_key.integration != NO_INTEGRATION;
            if news(
                &mut integration_state.callers,
                &mut integration_state.last_alert_ms,
                caller,
                AlertKind::NewCaller,
                raises_new_caller,
            ) {
                alerts.push(alert(
                    AlertKind::NewCaller,
                    0.8,
                    1.0,
                    event.operation.as_deref(),
                ));
            }
        }
        let minute = event.time_unix_ms.div_euclid(MINUTE_MS);
        let state = self
            .keys
            .entry(caller_key.clone())
            .or_insert_with(|| KeyState {
                returned: returning,
                ..KeyState::new(now_ms, minute)
            });
        // A dormant caller's key made again is warm for names at once: every operation and
        // source is new to it then (its memory went with the evicted key), so its return raises
        // `new_operation` and `new_source`, once per name. Off-hours waits its week again (the
        // activity histogram went too).
        let caller_warm = state.returned || now_ms - state.first_seen_ms >= warm_ms;
        if let Some(operation) = &event.operation {
            if news(
                &mut state.operations,
                &mut state.last_alert_ms,
                operation,
                AlertKind::NewOperation,
                caller_warm,
            ) {
                alerts.push(alert(AlertKind::NewOperation, 0.5, 1.0, Some(operation)));
            }
        }
        if let Some(source) = &event.source_ip {
            if news(
                &mut state.sources,
                &mut state.last_alert_ms,
                source,
                AlertKind::NewSource,
                caller_warm,
            ) {
                alerts.push(alert(
                    AlertKind::NewSource,
                    0.7,
                    1.0,
                    event.operation.as_deref(),
                ));
            }
        }
        if state.hours.is_empty() {
            state.hours = vec![0; 168];
        }
        let hour = hour_of_week(event.time_unix_ms.div_euclid(1_000));
        let total: u64 = state.hours.iter().map(|&count| u64::from(count)).sum();
        let share = f64::from(state.hours[hour]) / total.max(1) as f64;
        // The hour and the hours either side: starting at 07:50 is not off hours for a caller
        // that usually starts at 08:00.
        let nearby: u64 = [167, 0, 1]
            .iter()
            .map(|offset| u64::from(state.hours[(hour + offset) % 168]))
            .sum();
        let nearby_share = nearby as f64 / total.max(1) as f64;
        state.hours[hour] = state.hours[hour].saturating_add(1);
        let age_ms = now_ms - state.first_seen_ms;
        let week_old = age_ms >= config.off_hours_warmup_seconds * 1_000;
        let weeks = (age_ms as f64 / (7.0 * 86_400_000.0)).max(1.0);
        let rare = week_old
            && total >= config.off_hours_min_events
            && nearby_share < config.off_hours_max_share
            && (nearby as f64 / weeks) < config.off_hours_max_weekly_events;
        if rare
            && state
                .last_alert_ms
                .get(&AlertKind::OffHours)
                .is_none_or(|&last| now_ms - last >= 3_600_000)
        {
            state.last_alert_ms.insert(AlertKind::OffHours, now_ms);
            let score = 0.4 + 0.4 * (1.0 - nearby_share / config.off_hours_max_share);
            alerts.push(alert(
                AlertKind::OffHours,
                score,
                share,
                event.operation.as_deref(),
            ));
        }
    }

    fn observe_key(
        &mut self,
        key: &MetricKey,
        event: &DetectEvent,
        minute: i64,
        now_ms: i64,
        alerts: &mut Vec<Alert>,
    ) {
        let state = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| KeyState::new(now_ms, minute));
        state.last_seen_ms = state.last_seen_ms.max(now_ms);
        // An event is stamped with its call's start and written at its end: a long call (a
        // stream, a tunnel) ends now, however long ago it began.
        let duration_ms = event.duration_ms.clamp(0.0, 1e12) as i64;
        let end_minute = event
            .time_unix_ms
            .saturating_add(duration_ms)
            .div_euclid(MINUTE_MS);
        let stale = end_minute < state.bucket.minute - STALE_EVENT_MINUTES;
        if minute > state.bucket.minute {
            close_buckets(state, key, minute, &self.config);
            state.behind_since_ms = None;
        } else if stale || state.behind_since_ms.is_some() {
            // Ended far before the open minute: the clock was set back. Counted in the open
            // minute, every event until the clock caught up would pile up there: they are left
            // out of the rates (their novelty was looked at already) until a newer minute
            // opens, or, past BEHIND_LIMIT_MS, the open minute starts again at the new time,
            // unlearned (a clock set far back, or forward and then back, is not waited out).
            // Timed from the earliest such event: the clock runs on from there.
            let since = state
                .behind_since_ms
                .map_or(now_ms, |since| since.min(now_ms));
            state.behind_since_ms = Some(since);
            // Only an event itself behind restarts the open minute; one inside it waits (at
            // most the rest of the minute).
            if !stale || now_ms - since < BEHIND_LIMIT_MS {
                return;
            }
            state.bucket = Bucket {
                minute,
                ..Bucket::default()
            };
            state.behind_since_ms = None;
            state.last_seen_ms = now_ms;
        }
        // Events older than the open minute (out of order) still count in it.
        let bucket = &mut state.bucket;
        let caller_auth_failure = event
            .reason
            .as_deref()
            .is_some_and(|reason| CALLER_AUTH_FAILURES.contains(&reason));
        bucket.requests += 1;
        bucket.request_bytes += event.request_bytes as f64;
        bucket.response_bytes += event.response_bytes as f64;
        // The window metrics this call counts in (a bit per metric).
        let mut failing = 0u8;
        if caller_auth_failure {
            bucket.caller_auth_failures += 1;
        } else if (400..500).contains(&event.status) {
            bucket.status_4xx += 1;
            failing |= 1 << RATIO_4XX;
        } else if event.status >= 500 {
            bucket.status_5xx += 1;
            failing |= 1 << RATIO_5XX;
        }
        let forwarded = event
            .reason
            .as_deref()
            .is_none_or(|reason| reason == "granted");
        if forwarded && matches!(event.status, 401 | 403) {
            bucket.vendor_auth_failures += 1;
            failing |= 1 << VENDOR_AUTH;
        }
        if forwarded && event.duration_ms.is_finite() && event.duration_ms >= 0.0 {
            bucket.latency_sum_ms += event.duration_ms;
            bucket.latency_count += 1;
            bucket.latency_max_ms = bucket.latency_max_ms.max(event.duration_ms);
        }
        let config = &self.config;
        if state.closed_minutes < config.warmup_minutes {
            return;
        }
        let slot = seasonal_slot(state.bucket.minute * MINUTE_MS);
        for metric in 0..METRICS {
            let alerted = state.bucket.alerted & (1 << metric) != 0;
            if alerted && ESCALATING & (1 << metric) == 0 {
                continue;
            }
            let Some(observed) = state.bucket.value(metric, config.min_requests_for_ratio) else {
                continue;
            };
            // Alerted in this minute already: again only when it grew tenfold since.
            if alerted
                && state
                    .last_alert_observed
                    .get(&metric_kind(metric))
                    .is_none_or(|&last| observed < ESCALATION * last)
            {
                continue;
            }
            let baseline = &state.baselines[metric];
            if baseline.updates == 0 && !is_count_metric(metric) {
                continue;
            }
            let expected = baseline.expected(slot);
            let (spread_floor, least_increase) = match metric {
                RATE | VENDOR_AUTH | CALLER_AUTH => {
                    (expected.sqrt().max(1.0), config.min_alert_count)
                }
                REQUEST_BYTES | RESPONSE_BYTES => (expected * 0.1, config.min_alert_bytes),
                RATIO_4XX | RATIO_5XX => (0.02, config.min_ratio_increase),
                _ => (expected * 0.1, config.min_latency_increase_ms),
            };
            let spread = baseline.deviation.max(spread_floor).max(1e-9);
            let deviations = (observed - expected) / spread;
            let high_enough = match metric {
                RATE | VENDOR_AUTH | CALLER_AUTH | REQUEST_BYTES | RESPONSE_BYTES => {
                    observed >= least_increase && observed >= config.alert_ratio * expected
                }
                RATIO_4XX | RATIO_5XX => observed - expected >= least_increase,
                // Latency: and the minute before too (one slow minute of a heavy-tailed
                // vendor is noise; a slowdown lasts).
                _ => [observed, state.previous_latency_ms]
                    .iter()
                    .all(|&value| value - expected >= least_increase && value >= 2.0 * expected),
            };
            // Counts must also be improbable as Poisson noise around the baseline: small keys
            // would otherwise alert on chance bursts, checked on every event.
            let requests = f64::from(state.bucket.requests);
            let chance = match metric {
                RATE | VENDOR_AUTH | CALLER_AUTH => poisson_upper_tail(observed, expected.max(0.1)),
                RATIO_4XX | RATIO_5XX => {
                    poisson_upper_tail((observed * requests).round(), requests * expected.max(0.01))
                }
                _ => 0.0,
            };
            if !(high_enough
                && deviations >= config.alert_deviations
                && chance <= config.alert_chance_probability)
            {
                continue;
            }
            let relative = deviations / config.alert_deviations;
            let quiet_ms = config.alert_cooldown_seconds * 1_000;
            let found = Finding {
                metric,
                relative,
                observed,
                expected,
            };
            // Either way the metric does not alert again in the open minute.
            state.bucket.alerted |= 1 << metric;
            raise(state, key, found, now_ms, quiet_ms, true, alerts);
        }
        check_window(config, state, key, failing, now_ms, alerts);
        check_slow_volume(config, state, key, now_ms, alerts);
    }

    /// Evicts idle keys (at most once a minute of `now`), then the least recently seen keys
    /// past the cap.
    fn sweep(&mut self, now_ms: i64) {
        // One event adds at most three keys.
        let cap = self.config.max_keys.max(10);
        let over_cap = self.keys.len() + 3 > cap;
        if !over_cap && now_ms.saturating_sub(self.last_sweep_ms) < MINUTE_MS {
            return;
        }
        self.last_sweep_ms = now_ms;
        let idle_ms = self.config.idle_eviction_seconds.saturating_mul(1_000);
        let (keys, mut hosts) = self.keys_and_host_counts();
        keys.retain(|key, state| {
            let kept = now_ms.saturating_sub(state.last_seen_ms) <= idle_ms;
            if !kept && key.is_host_level() {
                hosts.evicted(key);
            }
            kept
        });
        if self.keys.len() + 3 > cap {
            // Evict down to 90 % of the cap at once, so eviction is amortized O(1) per event.
            let keep = cap - cap.div_ceil(10).max(1);
            let mut last_seen: Vec<i64> =
                self.keys.values().map(|state| state.last_seen_ms).collect();
            let drop = last_seen.len() - keep;
            let (older, &mut cutoff, _) = last_seen.select_nth_unstable(drop.saturating_sub(1));
            // Every key seen before the cutoff goes; of those seen at it, as many as make up
            // the rest (in the map's order). Counting both alike let a tie at the cutoff take
            // a place meant for an older key, which then outlived newer ones.
            let before = older.iter().filter(|&&seen| seen < cutoff).count();
            let mut ties = drop - before;
            let (keys, mut hosts) = self.keys_and_host_counts();
            keys.retain(|key, state| {
                let evicted = match state.last_seen_ms.cmp(&cutoff) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Equal if ties > 0 => {
                        ties -= 1;
                        true
                    }
                    _ => false,
                };
                if evicted && key.is_host_level() {
                    hosts.evicted(key);
                }
                !evicted
            });
        }
    }
}

/// The engine's count of host keys, borrowed while its keys are swept.
struct HostKeys<'a> {
    held: &'a mut usize,
    openers: &'a mut HashMap<Arc<str>, Option<Arc<str>>, foldhash::fast::RandomState>,
    opened: &'a mut HashMap<Option<Arc<str>>, usize, foldhash::fast::RandomState>,
}

impl HostKeys<'_> {
    /// The host key `key` was evicted: its place, and its opener's, are free.
    fn evicted(&mut self, key: &MetricKey) {
        *self.held = self.held.saturating_sub(1);
        if let Some(caller) = self.openers.remove(&key.integration) {
            if let Some(count) = self.opened.get_mut(&caller) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.opened.remove(&caller);
                }
            }
        }
    }
}

/// A metric found far above what was expected.
struct Finding {
    metric: usize,
    /// How far above, relative to the threshold (1 at the threshold): sets the score.
    relative: f64,
    observed: f64,
    expected: f64,
}

/// Raises the alert of `found` on `key` unless the same (key, kind) alerted within `quiet_ms`
/// (`per_minute`: a minute's own check, whose rate and volume alerts may escalate past it;
/// the window and slow-volume checks keep their quiet periods whole).
#[allow(clippy::too_many_arguments)]
fn raise(
    state: &mut KeyState,
    key: &MetricKey,
    found: Finding,
    now_ms: i64,
    quiet_ms: i64,
    per_minute: bool,
    alerts: &mut Vec<Alert>,
) {
    let kind = metric_kind(found.metric);
    let quiet = state
        .last_alert_ms
        .get(&kind)
        .is_none_or(|&last| now_ms - last >= quiet_ms);
    let escalating = per_minute && ESCALATING & (1 << found.metric) != 0;
    let grown = escalating
        && state
            .last_alert_observed
            .get(&kind)
            .is_some_and(|&last| found.observed >= ESCALATION * last);
    if !quiet && !grown {
        return;
    }
    state.last_alert_ms.insert(kind, now_ms);
    if escalating {
        state.last_alert_observed.insert(kind, found.observed);
    }
    let relative = found.relative;
    alerts.push(Alert {
        time: format_rfc3339_millis(now_ms),
        integration: key.integration.to_string(),
        caller: key.caller.as_deref().map(str::to_string),
        operation: key.operation.as_deref().map(str::to_string),
        kind,
        score: (1.0 - 1.0 / (1.0 + relative * relative)).clamp(0.0, 1.0),
        observed: found.observed,
        baseline: found.expected,
    });
}

/// Long-run requests a key needs before its window checks run.
const MIN_LONG_RUN_REQUESTS: f64 = 100.0;
/// Minutes with calls a key needs before its slow volume check runs.
const MIN_SLOW_VOLUME_MINUTES: u32 = 60;

/// Error ratios and vendor authentication failures over the last 5, 10 and `window_minutes`
/// minutes (the open minute included), against the key's long-run rates: keys with a few calls
/// a minute never have the 10 requests a minute the per-minute checks need. Checked on a call
/// that counts in the metric (`failing`, a bit per metric) while the last 5 minutes still fail
/// at an alerting ratio, so the check stops once the calls succeed again; a window's alert is
/// not repeated within the window's length.
fn check_window(
    config: &EngineConfig,
    state: &mut KeyState,
    key: &MetricKey,
    failing: u8,
    now_ms: i64,
    alerts: &mut Vec<Alert>,
) {
    if failing == 0 || config.window_minutes < 2 || state.totals.requests < MIN_LONG_RUN_REQUESTS {
        return;
    }
    let mut windows: Vec<(u32, MinuteCounts)> = Vec::with_capacity(3);
    let mut window = MinuteCounts::of(&state.bucket);
    let mut minutes = 1;
    let mut recent = state.recent.iter().rev();
    for length in [5, 10, config.window_minutes] {
        if length > config.window_minutes || length <= minutes && !windows.is_empty() {
            continue;
        }
        while minutes < length {
            let Some(minute) = recent.next() else { break };
            window.add(minute);
            minutes += 1;
        }
        windows.push((minutes, window));
    }
    // Still failing: at least two failures in the last 5 minutes, at a ratio the longer windows
    // would alert on (not one ordinary error among the successes after an incident).
    let latest = windows[0].1;
    let usual = |failures: f64| failures / state.totals.requests;
    let ongoing = |failures: u32, long_run: f64| {
        failures >= 2
            && f64::from(failures) / f64::from(latest.requests.max(1)) - usual(long_run)
                >= config.min_ratio_increase
    };
    let mut failing = failing;
    for (metric, failures, long_run) in [
        (RATIO_4XX, latest.status_4xx, state.totals.status_4xx),
        (RATIO_5XX, latest.status_5xx, state.totals.status_5xx),
        (
            VENDOR_AUTH,
            latest.vendor_auth_failures,
            state.totals.vendor_auth_failures,
        ),
    ] {
        if !ongoing(failures, long_run) {
            failing &= !(1 << metric);
        }
    }
    for (minutes, window) in windows {
        // Quiet for the window's length: its failures are not reported again from its tail.
        let quiet_ms = (config.alert_cooldown_seconds * 1_000).max(i64::from(minutes) * MINUTE_MS);
        check_window_counts(
            config, state, key, &window, failing, now_ms, quiet_ms, alerts,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn check_window_counts(
    config: &EngineConfig,
    state: &mut KeyState,
    key: &MetricKey,
    window: &MinuteCounts,
    failing: u8,
    now_ms: i64,
    quiet_ms: i64,
    alerts: &mut Vec<Alert>,
) {
    let totals = state.totals.clone();
    let requests = f64::from(window.requests);
    if window.requests < config.min_requests_for_ratio.max(1) {
        return;
    }
    for (metric, errors, long_run) in [
        (RATIO_4XX, window.status_4xx, totals.status_4xx),
        (RATIO_5XX, window.status_5xx, totals.status_5xx),
    ] {
        if failing & (1 << metric) == 0 || state.bucket.alerted & (1 << metric) != 0 {
            continue;
        }
        let usual = long_run / totals.requests;
        let observed = f64::from(errors) / requests;
        let spread = (usual * (1.0 - usual) / requests).sqrt().max(0.02);
        let deviations = (observed - usual) / spread;
        if observed - usual >= config.min_ratio_increase
            && deviations >= config.alert_deviations
            && poisson_upper_tail(f64::from(errors), requests * usual.max(0.01))
                <= config.alert_chance_probability
        {
            let found = Finding {
                metric,
                relative: deviations / config.alert_deviations,
                observed,
                expected: usual,
            };
            state.bucket.alerted |= 1 << metric;
            raise(state, key, found, now_ms, quiet_ms, false, alerts);
        }
    }
    if failing & (1 << VENDOR_AUTH) != 0 && state.bucket.alerted & (1 << VENDOR_AUTH) == 0 {
        let failures = f64::from(window.vendor_auth_failures);
        let expected = requests * totals.vendor_auth_failures / totals.requests;
        let deviations = (failures - expected) / expected.sqrt().max(1.0);
        if failures >= config.min_alert_count
            && failures >= config.alert_ratio * expected
            && deviations >= config.alert_deviations
            && poisson_upper_tail(failures, expected.max(0.1)) <= config.alert_chance_probability
        {
            let found = Finding {
                metric: VENDOR_AUTH,
                relative: deviations / config.alert_deviations,
                observed: failures,
                expected,
            };
            state.bucket.alerted |= 1 << VENDOR_AUTH;
            raise(state, key, found, now_ms, quiet_ms, false, alerts);
        }
    }
}

/// 5-minute steps in the slow volume check's window (at least one).
fn volume_window_steps(config: &EngineConfig) -> i64 {
    (i64::from(config.slow_volume_window_minutes) / VOLUME_STEP_MINUTES).max(1)
}

/// Slow volume, on caller and operation keys: bytes over the last
/// `slow_volume_window_minutes` (in 5-minute steps, the open minute included) against the
/// calls made in that time times the usual bytes per call (over the last ~`slow_volume_minutes`
/// minutes with calls). Catches a few hundred kilobytes a minute added for hours — below the
/// per-minute floor, and re-learned by the per-minute baseline within the hour — while a benign
/// step in the number of calls leaves bytes per call, and so this check, alone. Minutes whose
/// per-minute volume check fired are left out (that burst was reported), and the bytes must be
/// raised in at least half of the window's 5-minute steps, one of them among the last two, so
/// neither a burst nor the end of a slow leak lingers into an alert. Integration keys are left
/// out: their bytes per call move with the mix of callers through the day. Alerts at most once
/// an hour per key.
fn check_slow_volume(
    config: &EngineConfig,
    state: &mut KeyState,
    key: &MetricKey,
    now_ms: i64,
    alerts: &mut Vec<Alert>,
) {
    let totals = &state.totals;
    if key.caller.is_none()
        || f64::from(state.closed_minutes) < config.slow_volume_minutes
        || totals.minutes_with_calls < MIN_SLOW_VOLUME_MINUTES
    {
        return;
    }
    let bucket = &state.bucket;
    let steps = volume_window_steps(config);
    let current = bucket.minute.div_euclid(VOLUME_STEP_MINUTES);
    let oldest = current - steps + 1;
    let (open_request_bytes, open_response_bytes) = bucket.unalerted_bytes();
    let open = VolumeStep {
        step: current,
        requests: bucket.requests,
        request_bytes: open_request_bytes,
        response_bytes: open_response_bytes,
    };
    let window: Vec<VolumeStep> = state
        .volume_steps
        .iter()
        .filter(|step| step.step >= oldest && step.step < current)
        .copied()
        .chain(std::iter::once(
            match state
                .volume_steps
                .back()
                .filter(|last| last.step == current)
            {
                Some(closed) => VolumeStep {
                    requests: closed.requests + open.requests,
                    request_bytes: closed.request_bytes + open.request_bytes,
                    response_bytes: closed.response_bytes + open.response_bytes,
                    ..open
                },
                None => open,
            },
        ))
        .collect();
    let window_minutes = (bucket.minute - oldest * VOLUME_STEP_MINUTES + 1) as f64;
    let step_floor = config.min_alert_bytes / steps as f64;
    let checks = [
        (REQUEST_BYTES, totals.request_bytes_per_call),
        (RESPONSE_BYTES, totals.response_bytes_per_call),
    ];
    for (metric, bytes_per_call) in checks {
        if state.bucket.alerted & (1 << metric) != 0 {
            continue;
        }
        let bytes = |step: &VolumeStep| {
            if metric == REQUEST_BYTES {
                step.request_bytes
            } else {
                step.response_bytes
            }
        };
        let (mut observed, mut expected, mut raised_steps) = (0.0, 0.0, 0);
        let mut raised_lately = false;
        for step in &window {
            let step_bytes = bytes(step);
            let step_expected = f64::from(step.requests) * bytes_per_call;
            observed += step_bytes;
            expected += step_expected;
            if step_bytes - step_expected >= step_floor
                && step_bytes >= config.alert_ratio * step_expected
            {
                raised_steps += 1;
                raised_lately |= step.step >= current - 1;
            }
        }
        // Raised for half the window at least (sustained, not one burst), and still raised in
        // the last two steps (not the tail of something that stopped).
        if 2 * raised_steps >= steps
            && raised_lately
            && observed - expected >= config.min_alert_bytes
            && observed >= config.alert_ratio * expected
        {
            let found = Finding {
                metric,
                relative: observed / (config.alert_ratio * expected).max(1.0),
                observed: observed / window_minutes,
                expected: expected / window_minutes,
            };
            let quiet_ms = (config.alert_cooldown_seconds * 1_000).max(3_600_000);
            raise(state, key, found, now_ms, quiet_ms, false, alerts);
        }
    }
}

/// An upper bound of P(X ≥ k) for X ~ Poisson(λ): the first term times the geometric series
/// bounding the rest (1 when k ≤ λ).
fn poisson_upper_tail(k: f64, lambda: f64) -> f64 {
    let k = k.floor();
    if k <= lambda {
        return 1.0;
    }
    let log_factorial = if k < 1.0 {
        0.0
    } else {
        k * k.ln() - k + 0.5 * (std::f64::consts::TAU * k).ln() + 1.0 / (12.0 * k)
    };
    let first_term = (k * lambda.ln() - lambda - log_factorial).exp();
    (first_term / (1.0 - lambda / (k + 1.0))).min(1.0)
}

/// Closes the open bucket and any empty minutes up to `minute` into the baselines.
fn close_buckets(state: &mut KeyState, key: &MetricKey, minute: i64, config: &EngineConfig) {
    let alpha = 1.0 / config.relearn_minutes.max(1.0);
    let min_requests_for_ratio = config.min_requests_for_ratio;
    let keep_seasonal = state.closed_minutes >= config.warmup_minutes;
    let closed = std::mem::take(&mut state.bucket);
    for metric in 0..METRICS {
        if let Some(value) = closed.value(metric, min_requests_for_ratio) {
            if is_count_metric(metric) || closed.requests > 0 {
                state.baselines[metric].update(
                    value,
                    closed.minute,
                    alpha,
                    keep_seasonal && (is_count_metric(metric) || metric == LATENCY),
                    config.alert_ratio,
                );
            }
        }
    }
    state.closed_minutes = state.closed_minutes.saturating_add(1);
    let empty = minute - closed.minute - 1;
    state.totals.close(&closed, empty, config);
    state.previous_latency_ms = match closed.value(LATENCY, min_requests_for_ratio) {
        Some(latency) if empty == 0 => latency,
        _ => 0.0,
    };
    if key.caller.is_some() {
        // The slow volume check's steps (caller and operation keys).
        let (request_bytes, response_bytes) = closed.unalerted_bytes();
        let step = closed.minute.div_euclid(VOLUME_STEP_MINUTES);
        match state.volume_steps.back_mut() {
            Some(last) if last.step == step => {
                last.requests += closed.requests;
                last.request_bytes += request_bytes;
                last.response_bytes += response_bytes;
            }
            _ => state.volume_steps.push_back(VolumeStep {
                step,
                requests: closed.requests,
                request_bytes,
                response_bytes,
            }),
        }
        let oldest = minute.div_euclid(VOLUME_STEP_MINUTES) - volume_window_steps(config) + 1;
        while state
            .volume_steps
            .front()
            .is_some_and(|first| first.step < oldest)
        {
            state.volume_steps.pop_front();
        }
    }
    let window = config.window_minutes.saturating_sub(1) as usize;
    if window > 0 {
        state.recent.push_back(MinuteCounts::of(&closed));
        let zeros = usize::try_from(empty.max(0))
            .unwrap_or(usize::MAX)
            .min(window);
        state
            .recent
            .extend(std::iter::repeat_n(MinuteCounts::default(), zeros));
        while state.recent.len() > window {
            state.recent.pop_front();
        }
    } else {
        state.recent.clear();
    }
    let replayed = empty.clamp(0, MAX_GAP_FILL_MINUTES);
    for offset in 1..=replayed {
        let empty_minute = closed.minute + offset;
        for metric in 0..METRICS {
            if is_count_metric(metric) {
                // Empty minutes move the level; the seasonal profile learns active minutes.
                state.baselines[metric].update(0.0, empty_minute, alpha, false, 1.0);
            }
        }
    }
    if empty > replayed {
        for metric in 0..METRICS {
            if is_count_metric(metric) {
                state.baselines[metric].decay(empty - replayed, alpha);
            }
        }
    }
    state.closed_minutes = state
        .closed_minutes
        .saturating_add(u32::try_from(replayed).unwrap_or(u32::MAX));
    state.bucket = Bucket {
        minute,
        ..Bucket::default()
    };
}

#[cfg(test)]
mod tests {
    use super::poisson_upper_tail;

    #[test]
    fn poisson_tail_bounds_the_exact_value() {
        // P(X ≥ 5 | λ = 1) = 0.00366; P(X ≥ 17 | λ = 4.5) ≈ 1.1e-5 (upper bounds, within 2×).
        let tail = poisson_upper_tail(5.0, 1.0);
        assert!((0.00366..0.0075).contains(&tail), "{tail}");
        let tail = poisson_upper_tail(17.0, 4.5);
        assert!((5e-6..3e-5).contains(&tail), "{tail}");
        assert_eq!(poisson_upper_tail(3.0, 4.0), 1.0);
    }
}
