//! Connection options, and the default host identity (derived like nvme-cli's hostnqn / hostid).

use std::time::Duration;

/// [`ConnectOptions::ctrl_loss_tmo`] that never gives up (the Linux host's `ctrl_loss_tmo=-1`).
pub const CTRL_LOSS_NEVER: Duration = Duration::MAX;

/// How to connect to a controller.
///
/// Its `Debug` shows whether DH-HMAC-CHAP secrets are set, never the secrets.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Target address, `IP:PORT`.
    pub addr: String,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
    /// Host ID.
    pub hostid: [u8; 16],
    /// I/O queues to create (0: an admin queue alone, for Identify and logs; every I/O then fails). A controller
    /// that grants fewer carries the rest on those it grants ([`crate::Controller::io_queues_granted`]).
    pub nr_io_queues: u16,
    /// Entries per I/O queue.
    pub queue_size: u16,
    /// Keep-alive timeout (None: as the target advertises, else 5 s).
    pub kato: Option<Duration>,
    /// First reconnect delay (None: target policy, else 10 s).
    pub reconnect_delay: Option<Duration>,
    /// Cap of the reconnect backoff (None: target policy, else no backoff).
    pub reconnect_delay_max: Option<Duration>,
    /// Give up reconnecting after this long (None: target policy, else 600 s; [`CTRL_LOSS_NEVER`]: never, I/O
    /// then waits for the target however long it is away, unless fast_io_fail_tmo fails it).
    pub ctrl_loss_tmo: Option<Duration>,
    /// Fail queued I/O after this long disconnected; zero = off (None: target policy, else off).
    pub fast_io_fail_tmo: Option<Duration>,
    /// Header digests.
    pub hdgst: bool,
    /// Data digests.
    pub ddgst: bool,
    /// Limit for TCP connect + ICReq/ICResp.
    pub connect_timeout: Duration,
    /// Limit for one command (a longer wait is a lost connection). Not 0.
    pub io_timeout: Duration,
    /// Adaptive busy polling: after socket activity the runtime keeps polling instead of sleeping (lower
    /// latency at the cost of a busy core while I/O flows; see [`holdfast_rt::BusyPoll`]). Make one with
    /// `BusyPoll::new(window)`, `spawn()` it on the runtime the controllers run on, and share it among them.
    /// None, the default, never spins.
    pub busy_poll: Option<std::sync::Arc<holdfast_rt::BusyPoll>>,
    /// Ask the controller to disable SQ flow control on every queue (Connect CATTR bit 2; nvme-cli's
    /// `--disable-sqflow`). A controller that agrees may then complete a read with its data alone (a C2HData
    /// PDU with the SUCCESS flag, no CapsuleResp): one PDU less per read. (Linux nvmet does so only then;
    /// SPDK's target does so whether asked or not, and this host takes it either way.) libnvme sets it when
    /// the discovery log entry says the subsystem supports it
    /// ([`crate::DiscoveryEntry::sq_flow_disable_supported`]). A controller that does not support it keeps SQ
    /// flow control, which this host never needs (it never has more commands outstanding than a queue holds).
    /// Off by default, as in Linux.
    pub disable_sqflow: bool,
    /// The host's DH-HMAC-CHAP secret (`DHHC-1:XX:<base64>:`, as `nvme gen-dhchap-key` prints it; nvme-cli's
    /// `--dhchap-secret`). When a queue's Connect response asks for in-band authentication (AUTHREQ ATR),
    /// the host authenticates that queue with it before anything else is sent on it, at every (re)connect;
    /// a controller that does not ask is connected to as usual. Checked at connect ([`Error::Invalid`] with
    /// the reason, never the secret). Without it, a controller that asks refuses the connect.
    ///
    /// [`Error::Invalid`]: crate::Error::Invalid
    pub dhchap_secret: Option<String>,
    /// The controller's DH-HMAC-CHAP secret, for bidirectional authentication (nvme-cli's
    /// `--dhchap-ctrl-secret`): the host challenges the controller too, and refuses it unless its answer
    /// matches this key; a controller that does not ask for authentication (so cannot be challenged) is
    /// refused too. Needs [`ConnectOptions::dhchap_secret`].
    pub dhchap_ctrl_secret: Option<String>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<secret>");
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("subnqn", &self.subnqn)
            .field("hostnqn", &self.hostnqn)
            .field("hostid", &self.hostid)
            .field("nr_io_queues", &self.nr_io_queues)
            .field("queue_size", &self.queue_size)
            .field("kato", &self.kato)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("reconnect_delay_max", &self.reconnect_delay_max)
            .field("ctrl_loss_tmo", &self.ctrl_loss_tmo)
            .field("fast_io_fail_tmo", &self.fast_io_fail_tmo)
            .field("hdgst", &self.hdgst)
            .field("ddgst", &self.ddgst)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("busy_poll", &self.busy_poll)
            .field("disable_sqflow", &self.disable_sqflow)
            .field("dhchap_secret", &redacted(&self.dhchap_secret))
            .field("dhchap_ctrl_secret", &redacted(&self.dhchap_ctrl_secret))
            .finish()
    }
}

