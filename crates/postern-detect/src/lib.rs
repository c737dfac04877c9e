//! # postern-detect
//!
//! Postern's anomaly detection, as sans-IO cores: values or gateway events and the current time
//! go in, scores or alerts come out.
//!
//! - [`univariate`]: a streaming detector for one numeric series (`update(timestamp, value) →
//!   score in [0, 1]`), measured on the Numenta Anomaly Benchmark.
//! - [`nab`]: a scorer implementing NAB v1.0's published rules (pure functions), the corpus
//!   loader [`nab::corpus`] and [`run_nab`], which runs the detector over the corpus and can
//!   write per-series score files.
//! - [`engine`]: behaviour baselines over gateway call events keyed per integration, caller and
//!   operation, emitting [`engine::Alert`]s; [`replay()`] runs it over an `events.jsonl` stream.
//! - [`simulate`]: a seeded simulator of multi-integration API traffic with labelled incidents
//!   and benign level shifts, and an evaluator scoring the engine's alerts against them
//!   (recall, time to detect, precision, false alerts per day); [`run_simulation`] runs both.
//!
//! ## What this crate is not
//!
//! It reads no clock and opens no socket: time always arrives as an argument. The detectors and
//! the engine never fail and never block. File IO happens only in [`nab::corpus`],
//! [`nab::run`] and [`mod@replay`], at the edges the CLI calls.

pub mod engine;
pub mod error;
pub mod nab;
pub mod replay;
pub mod simulate;
pub mod timestamp;
pub mod univariate;

pub use error::DetectError;
pub use nab::run::{run_nab, NabReport};
pub use replay::{replay, ReplayReport};
pub use simulate::{run_simulation, SimulationConfig, SimulationReport};
