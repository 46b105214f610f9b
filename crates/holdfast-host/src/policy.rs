//! The effective connection policy (README, Connection policy): an explicit host option wins, then what the target
//! advertises in its policy log page, then the defaults; every value remembers where it came from.

use crate::options::ConnectOptions;
use holdfast_proto::policy::ConnectionPolicy;
use std::fmt;
use std::time::Duration;

/// Where an effective value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// An explicit host option.
    Host,
    /// The target's policy page.
    Target,
    /// holdfast's default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Host => "host option",
            Source::Target => "target policy",
            Source::Default => "default",
        })
    }
}

/// Default KATO (the Linux host's).
pub const DEFAULT_KATO: Duration = Duration::from_secs(5);
/// The smallest KATO the host uses, whatever the target advertises or the host option says: a smaller one is
/// raised to it ([`holdfast_proto::policy::MIN_KATO_MS`] says why).
pub const MIN_KATO: Duration = Duration::from_millis(holdfast_proto::policy::MIN_KATO_MS as u64);
/// The longest KATO: what Connect and Set Features carry (32 bits of milliseconds, 49.7 days). A longer host
/// option is lowered to it.
pub const MAX_KATO: Duration = Duration::from_millis(u32::MAX as u64);
/// The shortest wait between two reconnect attempts, whatever reconnect_delay says (0 is allowed there, as in
/// SPDK, and means "at once"): an attempt that fails at once (connection refused) would otherwise start the next
/// at once, a storm of connections against a target that is coming back up.
pub const MIN_RETRY_GAP: Duration = Duration::from_millis(100);
/// An association lost sooner than this after it was set up did not hold: the reconnect after it is not
/// immediate but waits [`Effective::flap_delay`].
pub const STABLE_ASSOCIATION: Duration = Duration::from_secs(5);
/// Default first reconnect delay (Linux: 10 s).
pub const DEFAULT_RECONNECT_DELAY: Duration = Duration::from_secs(10);
/// The longest delay between reconnect attempts: a longer host option is lowered to it.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(86_400);
/// Default controller loss timeout (Linux: 600 s).
pub const DEFAULT_CTRL_LOSS_TMO: Duration = Duration::from_secs(600);

/// The policy in force, with sources.
#[derive(Clone, Debug)]
pub struct Effective {
    /// Keep-alive timeout.
    pub kato: (Duration, Source),
    /// First reconnect delay.
    pub reconnect_delay: (Duration, Source),
    /// Backoff cap.
    pub reconnect_delay_max: (Duration, Source),
    /// Give up after this long disconnected (None: never).
    pub ctrl_loss_tmo: (Option<Duration>, Source),
    /// Fail queued I/O after this long disconnected (None: off).
    pub fast_io_fail_tmo: (Option<Duration>, Source),
    /// An announced planned restart: keep I/O queued at least this long.
    pub planned_downtime: Duration,
    /// Target instance the policy came from.
    pub instance_id: Option<u64>,
    /// The target says a namespace's data lives only as long as its instance (a RAM namespace).
    pub volatile_data: bool,
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(v as u64)
}

/// Resolve the effective policy.
pub fn resolve(o: &ConnectOptions, adv: Option<&ConnectionPolicy>) -> Effective {
    fn pick<T>(host: Option<T>, target: Option<T>, default: T) -> (T, Source) {
        match (host, target) {
            (Some(v), _) => (v, Source::Host),
            (None, Some(v)) => (v, Source::Target),
            (None, None) => (default, Source::Default),
        }
    }
    // The timing fields, if the page advertises any (POLICY_SET: `from_bytes` leaves them all zero without
    // it); each is then the target's, but for a KATO of 0, which the page calls "not advertised".
    let t = adv.filter(|p| p.advertises_timing());
    let mut kato = pick(o.kato, t.filter(|p| p.kato_ms > 0).map(|p| ms(p.kato_ms)), DEFAULT_KATO);
    kato.0 = kato.0.clamp(MIN_KATO, MAX_KATO);
    let reconnect_delay = pick(o.reconnect_delay, t.map(|p| ms(p.reconnect_delay_ms)), DEFAULT_RECONNECT_DELAY);
    let reconnect_delay_max = pick(
        o.reconnect_delay_max,
        t.map(|p| ms(p.reconnect_delay_max_ms.max(p.reconnect_delay_ms))),
        reconnect_delay.0,
    );
    let ctrl_loss_tmo = pick(
        o.ctrl_loss_tmo.map(|d| (d != crate::options::CTRL_LOSS_NEVER).then_some(d)),
        t.map(|p| if p.ctrl_loss_tmo_ms == u32::MAX { None } else { Some(ms(p.ctrl_loss_tmo_ms)) }),
        Some(DEFAULT_CTRL_LOSS_TMO),
    );
    let fast_io_fail_tmo = pick(
        o.fast_io_fail_tmo.map(|d| if d.is_zero() { None } else { Some(d) }),
        t.map(|p| if p.fast_io_fail_tmo_ms == 0 { None } else { Some(ms(p.fast_io_fail_tmo_ms)) }),
        None,
    );
    // Delays of a day at most: an option of Duration::MAX would overflow the instant of the next attempt.
    let (mut reconnect_delay, mut reconnect_delay_max) = (reconnect_delay, reconnect_delay_max);
    reconnect_delay.0 = reconnect_delay.0.min(MAX_RECONNECT_DELAY);
    reconnect_delay_max.0 = reconnect_delay_max.0.min(MAX_RECONNECT_DELAY);
    Effective {
        kato,
        reconnect_delay,
        reconnect_delay_max: (reconnect_delay_max.0.max(reconnect_delay.0), reconnect_delay_max.1),
        ctrl_loss_tmo,
        fast_io_fail_tmo,
        planned_downtime: adv.map(|p| ms(p.planned_downtime_ms)).unwrap_or_default(),
        instance_id: adv.map(|p| p.instance_id),
        volatile_data: adv.is_some_and(|p| p.volatile_data),
    }
}

