//! The simulated estate: four vendor integrations, the services that call them, their
//! operations, and how each behaves (sizes, latencies, error rates, daily and weekly rhythm).
//!
//! Sizes and latencies are log-normal (median and log-space standard deviation); the medians
//! are of the order of the real APIs' payloads (a Stripe charge object is ~2.5 kB, a chat
//! completion's prompt a few kB, a Salesforce bulk result megabytes).

/// A log-normal quantity: its median and the standard deviation of its logarithm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LogNormal {
    pub median: f64,
    pub sigma: f64,
}

const fn ln(median: f64, sigma: f64) -> LogNormal {
    LogNormal { median, sigma }
}

/// One vendor operation, as the gateway's config declares it.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub name: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub request_bytes: LogNormal,
    pub response_bytes: LogNormal,
    pub latency_ms: LogNormal,
}

const fn op(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    request_bytes: LogNormal,
    response_bytes: LogNormal,
    latency_ms: LogNormal,
) -> Operation {
    Operation {
        name,
        method,
        path,
        request_bytes,
        response_bytes,
        latency_ms,
    }
}

const NONE: LogNormal = ln(0.0, 0.0);

#[derive(Debug, Clone)]
pub(crate) struct Integration {
    pub name: &'static str,
    /// The vendor address the gateway dials (documentation range).
    pub upstream_addr: &'static str,
    pub operations: Vec<Operation>,
    /// Share of forwarded calls the vendor answers 4xx (declined cards, not found, validation).
    pub client_error_rate: f64,
    /// Share answered 5xx.
    pub server_error_rate: f64,
    /// Share answered 429 by the vendor.
    pub vendor_throttle_rate: f64,
    /// The operation an attacker uploads through (big request bodies).
    pub upload_operation: &'static str,
    /// The operation an attacker bulk-reads through (big responses).
    pub bulk_read_operation: &'static str,
}

impl Integration {
    pub(crate) fn operation(&self, name: &str) -> usize {
        self.operations
            .iter()
            .position(|operation| operation.name == name)
            .unwrap_or_else(|| panic!("{}: no operation {name}", self.name))
    }
}

/// How a caller's call rate moves through the day and the week (UTC).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Shape {
    /// Driven by people: a daily cycle from `night_floor` of the peak at 03:00 to the peak at
    /// 15:00, times `weekend_factor` on Saturday and Sunday.
    Interactive {
        night_floor: f64,
        weekend_factor: f64,
    },
    /// A weekday back-office job: on from about `from_hour` to `to_hour` (start and stop vary
    /// by up to half an hour from day to day), off at night and at weekends.
    BusinessHours { from_hour: f64, to_hour: f64 },
    /// A daily batch job running every day from `from_minute` to `to_minute` of the day.
    DailyBatch { from_minute: u32, to_minute: u32 },
}

#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub name: &'static str,
    pub integration: usize,
    pub shape: Shape,
    /// Calls per minute at the top of the daily cycle.
    pub peak_per_minute: f64,
    /// Operations (indices into the integration's) with their relative weights.
    pub operations: Vec<(usize, f64)>,
    /// The addresses its instances call from.
    pub sources: Vec<&'static str>,
    /// The write operation a slow exfiltration would hide in (None: the caller only reads).
    pub write_operation: Option<usize>,
}