impl ConnectOptions {
    /// Defaults for `addr` and `subnqn`: the machine's host identity, 1 queue of 128, no digests, the
    /// connection policy left to the target.
    pub fn new(addr: impl Into<String>, subnqn: impl Into<String>) -> Self {
        let (hostnqn, hostid) = default_host_identity();
        ConnectOptions {
            addr: addr.into(),
            subnqn: subnqn.into(),
            hostnqn,
            hostid,
            nr_io_queues: 1,
            queue_size: 128,
            kato: None,
            reconnect_delay: None,
            reconnect_delay_max: None,
            ctrl_loss_tmo: None,
            fast_io_fail_tmo: None,
            hdgst: false,
            ddgst: false,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            busy_poll: None,
            disable_sqflow: false,
            dhchap_secret: None,
            dhchap_ctrl_secret: None,
        }
    }
}

fn read_trim(p: &str) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The host NQN and ID: `/etc/nvme/hostnqn` and `/etc/nvme/hostid` when present (as nvme-cli uses them);
/// else derived deterministically like libnvme's `nvmf_hostnqn_generate`: the DMI product UUID when the
/// machine has one, otherwise a UUID derived from `/etc/machine-id`, as `nqn.2014-08.org.nvmexpress:uuid:<uuid>`.
/// The host ID is the UUID of the host NQN when it has that form (NVMe Base 2.0 §4.7), so both agree.
pub fn default_host_identity() -> (String, [u8; 16]) {
    host_identity(None)
}

/// The host identity for host NQN `hostnqn` (None: the default, [`default_host_identity`]): that NQN, and as
/// Host Identifier `/etc/nvme/hostid` when the file is there (as nvme-cli: the machine's NQN given
/// explicitly stays the same host), else the NQN's UUID when it is of the UUID form (another NQN is another
/// host), else the default's.
pub fn host_identity(hostnqn: Option<&str>) -> (String, [u8; 16]) {
    let uuid_of = |s: &str| uuid::Uuid::parse_str(s).ok().filter(|u| !u.is_nil() && !u.is_max());
    let nqn_uuid_of = |n: &str| n.rsplit_once(":uuid:").and_then(|(_, u)| uuid_of(u));
    let given = hostnqn.filter(|_| !std::path::Path::new("/etc/nvme/hostid").exists()).and_then(nqn_uuid_of);
    let named = hostnqn.map(str::to_string).or_else(|| read_trim("/etc/nvme/hostnqn"));
    let file_id = read_trim("/etc/nvme/hostid").and_then(|s| uuid_of(&s));
    let derived = || {
        read_trim("/sys/class/dmi/id/product_uuid").and_then(|s| uuid_of(&s)).unwrap_or_else(|| {
            use sha2::{Digest, Sha256};
            let seed = read_trim("/etc/machine-id").unwrap_or_else(|| "holdfast-default-host".into());
            let h = Sha256::digest(format!("holdfast-hostid/{seed}").as_bytes());
            let mut b: [u8; 16] = h[..16].try_into().unwrap_or([0; 16]);
            b[6] = (b[6] & 0x0F) | 0x40;
            b[8] = (b[8] & 0x3F) | 0x80;
            uuid::Uuid::from_bytes(b)
        })
    };
    let nqn_uuid = read_trim("/etc/nvme/hostnqn").as_deref().and_then(nqn_uuid_of);
    let id = given.or(file_id).or(nqn_uuid).unwrap_or_else(derived);
    let nqn = named.unwrap_or_else(|| format!("nqn.2014-08.org.nvmexpress:uuid:{id}"));
    (nqn, *id.as_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_never_shows_the_secrets() {
        let mut o = super::ConnectOptions::new("127.0.0.1:4420", "nqn.test");
        o.dhchap_secret = Some("DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:".into());
        o.dhchap_ctrl_secret = Some("DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:".into());
        let d = format!("{o:?}");
        assert!(!d.contains("DHHC") && !d.contains("AAEC"), "{d}");
        assert!(d.contains("dhchap_secret: Some(\"<secret>\")") && d.contains("127.0.0.1:4420"), "{d}");
    }

    #[test]
    fn host_identity_is_stable_and_consistent() {
        let (nqn, id) = super::default_host_identity();
        assert_eq!((nqn.clone(), id), super::default_host_identity());
        assert!(nqn.starts_with("nqn."), "{nqn}");
        // An explicit /etc/nvme/hostid may differ from the host NQN's UUID (nvme-cli allows it).
        if let (None, Some((_, u))) = (super::read_trim("/etc/nvme/hostid"), nqn.rsplit_once(":uuid:")) {
            assert_eq!(uuid::Uuid::parse_str(u).map(|u| *u.as_bytes()).ok(), Some(id));
        }
    }
}