impl Effective {
    /// How long a loss may last before the controller is failed: the later of ctrl_loss_tmo and the
    /// announced planned downtime (None: forever).
    pub fn loss_limit(&self) -> Option<Duration> {
        self.ctrl_loss_tmo.0.map(|c| c.max(self.planned_downtime))
    }
    /// How long an outage may last before queued I/O fails with a path error: fast_io_fail_tmo, but never
    /// inside an announced planned downtime, which hosts ride through with their I/O queued (README, Connection policy), as
    /// [`Effective::loss_limit`] does for ctrl_loss_tmo (None: I/O fails only with the controller).
    pub fn fast_fail_after(&self) -> Option<Duration> {
        self.fast_io_fail_tmo.0.map(|f| f.max(self.planned_downtime))
    }
    /// The delay before reconnect attempt `n` (1-based): doubling from reconnect_delay up to the cap.
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self.reconnect_delay.0.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        d.min(self.reconnect_delay_max.0)
    }
    /// The delay before the next attempt after attempt `n` failed, `outage` into the outage. Inside an
    /// announced planned downtime the target said it is coming back, so the host keeps trying at the first
    /// delay instead of backing off (backing off to the cap could leave it waiting up to
    /// reconnect_delay_max after the target is back); past it, [`Effective::delay`]. Never below
    /// [`MIN_RETRY_GAP`].
    pub fn retry_delay(&self, attempt: u32, outage: Duration) -> Duration {
        let d = if outage < self.planned_downtime {
            self.reconnect_delay.0.min(self.reconnect_delay_max.0)
        } else {
            self.delay(attempt)
        };
        d.max(MIN_RETRY_GAP)
    }
    /// How long to wait before the first reconnect attempt after a loss, `flaps` being how many associations in a
    /// row (this one included) were lost within [`STABLE_ASSOCIATION`] of being set up: none after an
    /// association that held (0), else [`MIN_RETRY_GAP`] doubling with every such loss, up to the backoff cap
    /// (reconnect_delay_max). The Linux host always waits reconnect_delay; holdfast reconnects at once after a
    /// loss, but not to a target that keeps dropping what it just accepted.
    pub fn flap_delay(&self, flaps: u32) -> Duration {
        if flaps == 0 {
            return Duration::ZERO;
        }
        let cap = self.reconnect_delay_max.0.max(self.reconnect_delay.0).max(MIN_RETRY_GAP);
        MIN_RETRY_GAP.saturating_mul(1u32 << (flaps - 1).min(16)).min(cap)
    }
    /// True if every value is holdfast's default (nothing advertised, nothing overridden).
    pub fn all_default(&self) -> bool {
        [self.kato.1, self.reconnect_delay.1, self.reconnect_delay_max.1, self.ctrl_loss_tmo.1, self.fast_io_fail_tmo.1]
            .iter()
            .all(|s| *s == Source::Default)
            && self.planned_downtime.is_zero()
    }

    /// True if `other` would log the same line ([`Effective::log`]): every value and its source, all but the
    /// instance. A reconnect logs the policy again when this is false (a restarted target may advertise another
    /// fast_io_fail_tmo, reconnect delay or planned downtime, not only another KATO or ctrl_loss_tmo).
    pub fn logs_as(&self, other: &Effective) -> bool {
        self.kato == other.kato
            && self.reconnect_delay == other.reconnect_delay
            && self.reconnect_delay_max == other.reconnect_delay_max
            && self.ctrl_loss_tmo == other.ctrl_loss_tmo
            && self.fast_io_fail_tmo == other.fast_io_fail_tmo
            && self.planned_downtime == other.planned_downtime
    }

    /// Log every value with its source (at info level when something is not a default, else at debug level,
    /// so that the CLI stays quiet against targets that advertise no policy).
    pub fn log(&self, addr: &str) {
        let opt = |d: Option<Duration>| d.map(|d| format!("{d:?}")).unwrap_or_else(|| "off".into());
        let line = format!(
            "effective policy for {addr}: kato {:?} ({}), reconnect_delay {:?} ({}), reconnect_delay_max {:?} ({}), \
             ctrl_loss_tmo {} ({}), fast_io_fail_tmo {} ({}), planned_downtime {}",
            self.kato.0,
            self.kato.1,
            self.reconnect_delay.0,
            self.reconnect_delay.1,
            self.reconnect_delay_max.0,
            self.reconnect_delay_max.1,
            opt(self.ctrl_loss_tmo.0),
            self.ctrl_loss_tmo.1,
            opt(self.fast_io_fail_tmo.0),
            self.fast_io_fail_tmo.1,
            if self.planned_downtime.is_zero() { "none".into() } else { format!("{:?}", self.planned_downtime) }
        );
        if self.all_default() {
            tracing::debug!(target: "holdfast::policy", "{line}");
        } else {
            tracing::info!(target: "holdfast::policy", "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_host_then_target_then_default() {
        let mut o = ConnectOptions::new("127.0.0.1:1", "nqn.x");
        let adv = ConnectionPolicy {
            kato_ms: 2000,
            reconnect_delay_ms: 500,
            reconnect_delay_max_ms: 4000,
            ctrl_loss_tmo_ms: 5000,
            ..Default::default()
        };
        let e = resolve(&o, None);
        assert_eq!(e.kato, (DEFAULT_KATO, Source::Default));
        assert_eq!(e.ctrl_loss_tmo, (Some(DEFAULT_CTRL_LOSS_TMO), Source::Default));
        let e = resolve(&o, Some(&adv));
        assert_eq!(e.kato, (Duration::from_secs(2), Source::Target));
        assert_eq!(e.delay(1), Duration::from_millis(500));
        assert_eq!(e.delay(3), Duration::from_millis(2000));
        assert_eq!(e.delay(10), Duration::from_millis(4000));
        o.ctrl_loss_tmo = Some(Duration::from_secs(1));
        let e = resolve(&o, Some(&ConnectionPolicy { planned_downtime_ms: 20_000, ..adv }));
        assert_eq!(e.ctrl_loss_tmo, (Some(Duration::from_secs(1)), Source::Host));
        assert_eq!(e.loss_limit(), Some(Duration::from_secs(20)), "a planned window outlasts ctrl_loss_tmo");
        // Inside the planned window: no backoff; after it, the usual doubling.
        assert_eq!(e.retry_delay(5, Duration::from_secs(12)), Duration::from_millis(500));
        assert_eq!(e.retry_delay(5, Duration::from_secs(21)), Duration::from_millis(4000));
        assert_eq!(resolve(&o, Some(&adv)).retry_delay(5, Duration::from_secs(12)), Duration::from_millis(4000));
    }

    /// A host option of `Duration::MAX`: for ctrl_loss_tmo, never ([`crate::CTRL_LOSS_NEVER`]); for the reconnect
    /// delays, a day (the instant of the next attempt would overflow).
    #[test]
    fn duration_max_options_mean_never_and_a_day() {
        let mut o = ConnectOptions::new("127.0.0.1:1", "nqn.x");
        o.ctrl_loss_tmo = Some(crate::CTRL_LOSS_NEVER);
        o.reconnect_delay = Some(Duration::MAX);
        o.reconnect_delay_max = Some(Duration::MAX);
        let e = resolve(&o, None);
        assert_eq!((e.ctrl_loss_tmo, e.loss_limit()), ((None, Source::Host), None));
        assert_eq!(e.delay(30), MAX_RECONNECT_DELAY);
        assert_eq!(e.retry_delay(30, Duration::from_secs(5)), MAX_RECONNECT_DELAY);
    }

    /// `p` as a host reads it: encoded into the policy log page and decoded again (POLICY_SET and all).
    fn through_page(p: ConnectionPolicy) -> ConnectionPolicy {
        ConnectionPolicy::from_bytes(zerocopy::IntoBytes::as_bytes(&p.to_log_page())).expect("valid page")
    }

    #[test]
    fn every_logged_value_counts_for_logging_again() {
        let o = ConnectOptions::new("127.0.0.1:1", "nqn.x");
        let adv = ConnectionPolicy {
            kato_ms: 5000,
            ctrl_loss_tmo_ms: 30_000,
            fast_io_fail_tmo_ms: 2000,
            ..Default::default()
        };
        let adv = through_page(adv);
        let a = resolve(&o, Some(&adv));
        assert!(a.logs_as(&a.clone()));
        let mut other = ConnectionPolicy { instance_id: 9, ..adv };
        assert!(resolve(&o, Some(&other)).logs_as(&a), "another instance alone logs the same line");
        other.fast_io_fail_tmo_ms = 3000;
        let other = through_page(other);
        assert!(!resolve(&o, Some(&other)).logs_as(&a), "another fast_io_fail_tmo is logged again");
        let mut b = a.clone();
        b.planned_downtime = Duration::from_secs(20);
        assert!(!b.logs_as(&a));
    }

    #[test]
    fn a_policy_without_kato_still_advertises_its_other_fields() {
        // POLICY_SET with kato_ms 0 ("not advertised", as ConnectionPolicy has it): the other timing fields are
        // the target's all the same, and KATO is the default.
        let o = ConnectOptions::new("127.0.0.1:1", "nqn.x");
        let adv = ConnectionPolicy {
            kato_ms: 0,
            reconnect_delay_ms: 500,
            reconnect_delay_max_ms: 4000,
            ctrl_loss_tmo_ms: 30_000,
            fast_io_fail_tmo_ms: 2000,
            cqt_ms: 100,
            ..Default::default()
        };
        let adv = through_page(adv);
        let e = resolve(&o, Some(&adv));
        assert_eq!(e.kato, (DEFAULT_KATO, Source::Default));
        assert_eq!(e.ctrl_loss_tmo, (Some(Duration::from_secs(30)), Source::Target));
        assert_eq!(e.fast_io_fail_tmo, (Some(Duration::from_secs(2)), Source::Target));
        assert_eq!(e.reconnect_delay, (Duration::from_millis(500), Source::Target));
        assert_eq!(e.reconnect_delay_max, (Duration::from_millis(4000), Source::Target));
        // Nothing advertised (POLICY_SET clear): every value the default.
        let none = ConnectionPolicy { instance_id: 7, ..Default::default() };
        let e = resolve(&o, Some(&none));
        assert!(e.all_default(), "{e:?}");
        assert_eq!(e.instance_id, Some(7));
    }

    #[test]
    fn flap_delay_is_none_after_a_stable_association_then_doubles_up_to_the_cap() {
        let mut o = ConnectOptions::new("127.0.0.1:1", "nqn.x");
        let e = resolve(&o, None);
        assert_eq!(e.flap_delay(0), Duration::ZERO);
        assert_eq!(e.flap_delay(1), MIN_RETRY_GAP);
        assert_eq!(e.flap_delay(3), MIN_RETRY_GAP * 4);
        assert_eq!(e.flap_delay(1000), DEFAULT_RECONNECT_DELAY, "capped at reconnect_delay(_max)");
        o.reconnect_delay = Some(Duration::ZERO);
        o.reconnect_delay_max = Some(Duration::ZERO);
        assert_eq!(resolve(&o, None).flap_delay(9), MIN_RETRY_GAP, "never below the floor");
    }

    #[test]
    fn tiny_kato_and_zero_reconnect_delay_are_raised_to_their_floors() {
        let mut o = ConnectOptions::new("127.0.0.1:1", "nqn.x");
        let adv = ConnectionPolicy { kato_ms: 1, reconnect_delay_ms: 0, ctrl_loss_tmo_ms: 5000, ..Default::default() };
        let e = resolve(&o, Some(&adv));
        assert_eq!(e.kato, (MIN_KATO, Source::Target));
        assert_eq!(e.retry_delay(1, Duration::ZERO), MIN_RETRY_GAP);
        assert_eq!(e.retry_delay(7, Duration::from_secs(3)), MIN_RETRY_GAP);
        o.kato = Some(Duration::from_millis(50));
        assert_eq!(resolve(&o, Some(&adv)).kato, (MIN_KATO, Source::Host));
        o.kato = Some(Duration::from_millis(900));
        assert_eq!(resolve(&o, Some(&adv)).kato.0, Duration::from_millis(900), "above the floor: as given");
    }
}
