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
//! authentication failures (status 401 `caller_unauthenticated`, attributed to the integration
//! named in the event, or `(none)`), and mean latency.
//!
//! A closed bucket updates the key's baseline for each metric: an exponentially weighted level
//! and mean absolute deviation (re-learning a new normal within about
//! [`EngineConfig::relearn_minutes`]) and, for counts and byte volumes, a seasonal profile by
//! hour of day × weekday/weekend. The expected value is the larger of the level and the
//! seasonal value, so the daily ramp does not alert and a benign level shift stops alerting
//! once the level has caught up. The open bucket is checked on every event, so a spike alerts
//! within seconds, not at the end of the minute.
//!
//! Novelty: a caller new to an integration, an operation or source address new to a caller, and
//! an hour of the week the caller rarely uses — each only after a warm-up.
//!
//! ## Bounded memory
//! At most [`EngineConfig::max_keys`] keys; keys idle longer than
//! [`EngineConfig::idle_eviction_seconds`] are evicted, and past the cap the least recently
//! seen are evicted first. Novelty sets are capped per key. Seasonal profiles are allocated
//! only for keys that have lived through their warm-up.

use std::collections::HashMap;

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
    pub integration: Option<String>,
    #[serde(default)]
    pub caller: Option<String>,
    #[serde(default)]
    pub operation: Option<String>,
    pub status: u16,
    #[serde(default)]
    pub request_bytes: u64,
    #[serde(default)]
    pub response_bytes: u64,
    #[serde(default)]
    pub duration_ms: f64,
    #[serde(default)]
    pub source_ip: Option<String>,
    #[serde(default)]
    pub decision: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
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
    /// Novelty alerts start once the integration (and, for a caller's novelties, the caller)
    /// has been seen for this long.
    pub novelty_warmup_seconds: i64,
    /// An hour of the week is "off hours" for a caller when it holds less than this share of the
    /// caller's activity, after `off_hours_min_events` events.
    pub off_hours_max_share: f64,
    pub off_hours_min_events: u64,
    /// And only once the caller has been seen for this long (a week: every hour of the week
    /// has had its chance).
    pub off_hours_warmup_seconds: i64,
    /// The same alert (key and kind) is not repeated within this many seconds.
    pub alert_cooldown_seconds: i64,
    /// Most keys kept; past it the least recently seen are evicted.
    pub max_keys: usize,
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
            novelty_warmup_seconds: 86_400,
            off_hours_max_share: 0.002,
            off_hours_min_events: 5_000,
            off_hours_warmup_seconds: 7 * 86_400,
            alert_cooldown_seconds: 600,
            max_keys: 50_000,
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
const MINUTE_MS: i64 = 60_000;
/// Empty minutes replayed one by one into a baseline after a gap; longer gaps decay in closed
/// form.
const MAX_GAP_FILL_MINUTES: i64 = 1_440;

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
    fn update(&mut self, value: f64, slot: usize, alpha: f64, keep_seasonal: bool) {
        if self.updates == 0 {
            self.level = value;
        } else {
            let error = value - self.level;
            self.level += alpha * error;
            self.deviation += alpha * (error.abs() - self.deviation);
        }
        self.updates = self.updates.saturating_add(1);
        if keep_seasonal {
            let seasonal = self.seasonal.get_or_insert_with(|| {
                Box::new(Seasonal {
                    mean: vec![0.0; SEASONAL_SLOTS],
                    minutes: vec![0; SEASONAL_SLOTS],
                })
            });
            let minutes = &mut seasonal.minutes[slot];
            *minutes = minutes.saturating_add(1);
            // Running mean for the first week of a slot's minutes, then exponential.
            let weight = 1.0 / f64::from((*minutes).min(7 * 60));
            let mean = &mut seasonal.mean[slot];
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
            .filter(|seasonal| seasonal.minutes[slot] >= 30)
            .map_or(0.0, |seasonal| f64::from(seasonal.mean[slot]));
        self.level.max(seasonal)
    }
}

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
    /// Metrics that already alerted in this minute (bit per metric).
    alerted: u8,
}

impl Bucket {
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
            _ => (self.latency_count >= min_requests_for_ratio)
                .then(|| self.latency_sum_ms / f64::from(self.latency_count)),
        }
    }
}

/// Novelty memory of a key: names first seen, with when they were last seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct NoveltySet {
    entries: HashMap<String, i64>,
}

impl NoveltySet {
    /// Records `name`; true when it was not known. Past `cap` the stalest entry is forgotten.
    fn insert(&mut self, name: &str, now_ms: i64, cap: usize) -> bool {
        if let Some(last_seen) = self.entries.get_mut(name) {
            *last_seen = now_ms;
            return false;
        }
        if self.entries.len() >= cap.max(1) {
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
        true
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
    /// Integration keys: callers seen. Caller keys: operations and source addresses seen.
    callers: NoveltySet,
    operations: NoveltySet,
    sources: NoveltySet,
    /// Caller keys: events per hour of the week.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    hours: Vec<u32>,
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
            callers: NoveltySet::default(),
            operations: NoveltySet::default(),
            sources: NoveltySet::default(),
            hours: Vec::new(),
        }
    }
}