impl Caller {
    /// The caller's relative activity (0..=1 of its peak) at unix millisecond `time_ms`;
    /// `day_jitter` in [0, 1) is drawn once per day and moves business hours' start and stop.
    pub(crate) fn activity(&self, time_ms: i64, day_jitter: f64) -> f64 {
        let seconds = time_ms.div_euclid(1_000);
        let hour_of_week = crate::timestamp::hour_of_week(seconds);
        let weekend = hour_of_week >= 5 * 24;
        let hour = seconds.rem_euclid(86_400) as f64 / 3_600.0;
        match self.shape {
            Shape::Interactive {
                night_floor,
                weekend_factor,
            } => {
                let cycle = 0.5 - 0.5 * (std::f64::consts::TAU * (hour - 3.0) / 24.0).cos();
                let level = night_floor + (1.0 - night_floor) * cycle.powf(1.5);
                if weekend {
                    level * weekend_factor
                } else {
                    level
                }
            }
            Shape::BusinessHours { from_hour, to_hour } => {
                // `day_jitter` in [0, 1) moves start and stop by up to ±15 minutes.
                let shift = (day_jitter - 0.5) * 0.5;
                let (from, to) = (from_hour + shift, to_hour + shift);
                if weekend || hour < from || hour >= to {
                    0.0
                } else {
                    // Half an hour of ramp at each end.
                    ((hour - from) * 2.0).min((to - hour) * 2.0).clamp(0.2, 1.0)
                }
            }
            Shape::DailyBatch {
                from_minute,
                to_minute,
            } => {
                let minute = (seconds.rem_euclid(86_400) / 60) as u32;
                if (from_minute..to_minute).contains(&minute) {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// The whole estate.
#[derive(Debug, Clone)]
pub(crate) struct Estate {
    pub integrations: Vec<Integration>,
    pub callers: Vec<Caller>,
}

const INTERACTIVE: Shape = Shape::Interactive {
    night_floor: 0.12,
    weekend_factor: 0.45,
};

/// The default estate: Stripe, Twilio, OpenAI and Salesforce, nine callers.
pub(crate) fn default_estate() -> Estate {
    let stripe = Integration {
        name: "stripe",
        upstream_addr: "192.0.2.10:443",
        operations: vec![
            op(
                "create_charge",
                "POST",
                "/v1/charges",
                ln(900.0, 0.3),
                ln(2_600.0, 0.2),
                ln(320.0, 0.35),
            ),
            op(
                "get_charge",
                "GET",
                "/v1/charges/{id}",
                NONE,
                ln(2_600.0, 0.2),
                ln(150.0, 0.3),
            ),
            op(
                "create_customer",
                "POST",
                "/v1/customers",
                ln(600.0, 0.4),
                ln(1_800.0, 0.2),
                ln(220.0, 0.3),
            ),
            op(
                "get_customer",
                "GET",
                "/v1/customers/{id}",
                NONE,
                ln(1_800.0, 0.2),
                ln(140.0, 0.3),
            ),
            op(
                "list_customers",
                "GET",
                "/v1/customers",
                NONE,
                ln(25_000.0, 0.6),
                ln(380.0, 0.4),
            ),
            op(
                "create_refund",
                "POST",
                "/v1/refunds",
                ln(300.0, 0.3),
                ln(1_200.0, 0.2),
                ln(350.0, 0.35),
            ),
            op(
                "list_balance_transactions",
                "GET",
                "/v1/balance_transactions",
                NONE,
                ln(40_000.0, 0.5),
                ln(450.0, 0.4),
            ),
            op(
                "get_balance",
                "GET",
                "/v1/balance",
                NONE,
                ln(700.0, 0.1),
                ln(120.0, 0.3),
            ),
            op(
                "list_payouts",
                "GET",
                "/v1/payouts",
                NONE,
                ln(15_000.0, 0.5),
                ln(300.0, 0.4),
            ),
            op(
                "upload_file",
                "POST",
                "/v1/files",
                ln(150_000.0, 1.0),
                ln(600.0, 0.2),
                ln(900.0, 0.5),
            ),
            op(
                "delete_customer",
                "DELETE",
                "/v1/customers/{id}",
                NONE,
                ln(200.0, 0.1),
                ln(200.0, 0.3),
            ),
            op(
                "update_account",
                "POST",
                "/v1/account",
                ln(800.0, 0.3),
                ln(3_000.0, 0.2),
                ln(300.0, 0.3),
            ),
            op(
                "create_payout",
                "POST",
                "/v1/payouts",
                ln(300.0, 0.2),
                ln(1_000.0, 0.2),
                ln(400.0, 0.3),
            ),
            op(
                "list_events",
                "GET",
                "/v1/events",
                NONE,
                ln(60_000.0, 0.6),
                ln(420.0, 0.4),
            ),
        ],
        client_error_rate: 0.025,
        server_error_rate: 0.002,
        vendor_throttle_rate: 0.001,
        upload_operation: "upload_file",
        bulk_read_operation: "list_events",
    };
    let twilio = Integration {
        name: "twilio",
        upstream_addr: "192.0.2.11:443",
        operations: vec![
            op(
                "send_sms",
                "POST",
                "/2010-04-01/Accounts/{AccountSid}/Messages.json",
                ln(350.0, 0.3),
                ln(900.0, 0.15),
                ln(210.0, 0.3),
            ),
            op(
                "get_message",
                "GET",
                "/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json",
                NONE,
                ln(900.0, 0.15),
                ln(110.0, 0.3),
            ),
            op(
                "list_messages",
                "GET",
                "/2010-04-01/Accounts/{AccountSid}/Messages.json",
                NONE,
                ln(30_000.0, 0.6),
                ln(300.0, 0.4),
            ),
            op(
                "create_call",
                "POST",
                "/2010-04-01/Accounts/{AccountSid}/Calls.json",
                ln(400.0, 0.3),
                ln(1_100.0, 0.15),
                ln(260.0, 0.3),
            ),
            op(
                "lookup_phone_number",
                "GET",
                "/v2/PhoneNumbers/{PhoneNumber}",
                NONE,
                ln(600.0, 0.2),
                ln(160.0, 0.3),
            ),
            op(
                "start_verification",
                "POST",
                "/v2/Services/{ServiceSid}/Verifications",
                ln(120.0, 0.2),
                ln(700.0, 0.15),
                ln(240.0, 0.3),
            ),
            op(
                "check_verification",
                "POST",
                "/v2/Services/{ServiceSid}/VerificationCheck",
                ln(100.0, 0.2),
                ln(500.0, 0.15),
                ln(200.0, 0.3),
            ),
            op(
                "list_recordings",
                "GET",
                "/2010-04-01/Accounts/{AccountSid}/Recordings.json",
                NONE,
                ln(20_000.0, 0.5),
                ln(280.0, 0.4),
            ),
            op(
                "delete_recording",
                "DELETE",
                "/2010-04-01/Accounts/{AccountSid}/Recordings/{Sid}.json",
                NONE,
                ln(0.0, 0.0),
                ln(180.0, 0.3),
            ),
            op(
                "create_asset_version",
                "POST",
                "/v1/Services/{ServiceSid}/Assets/{Sid}/Versions",
                ln(200_000.0, 1.0),
                ln(800.0, 0.2),
                ln(700.0, 0.5),
            ),
            op(
                "list_usage_records",
                "GET",
                "/2010-04-01/Accounts/{AccountSid}/Usage/Records.json",
                NONE,
                ln(50_000.0, 0.5),
                ln(350.0, 0.4),
            ),
            op(
                "update_account",
                "POST",
                "/2010-04-01/Accounts/{AccountSid}.json",
                ln(200.0, 0.2),
                ln(900.0, 0.1),
                ln(220.0, 0.3),
            ),
        ],
        client_error_rate: 0.02,
        server_error_rate: 0.002,
        vendor_throttle_rate: 0.002,
        upload_operation: "create_asset_version",
        bulk_read_operation: "list_messages",
    };
    let openai = Integration {
        name: "openai",
        upstream_addr: "192.0.2.12:443",
        operations: vec![
            op(
                "chat_completion",
                "POST",
                "/v1/chat/completions",
                ln(3_500.0, 0.8),
                ln(1_800.0, 0.6),
                ln(1_800.0, 0.6),
            ),
            op(
                "create_embedding",
                "POST",
                "/v1/embeddings",
                ln(6_000.0, 0.7),
                ln(12_000.0, 0.3),
                ln(350.0, 0.4),
            ),
            op(
                "list_models",
                "GET",
                "/v1/models",
                NONE,
                ln(8_000.0, 0.1),
                ln(90.0, 0.3),
            ),
            op(
                "moderation",
                "POST",
                "/v1/moderations",
                ln(1_200.0, 0.6),
                ln(700.0, 0.1),
                ln(250.0, 0.3),
            ),
            op(
                "upload_file",
                "POST",
                "/v1/files",
                ln(400_000.0, 1.0),
                ln(400.0, 0.1),
                ln(1_200.0, 0.5),
            ),
            op(
                "create_batch",
                "POST",
                "/v1/batches",
                ln(300.0, 0.2),
                ln(800.0, 0.1),
                ln(300.0, 0.3),
            ),
            op(
                "list_files",
                "GET",
                "/v1/files",
                NONE,
                ln(5_000.0, 0.5),
                ln(150.0, 0.3),
            ),
            op(
                "retrieve_file_content",
                "GET",
                "/v1/files/{file_id}/content",
                NONE,
                ln(300_000.0, 1.0),
                ln(900.0, 0.5),
            ),
            op(
                "delete_file",
                "DELETE",
                "/v1/files/{file_id}",
                NONE,
                ln(100.0, 0.1),
                ln(150.0, 0.3),
            ),
            op(
                "list_fine_tuning_jobs",
                "GET",
                "/v1/fine_tuning/jobs",
                NONE,
                ln(6_000.0, 0.5),
                ln(200.0, 0.3),
            ),
        ],
        client_error_rate: 0.01,
        server_error_rate: 0.003,
        vendor_throttle_rate: 0.005,
        upload_operation: "upload_file",
        bulk_read_operation: "retrieve_file_content",
    };
    let salesforce = Integration {
        name: "salesforce",
        upstream_addr: "192.0.2.13:443",
        operations: vec![
            op(
                "query",
                "GET",
                "/services/data/v59.0/query",
                NONE,
                ln(18_000.0, 0.9),
                ln(420.0, 0.5),
            ),
            op(
                "get_record",
                "GET",
                "/services/data/v59.0/sobjects/{sobject}/{id}",
                NONE,
                ln(3_500.0, 0.4),
                ln(180.0, 0.3),
            ),
            op(
                "update_record",
                "PATCH",
                "/services/data/v59.0/sobjects/{sobject}/{id}",
                ln(900.0, 0.5),
                ln(0.0, 0.0),
                ln(260.0, 0.3),
            ),
            op(
                "create_record",
                "POST",
                "/services/data/v59.0/sobjects/{sobject}",
                ln(1_100.0, 0.5),
                ln(120.0, 0.1),
                ln(300.0, 0.3),
            ),
            op(
                "describe_sobject",
                "GET",
                "/services/data/v59.0/sobjects/{sobject}/describe",
                NONE,
                ln(90_000.0, 0.3),
                ln(350.0, 0.3),
            ),
            op(
                "composite",
                "POST",
                "/services/data/v59.0/composite",
                ln(8_000.0, 0.7),
                ln(5_000.0, 0.5),
                ln(600.0, 0.4),
            ),
            op(
                "bulk_ingest",
                "PUT",
                "/services/data/v59.0/jobs/ingest/{jobId}/batches",
                ln(2_000_000.0, 0.8),
                ln(0.0, 0.0),
                ln(1_500.0, 0.4),
            ),
            op(
                "bulk_query_results",
                "GET",
                "/services/data/v59.0/jobs/query/{jobId}/results",
                NONE,
                ln(2_000_000.0, 0.8),
                ln(1_500.0, 0.4),
            ),
            op(
                "delete_record",
                "DELETE",
                "/services/data/v59.0/sobjects/{sobject}/{id}",
                NONE,
                ln(0.0, 0.0),
                ln(220.0, 0.3),
            ),
            op(
                "get_user_info",
                "GET",
                "/services/oauth2/userinfo",
                NONE,
                ln(1_500.0, 0.1),
                ln(120.0, 0.3),
            ),
            op(
                "list_sobjects",
                "GET",
                "/services/data/v59.0/sobjects",
                NONE,
                ln(250_000.0, 0.2),
                ln(400.0, 0.3),
            ),
        ],
        client_error_rate: 0.015,
        server_error_rate: 0.002,
        vendor_throttle_rate: 0.001,
        upload_operation: "bulk_ingest",
        bulk_read_operation: "bulk_query_results",
    };
    let integrations = vec![stripe, twilio, openai, salesforce];
    let caller = |name: &'static str,
                  integration: usize,
                  shape: Shape,
                  peak_per_minute: f64,
                  operations: &[(&str, f64)],
                  sources: &[&'static str],
                  write_operation: Option<&str>| {
        let model: &Integration = &integrations[integration];
        Caller {
            name,
            integration,
            shape,
            peak_per_minute,
            operations: operations
                .iter()
                .map(|(name, weight)| (model.operation(name), *weight))
                .collect(),
            sources: sources.to_vec(),
            write_operation: write_operation.map(|name| model.operation(name)),
        }
    };
    let business = Shape::BusinessHours {
        from_hour: 8.0,
        to_hour: 18.0,
    };
    let callers = vec![
        caller(
            "checkout",
            0,
            INTERACTIVE,
            10.0,
            &[
                ("create_charge", 45.0),
                ("get_charge", 30.0),
                ("create_customer", 15.0),
                ("get_customer", 10.0),
            ],
            &["10.20.1.11", "10.20.1.12", "10.20.1.13"],
            Some("create_customer"),
        ),
        caller(
            "billing",
            0,
            business,
            5.0,
            &[
                ("get_charge", 40.0),
                ("create_refund", 20.0),
                ("list_customers", 15.0),
                ("get_balance", 10.0),
                ("list_payouts", 10.0),
                ("list_balance_transactions", 5.0),
            ],
            &["10.20.2.21"],
            Some("create_refund"),
        ),
        caller(
            "reconciliation",
            0,
            Shape::DailyBatch {
                from_minute: 2 * 60,
                to_minute: 2 * 60 + 40,
            },
            20.0,
            &[("list_balance_transactions", 60.0), ("get_charge", 40.0)],
            &["10.20.3.31"],
            None,
        ),
        caller(
            "notifier",
            1,
            INTERACTIVE,
            6.0,
            &[
                ("send_sms", 70.0),
                ("get_message", 20.0),
                ("create_call", 10.0),
            ],
            &["10.20.4.41", "10.20.4.42"],
            Some("send_sms"),
        ),
        caller(
            "otp",
            1,
            INTERACTIVE,
            9.0,
            &[
                ("start_verification", 50.0),
                ("check_verification", 45.0),
                ("lookup_phone_number", 5.0),
            ],
            &["10.20.5.51", "10.20.5.52", "10.20.5.53"],
            Some("start_verification"),
        ),
        caller(
            "assistant",
            2,
            INTERACTIVE,
            5.0,
            &[
                ("chat_completion", 80.0),
                ("moderation", 18.0),
                ("list_models", 2.0),
            ],
            &["10.20.6.61", "10.20.6.62"],
            Some("chat_completion"),
        ),
        caller(
            "summarizer",
            2,
            business,
            3.0,
            &[("chat_completion", 60.0), ("create_embedding", 40.0)],
            &["10.20.7.71"],
            Some("chat_completion"),
        ),
        caller(
            "crm-sync",
            3,
            business,
            6.0,
            &[
                ("query", 30.0),
                ("get_record", 30.0),
                ("update_record", 25.0),
                ("create_record", 15.0),
            ],
            &["10.20.8.81"],
            Some("create_record"),
        ),
        caller(
            "support-portal",
            3,
            INTERACTIVE,
            4.0,
            &[
                ("get_record", 60.0),
                ("query", 25.0),
                ("update_record", 15.0),
            ],
            &["10.20.9.91", "10.20.9.92"],
            Some("update_record"),
        ),
    ];
    Estate {
        integrations,
        callers,
    }
}
