//! The library's one error type, in the user's terms. The binary maps [`Error::is_bad_input`]
//! to exit status 2.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A grid file that cannot be used: syntax, unknown keys, invalid values.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Grid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    /// A dataset that cannot be read: which file, which record, what was expected.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },

    /// A store that cannot be used (not SQLite, a newer schema, unwritable, unreachable). `db`
    /// is its path, or its URL with the password masked.
    #[error("database {db}: {message}")]
    Store { db: String, message: String },

    /// Bad input that is not tied to a file (a command-line value, an unknown trial).
    #[error("{0}")]
    Usage(String),

    /// Another runner took the trial over (this one's heartbeats stopped for too long): the
    /// trial's results are now that runner's to record.
    #[error("trial {trial} was taken over by runner {by}")]
    TakenOver { trial: i64, by: String },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Io(#[from] std::io::Error),

    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Whether the user can fix this by changing their input (exit status 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::Grid { .. } | Error::Data { .. } | Error::Store { .. } | Error::Usage(_)
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