/// A key: an integration, optionally narrowed to a caller and an operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MetricKey {
    pub integration: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// The engine's whole state, for persisting across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    pub version: u32,
    pub config: EngineConfig,
    keys: Vec<(MetricKey, KeyState)>,
}

/// Current snapshot format.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The name used for events that carry no integration.
pub const NO_INTEGRATION: &str = "(none)";

/// The behaviour-baseline engine.
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
    keys: HashMap<MetricKey, KeyState>,
    last_sweep_ms: i64,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            keys: HashMap::new(),
            last_sweep_ms: i64::MIN,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Keys currently tracked.
    pub fn key_count(&self) -> usize {
        self.keys.len()
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
        Self {
            config: snapshot.config,
            keys: snapshot.keys.into_iter().collect(),
            last_sweep_ms: i64::MIN,
        }
    }

    /// Feeds one event; `now_ms` is the current time (in replay, the event's time). Returns the
    /// alerts it raised.
    pub fn observe(&mut self, event: &DetectEvent, now_ms: i64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        self.sweep(now_ms);
        let integration = event
            .integration
            .clone()
            .unwrap_or_else(|| NO_INTEGRATION.to_owned());
        let minute = event.time_unix_ms.div_euclid(MINUTE_MS);

        let integration_key = MetricKey {
            integration: integration.clone(),
            caller: None,
            operation: None,
        };
        self.observe_key(&integration_key, event, minute, now_ms, &mut alerts);
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
        let alert = |kind: AlertKind, score: f64, observed: f64, operation: Option<String>| Alert {
            time: format_rfc3339_millis(now_ms),
            integration: caller_key.integration.clone(),
            caller: caller_key.caller.clone(),
            operation,
            kind,
            score,
            observed,
            baseline: 0.0,
        };
        if let Some(integration_state) = self.keys.get_mut(integration_key) {
            let integration_warm = now_ms - integration_state.first_seen_ms >= warm_ms;
            if integration_state
                .callers
                .insert(caller, now_ms, config.max_novelty_entries)
                && integration_warm
            {
                alerts.push(alert(
                    AlertKind::NewCaller,
                    0.8,
                    1.0,
                    event.operation.clone(),
                ));
            }
        }
        let minute = event.time_unix_ms.div_euclid(MINUTE_MS);
        let state = self
            .keys
            .entry(caller_key.clone())
            .or_insert_with(|| KeyState::new(now_ms, minute));
        let caller_warm = now_ms - state.first_seen_ms >= warm_ms;
        if let Some(operation) = &event.operation {
            if state
                .operations
                .insert(operation, now_ms, config.max_novelty_entries)
                && caller_warm
            {
                alerts.push(alert(
                    AlertKind::NewOperation,
                    0.5,
                    1.0,
                    Some(operation.clone()),
                ));
            }
        }
        if let Some(source) = &event.source_ip {
            if state
                .sources
                .insert(source, now_ms, config.max_novelty_entries)
                && caller_warm
            {
                alerts.push(alert(
                    AlertKind::NewSource,
                    0.7,
                    1.0,
                    event.operation.clone(),
                ));
            }
        }
        if state.hours.is_empty() {
            state.hours = vec![0; 168];
        }
        let hour = hour_of_week(event.time_unix_ms.div_euclid(1_000));
        let total: u64 = state.hours.iter().map(|&count| u64::from(count)).sum();
        let share = f64::from(state.hours[hour]) / total.max(1) as f64;
        state.hours[hour] = state.hours[hour].saturating_add(1);
        let week_old = now_ms - state.first_seen_ms >= config.off_hours_warmup_seconds * 1_000;
        let rare =
            week_old && total >= config.off_hours_min_events && share < config.off_hours_max_share;
        if rare
            && state
                .last_alert_ms
                .get(&AlertKind::OffHours)
                .is_none_or(|&last| now_ms - last >= 3_600_000)
        {
            state.last_alert_ms.insert(AlertKind::OffHours, now_ms);
            let score = 0.4 + 0.4 * (1.0 - share / config.off_hours_max_share);
            alerts.push(alert(
                AlertKind::OffHours,
                score,
                share,
                event.operation.clone(),
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
        let alpha = 1.0 / self.config.relearn_minutes.max(1.0);
        let state = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| KeyState::new(now_ms, minute));
        state.last_seen_ms = state.last_seen_ms.max(now_ms);
        if minute > state.bucket.minute {
            close_buckets(
                state,
                minute,
                alpha,
                self.config.warmup_minutes,
                self.config.min_requests_for_ratio,
            );
        }
        // Events older than the open minute (out of order) still count in it.
        let bucket = &mut state.bucket;
        let caller_auth_failure = event.reason.as_deref() == Some("caller_unauthenticated");
        bucket.requests += 1;
        bucket.request_bytes += event.request_bytes as f64;
        bucket.response_bytes += event.response_bytes as f64;
        if caller_auth_failure {
            bucket.caller_auth_failures += 1;
        } else if (400..500).contains(&event.status) {
            bucket.status_4xx += 1;
        } else if event.status >= 500 {
            bucket.status_5xx += 1;
        }
        let forwarded = event
            .reason
            .as_deref()
            .is_none_or(|reason| reason == "granted");
        if forwarded && matches!(event.status, 401 | 403) {
            bucket.vendor_auth_failures += 1;
        }
        if forwarded && event.duration_ms.is_finite() && event.duration_ms >= 0.0 {
            bucket.latency_sum_ms += event.duration_ms;
            bucket.latency_count += 1;
        }
        if state.closed_minutes < self.config.warmup_minutes {
            return;
        }
        let slot = seasonal_slot(state.bucket.minute * MINUTE_MS);
        for metric in 0..METRICS {
            if state.bucket.alerted & (1 << metric) != 0 {
                continue;
            }
            let Some(observed) = state
                .bucket
                .value(metric, self.config.min_requests_for_ratio)
            else {
                continue;
            };
            let baseline = &state.baselines[metric];
            if baseline.updates == 0 && !is_count_metric(metric) {
                continue;
            }
            let expected = baseline.expected(slot);
            let (spread_floor, least_increase) = match metric {
                RATE | VENDOR_AUTH | CALLER_AUTH => {
                    (expected.sqrt().max(1.0), self.config.min_alert_count)
                }
                REQUEST_BYTES | RESPONSE_BYTES => (expected * 0.1, self.config.min_alert_bytes),
                RATIO_4XX | RATIO_5XX => (0.02, self.config.min_ratio_increase),
                _ => (expected * 0.1, self.config.min_latency_increase_ms),
            };
            let spread = baseline.deviation.max(spread_floor).max(1e-9);
            let deviations = (observed - expected) / spread;
            let high_enough = match metric {
                RATE | VENDOR_AUTH | CALLER_AUTH | REQUEST_BYTES | RESPONSE_BYTES => {
                    observed >= least_increase && observed >= self.config.alert_ratio * expected
                }
                RATIO_4XX | RATIO_5XX => observed - expected >= least_increase,
                _ => observed - expected >= least_increase && observed >= 2.0 * expected,
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
                && deviations >= self.config.alert_deviations
                && chance <= self.config.alert_chance_probability)
            {
                continue;
            }
            let kind = metric_kind(metric);
            state.bucket.alerted |= 1 << metric;
            let cooled = state
                .last_alert_ms
                .get(&kind)
                .is_none_or(|&last| now_ms - last >= self.config.alert_cooldown_seconds * 1_000);
            if !cooled {
                continue;
            }
            state.last_alert_ms.insert(kind, now_ms);
            let relative = deviations / self.config.alert_deviations;
            alerts.push(Alert {
                time: format_rfc3339_millis(now_ms),
                integration: key.integration.clone(),
                caller: key.caller.clone(),
                operation: key.operation.clone(),
                kind,
                score: (1.0 - 1.0 / (1.0 + relative * relative)).clamp(0.0, 1.0),
                observed,
                baseline: expected,
            });
        }
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
        self.keys
            .retain(|_, state| now_ms.saturating_sub(state.last_seen_ms) <= idle_ms);
        if self.keys.len() + 3 > cap {
            // Evict down to 90 % of the cap at once, so eviction is amortized O(1) per event.
            let keep = cap - cap.div_ceil(10).max(1);
            let mut last_seen: Vec<i64> =
                self.keys.values().map(|state| state.last_seen_ms).collect();
            let drop = last_seen.len() - keep;
            let (_, &mut cutoff, _) = last_seen.select_nth_unstable(drop.saturating_sub(1));
            let mut to_drop = drop;
            self.keys.retain(|_, state| {
                if to_drop > 0 && state.last_seen_ms <= cutoff {
                    to_drop -= 1;
                    false
                } else {
                    true
                }
            });
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
fn close_buckets(
    state: &mut KeyState,
    minute: i64,
    alpha: f64,
    warmup_minutes: u32,
    min_requests_for_ratio: u32,
) {
    let keep_seasonal = state.closed_minutes >= warmup_minutes;
    let closed = std::mem::take(&mut state.bucket);
    let slot = seasonal_slot(closed.minute * MINUTE_MS);
    for metric in 0..METRICS {
        if let Some(value) = closed.value(metric, min_requests_for_ratio) {
            if is_count_metric(metric) || closed.requests > 0 {
                state.baselines[metric].update(
                    value,
                    slot,
                    alpha,
                    keep_seasonal && is_count_metric(metric),
                );
            }
        }
    }
    state.closed_minutes = state.closed_minutes.saturating_add(1);
    let empty = minute - closed.minute - 1;
    let replayed = empty.clamp(0, MAX_GAP_FILL_MINUTES);
    for offset in 1..=replayed {
        let empty_minute = closed.minute + offset;
        let slot = seasonal_slot(empty_minute * MINUTE_MS);
        for metric in 0..METRICS {
            if is_count_metric(metric) {
                state.baselines[metric].update(0.0, slot, alpha, keep_seasonal);
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
