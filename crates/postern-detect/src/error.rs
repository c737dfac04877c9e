use std::path::PathBuf;

/// Errors of the IO edges of this crate (corpus loading, replay, simulation output). The
/// detectors themselves cannot fail.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot read {path}: {source}; check the path and permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}; check that the directory is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: window [{start}, {end}] matches no rows of the series; is this the windows file for this corpus?")]
    WindowOutsideSeries {
        path: PathBuf,
        start: String,
        end: String,
    },
    #[error("events line {line}: {message}")]
    Event { line: usize, message: String },
    #[error("cannot write alerts: {0}")]
    AlertOutput(std::io::Error),
    #[error("cannot write the simulation's output: {0}")]
    SimulationOutput(std::io::Error),
}
