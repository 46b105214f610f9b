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
    /// A command completed with an error status. One without Do Not Retry has been issued again already
    /// ([`crate::queue::MAX_STATUS_RETRIES`] times, after the retry delay the controller asked for), unless that
    /// delay was longer than the I/O timeout: [`Status::dnr`] clear then says the controller would take it later.
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
    /// The command could not be sent or completed on this controller: it is shutting down or closed (the
    /// reason says which), or the command was dropped with its queue.
    #[error("not connected: {0}")]
    NotConnected(String),
    /// The controller is gone for good: the connection could not be restored within the policy
    /// (ctrl_loss_tmo), or it was shut down ([`crate::Controller::shutdown`]; the reason says which). Nothing
    /// more completes on it: connect a new [`crate::Controller`] and open its namespaces again.
    #[error("controller lost: {0}")]
    ControllerLost(String),
    /// A retryable path error: the connection is down (fast_io_fail_tmo passed, or a command that cannot be
    /// replayed was in flight when it dropped).
    #[error("path error (retryable): {0}")]
    PathError(String),
    /// A command was outstanding on every connection lost, [`crate::queue::MAX_COMMAND_LOSSES`] of them, and
    /// is not issued again: a fault tied to the command more than to the path (a target that drops the
    /// connection over it), so issuing it again here would most likely cost as many connections again. The
    /// controller stays live. A path error (another path may not have the fault), not retryable.
    #[error("path error (not issued again): {0}")]
    CommandAbandoned(String),
    /// In-band authentication (DH-HMAC-CHAP) failed: the controller refused the host, or the host the
    /// controller. Never carries a secret.
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// Bad argument from the caller.
    #[error("{0}")]
    Invalid(String),
    /// The namespace this handle was opened on is no longer there: removed from the target, replaced by another
    /// under its NSID, or formatted with other blocks. Nothing was sent; open the namespace again (and see
    /// whether it is still the one wanted).
    #[error("{0}")]
    NamespaceGone(String),
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
    /// True for errors caused by the path (connection) rather than the command: what another path (a
    /// multipath layer's other controller) might not have met: a TCP connection that could not be made
    /// ([`Error::Connect`]) or failed, [`Error::ControllerLost`], a [`Error::Timeout`] (no answer on three
    /// connections), a command given up ([`Error::CommandAbandoned`]), and an [`Error::Nvme`] with a path-related status
    /// (SCT 3h: Asymmetric Access Inaccessible or Persistent Loss, which exist to send a host to another
    /// path, Internal Path Error, Controller or Host Pathing Error); [`Error::is_retryable`] says which of
    /// them this controller may still do.
    pub fn is_path_error(&self) -> bool {
        match self {
            Error::Nvme { status, .. } => status.is_path_error(),
            _ => matches!(
                self,
                Error::Connect { .. }
                    | Error::Transport { .. }
                    | Error::Protocol { .. }
                    | Error::Timeout { .. }
                    | Error::NotConnected(_)
                    | Error::ControllerLost(_)
                    | Error::PathError(_)
                    | Error::CommandAbandoned(_)
            ),
        }
    }
}

impl Error {
    /// True when the same request may succeed if the caller issues it again, later, on this controller: a
    /// [`Error::PathError`] (the connection was down past fast_io_fail_tmo, the controller reconnecting; or a
    /// command that is never replayed, a compare and write or a change to reservations, was cut off by a lost
    /// connection: see first whether it took effect). False for what issuing it again here cannot change: the
    /// controller lost or shut down (connect a new one), an NVMe status (already retried, see [`Error::Nvme`]),
    /// a timeout (unanswered on three connections), a command given up after five lost connections
    /// ([`Error::CommandAbandoned`]), a refused or invalid request.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::PathError(_))
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Which errors another path might not meet, and which this controller may still do.
    #[test]
    fn path_errors_and_retryable_ones() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases = [
            (Error::Connect { addr: "a".into(), io: io() }, true, false),
            (Error::Transport { addr: "a".into(), qid: 1, io: io() }, true, false),
            (Error::PathError("x".into()), true, true),
            (Error::CommandAbandoned("x".into()), true, false),
            (Error::Nvme { command: "Read", status: Status::ANA_INACCESSIBLE }, true, false),
            (Error::Nvme { command: "Read", status: Status::INVALID_FIELD }, false, false),
            (Error::Invalid("x".into()), false, false),
        ];
        for (e, path, retry) in cases {
            assert_eq!((e.is_path_error(), e.is_retryable()), (path, retry), "{e:?}");
        }
    }
}
