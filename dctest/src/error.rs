//! The error type of every fixture.

use std::time::Duration;

/// Why a fixture could not be set up or could not do what a test asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A local I/O operation failed (files, sockets, spawning processes).
    #[error("{context}: {source}")]
    Io {
        /// What the fixture was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A server did not become ready in time.
    #[error("{what} was not ready within {timeout:?} (last error: {last_error})")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long the fixture waited.
        timeout: Duration,
        /// The last error seen while polling.
        last_error: String,
    },
    /// A process started by a fixture exited while it should have kept running.
    #[error("process {name} exited early ({status}); output: {output}")]
    ProcessExited {
        /// Name of the process.
        name: String,
        /// Its exit status.
        status: String,
        /// The end of its log, when known.
        output: String,
    },
    /// An HTTP request could not be sent or its answer could not be read.
    #[error("{method} {url}: {message}")]
    Http {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// An HTTP request got an unexpected status code.
    #[error("{method} {url}: unexpected HTTP status {status}: {body}")]
    HttpStatus {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// The status code received.
        status: u16,
        /// The beginning of the response body.
        body: String,
    },
    /// A server answered something the fixture did not expect.
    #[error("{method} {url}: unexpected response: {message}")]
    UnexpectedResponse {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// What was wrong with the answer.
        message: String,
    },
    /// A URL given to a fixture is malformed or does not point to a loopback address.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A fixture was asked for something it cannot do with the given arguments.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A required program is not installed.
    #[error("{program} not found ({hint})")]
    MissingProgram {
        /// Path of the program.
        program: String,
        /// How to install it.
        hint: String,
    },
    /// An in-process server could not be started.
    #[error("server {name}: {message}")]
    Server {
        /// Name of the stand-in.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// JSON could not be produced or parsed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Returns a closure wrapping an [`std::io::Error`] with what the fixture was doing.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// Result of fixture operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
