//! Log lines a peer can cause at will (a refused Connect, a digest that does not match, a malformed PDU, a
//! termination request), limited target-wide to [`PEER_LINES_PER_SEC`] a second: a peer repeating a refused
//! Connect wrote 272,000 lines a second before, and its own connection needs no Connect to do it. The lines
//! over the limit are counted, and the count is logged with the next line allowed in a later second, or by
//! [`report_left_out`] (the server calls it every second) once the second they were left out in is over.

/// Peer-caused log lines allowed per second, all peers together.
pub const PEER_LINES_PER_SEC: u64 = 20;

static PEER_LINES: holdfast_rt::RateLimit = holdfast_rt::RateLimit::new(PEER_LINES_PER_SEC);

/// Log a warning a peer caused, if [`allow`] lets one more through: `peer_warn!(peer = %addr, "...")`, the
/// arguments of `tracing::warn!`.
macro_rules! peer_warn {
    ($($arg:tt)*) => {
        if $crate::peer_log::allow() {
            tracing::warn!($($arg)*);
        }
    };
}
pub(crate) use peer_warn;

/// May one more peer-caused line be logged now? Call it just before such a line, and log only if it says so
/// (`peer_warn!` does both).
pub fn allow() -> bool {
    allow_at(holdfast_rt::coarse_ms() / 1000)
}

fn allow_at(second: u64) -> bool {
    let Some(dropped) = PEER_LINES.allow_at(second) else { return false };
    if dropped > 0 {
        tracing::warn!("{dropped} log lines caused by peers were left out (at most {PEER_LINES_PER_SEC} a second)");
    }
    true
}

/// Log how many peer-caused lines were left out in seconds now over, if any were and no line let through
/// since has said so. Returns the count.
pub fn report_left_out() -> u64 {
    report_left_out_at(holdfast_rt::coarse_ms() / 1000)
}

fn report_left_out_at(second: u64) -> u64 {
    let dropped = PEER_LINES.take_stale_at(second);
    if dropped > 0 {
        tracing::warn!("{dropped} log lines caused by peers were left out (at most {PEER_LINES_PER_SEC} a second)");
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_limit_each_second_and_the_rest_counted() {
        // Seconds far from the clock's, so that no other test's line shares them.
        let base = u64::MAX / 2;
        let allowed = (0..1000).filter(|_| allow_at(base)).count() as u64;
        assert_eq!(allowed, PEER_LINES_PER_SEC);
        assert_eq!(PEER_LINES.dropped(), 1000 - PEER_LINES_PER_SEC);
        // A new second: allowed again, and the count reported (and reset).
        assert!(allow_at(base + 1));
        assert_eq!(PEER_LINES.dropped(), 0);
        // A flood that stops: its count is reported once its second is over, without another line.
        let allowed = (0..100).filter(|_| allow_at(base + 2)).count() as u64;
        assert_eq!(allowed, PEER_LINES_PER_SEC);
        assert_eq!(report_left_out_at(base + 2), 0, "not while the second lasts");
        assert_eq!(report_left_out_at(base + 3), 100 - PEER_LINES_PER_SEC);
        assert_eq!(report_left_out_at(base + 4), 0, "reported once");
        assert_eq!(PEER_LINES.dropped(), 0);
    }
}
