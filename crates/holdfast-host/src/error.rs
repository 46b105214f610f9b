//! Errors a host user can act on: each says what failed and why, in one line.

use holdfast_proto::Status;
use std::time::Duration;

/// A host error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {io}")]
    Connect {
        /// Target address.
        addr: String,
        /// The socket error. Part of the message, and deliberately not `source()`, so that an error chain
        /// (`anyhow`'s `{:#}`) prints it once.
        io: std::io::Error,
    },
    /// The connection failed after it was made.
    #[error("connection to {addr} (queue {qid}) failed: {io}")]
    Transport {
        /// Target address.
        addr: String,
        /// Queue.
        qid: u16,
        /// The socket error. Part of the message, and deliberately not `source()`, so that an error chain
        /// (`anyhow`'s `{:#}`) prints it once.
        io: std::io::Error,
    },
    /// The target broke the protocol, or sent a termination request.
    #[error("protocol error on queue {qid}: {what}")]
    Protocol {
        /// Queue.
        qid: u16,
        /// What happened.
        what: String,
    },
    /// A command completed with an error status.
    #[error("{command} failed: {status}")]
    Nvme {
        /// The command's name.
        command: &'static str,
        /// Its status.
        status: Status,
    },
    /// Connect refused.
    #[error("Connect refused by the target: {reason}")]
    ConnectRefused {
        /// Why, in words.
        reason: String,
        /// The status.
        status: Status,
    },
    /// Something took too long.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// The controller is not connected.
    #[error("not connected: {0}")]
    NotConnected(String),
    /// The controller was lost for good: the connection could not be restored within the policy.
    #[error("controller lost: {0}")]
    ControllerLost(String),
    /// A retryable path error: the connection is down (fast_io_fail_tmo passed, or a command that cannot be
    /// replayed was in flight when it dropped).
    #[error("path error (retryable): {0}")]
    PathError(String),
    /// In-band authentication (DH-HMAC-CHAP) failed: the controller refused the host, or the host the
    /// controller. Never carries a secret.
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// Bad argument from the caller.
    #[error("{0}")]
    Invalid(String),
    /// The controller does not support what was asked (an optional command its Identify Controller data does not
    /// advertise); nothing was sent.
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    /// The NVMe status, if this is a command failure.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Nvme { status, .. } | Error::ConnectRefused { status, .. } => Some(*status),
            _ => None,
        }
    }
    /// True for errors caused by the path (connection) rather than the command.
    pub fn is_path_error(&self) -> bool {
        matches!(
            self,
            Error::Transport { .. }
                | Error::Protocol { .. }
                | Error::Timeout { .. }
                | Error::NotConnected(_)
                | Error::ControllerLost(_)
                | Error::PathError(_)
        )
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;
