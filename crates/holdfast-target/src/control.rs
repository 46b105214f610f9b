//! The target's local control socket (a Unix socket, one command per line, one reply line): lets an
//! operator announce a planned restart so that hosts keep I/O queued through it (README, Connection policy,
//! `planned_downtime_ms`).
//!
//! | command | effect |
//! |---|---|
//! | `announce-restart MS [LAPSE_MS]` | advertise a planned downtime of MS ms in the policy page; notify every host; withdrawn after LAPSE_MS (10 min) unless the target restarted |
//! | `cancel-restart` | withdraw it |
//! | `status` | one line: instance, controllers, planned downtime (and when it lapses) |
//! | `controllers` | `ok` and a JSON array: every controller (host, address, port, I/O queues, KATO, age) |
//! | `stats` | `ok` and a JSON array: every subsystem's I/O counters (the SMART log's, summed) and failed commands |
//! | `disconnect [subsystem=NQN] [cntlid=N] [host=NQN]` | tear down the controllers that match (at least a CNTLID or a host) |

use crate::subsystem::Target;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// The default control socket path for a target whose first port is `port`.
pub fn default_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("holdfast-target-{port}.sock"))
}

/// How long an announced restart stands when the announcement does not say: one that has not happened by then
/// is withdrawn (hosts notified), so that a restart announced and then called off, and not withdrawn, does not
/// keep every host riding through the target's next failure for the announced downtime instead of failing
/// over within its policy.
pub const DEFAULT_RESTART_LAPSE: Duration = Duration::from_secs(600);

/// The planned restart in force, if any ([`Target::planned_restart`]).
#[derive(Debug, Default)]
pub struct PlannedRestart {
    /// Taken by each announcement and withdrawal.
    pub seq: u64,
    /// When the announcement lapses, on [`Target::now_ms`]'s clock (0: none in force).
    pub lapse_at_ms: u64,
    /// The lapse timer of the announcement in force, stopped when another takes its place.
    pub timer: Option<tokio::task::AbortHandle>,
}

/// Announce a planned restart of `downtime_ms` (0 withdraws one), every controller notified (a policy-changed
/// notice: hosts read the policy page again). An announcement lapses after `lapse` (withdrawn, hosts notified,
/// a warning logged) unless another announcement or a withdrawal came first; the target's restart ends it
/// anyway (a new instance announces nothing). Must run inside the Tokio runtime (the lapse's timer).
pub fn announce_restart(target: &Arc<Target>, downtime_ms: u32, lapse: Duration) {
    let seq = {
        let mut p = target.planned_restart.lock();
        if let Some(t) = p.timer.take() {
            t.abort();
        }
        p.seq += 1;
        p.lapse_at_ms = if downtime_ms > 0 {
            target.now_ms().saturating_add(lapse.as_millis().min(u64::MAX as u128) as u64).max(1)
        } else {
            0
        };
        set_downtime(target, downtime_ms);
        p.seq
    };
    if downtime_ms > 0 {
        tracing::warn!(
            downtime_ms,
            lapse_s = lapse.as_secs(),
            "planned restart announced: hosts will keep I/O queued at least this long; withdrawn unless the \
             target restarts within the lapse"
        );
        let weak = Arc::downgrade(target);
        let timer = tokio::spawn(async move {
            let target = weak;
            tokio::time::sleep(lapse).await;
            let Some(target) = target.upgrade() else { return };
            let mut p = target.planned_restart.lock();
            if p.seq != seq {
                return;
            }
            p.seq += 1;
            p.lapse_at_ms = 0;
            set_downtime(&target, 0);
            tracing::warn!(
                downtime_ms,
                lapse_s = lapse.as_secs(),
                "planned restart announced but not carried out within its lapse: withdrawn, hosts notified"
            );
        });
        let mut p = target.planned_restart.lock();
        if p.seq == seq {
            p.timer = Some(timer.abort_handle());
        } else {
            timer.abort();
        }
    } else {
        tracing::info!("planned restart withdrawn");
    }
}

/// Advertise `downtime_ms` and notify every controller (the caller holds [`Target::planned_restart`]).
fn set_downtime(target: &Target, downtime_ms: u32) {
    target.planned_downtime_ms.store(downtime_ms, Ordering::SeqCst);
    for s in target.subsystems() {
        s.policy_generation.fetch_add(1, Ordering::SeqCst);
    }
    target.discovery_policy_generation.fetch_add(1, Ordering::SeqCst);
    for c in target.all_controllers() {
        c.raise_policy_changed();
    }
}

/// Execute one control command line.
pub fn execute(target: &Arc<Target>, line: &str) -> String {
    let mut w = line.split_whitespace();
    match (w.next(), w.next(), w.next(), w.next()) {
        (Some("announce-restart"), Some(ms), lapse, None) => {
            let Ok(ms) = ms.parse::<u32>() else {
                return format!("error: \"{ms}\" is not a number of milliseconds");
            };
            let lapse = match lapse.map(str::parse::<u64>) {
                None => DEFAULT_RESTART_LAPSE,
                Some(Ok(l)) if l > 0 => Duration::from_millis(l),
                Some(_) => {
                    return format!(
                        "error: the lapse \"{}\" is not a number of milliseconds above 0",
                        lapse.unwrap_or_default()
                    )
                }
            };
            if ms == 0 {
                announce_restart(target, 0, lapse);
                return "ok planned restart withdrawn (a downtime of 0 is none)".into();
            }
            announce_restart(target, ms, lapse);
            format!(
                "ok planned downtime {ms} ms announced to {} controller(s), withdrawn unless the target restarts \
                 within {}",
                target.all_controllers().len(),
                human(lapse)
            )
        }
        (Some("cancel-restart"), None, ..) => {
            if target.planned_downtime_ms.load(Ordering::SeqCst) == 0 {
                return "ok no planned restart was announced: nothing withdrawn".into();
            }
            announce_restart(target, 0, DEFAULT_RESTART_LAPSE);
            "ok planned restart withdrawn".into()
        }
        (Some("status"), None, ..) => {
            let lapse_at = target.planned_restart.lock().lapse_at_ms;
            let mut line = format!(
                "ok instance {:016x} pid {} controllers {} planned_downtime_ms {}",
                target.instance_id,
                std::process::id(),
                target.all_controllers().len(),
                target.planned_downtime_ms.load(Ordering::SeqCst)
            );
            if lapse_at != 0 {
                line += &format!(" lapses_in_ms {}", lapse_at.saturating_sub(target.now_ms()));
            }
            line
        }
        (Some("controllers"), None, ..) => json_reply(&controllers(target)),
        (Some("disconnect"), ..) => disconnect(target, line.split_whitespace().skip(1)),
        (Some("stats"), None, ..) => json_reply(&stats(target)),
        _ => format!(
            "error: unknown command \"{}\" (announce-restart MS [LAPSE_MS], cancel-restart, status, controllers, \
             stats, disconnect [subsystem=NQN] [cntlid=N] [host=NQN], reload)",
            line.trim()
        ),
    }
}

/// `disconnect` with filters `subsystem=NQN`, `cntlid=N` (with a subsystem), `host=HOSTNQN`, all that are given
/// applying, at least a CNTLID or a host: tear those controllers' associations down (their connections close,
/// their commands in flight are fenced as for any lost association). A host still allowed connects again, as
/// after a network failure; one taken off `allowed_hosts` by a reload cannot (a reload leaves the associations
/// it already has to go on, as Linux nvmet does).
fn disconnect<'a>(target: &Target, args: impl Iterator<Item = &'a str>) -> String {
    let (mut subsys, mut cntlid, mut host) = (None, None, None);
    for a in args {
        match a.split_once('=') {
            Some(("subsystem", v)) => subsys = Some(v),
            Some(("host", v)) => host = Some(v),
            Some(("cntlid", v)) => match v.parse::<u16>() {
                Ok(n) => cntlid = Some(n),
                Err(_) => return format!("error: cntlid=\"{v}\" is not a controller ID"),
            },
            _ => return format!("error: \"{a}\" is not subsystem=NQN, cntlid=N or host=NQN"),
        }
    }
    match (subsys, cntlid, host) {
        (_, None, None) => return "error: say which controllers: cntlid=N (with subsystem=NQN) or host=NQN".into(),
        (None, Some(_), _) => return "error: a CNTLID is a subsystem's: give subsystem=NQN with it".into(),
        _ => {}
    }
    let chosen: Vec<_> = target
        .all_controllers()
        .into_iter()
        .filter(|c| subsys.is_none_or(|n| c.subsys.nqn == n))
        .filter(|c| cntlid.is_none_or(|n| c.cntlid == n))
        .filter(|c| host.is_none_or(|h| c.hostnqn == h))
        .collect();
    if chosen.is_empty() {
        return "error: no controller matches (target-ctl controllers lists them)".into();
    }
    let mut names: Vec<String> = chosen.iter().map(|c| format!("{} CNTLID {}", c.subsys.nqn, c.cntlid)).collect();
    names.sort();
    for c in &chosen {
        tracing::warn!(cntlid = c.cntlid, subsys = %c.subsys.nqn, host = ?c.hostnqn, peer = %c.peer_addr, "disconnected by the operator");
        c.teardown("disconnected by the operator (target-ctl disconnect)");
    }
    format!(
        "ok {} controller(s) disconnected ({}): a host still allowed connects again",
        chosen.len(),
        names.join(", ")
    )
}

/// A lapse as an operator wrote it: whole hours, minutes or seconds where it is one, else milliseconds.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{} h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// `ok` and `value` as JSON, on one line (the socket's replies are one line each).
fn json_reply(value: &impl serde::Serialize) -> String {
    match serde_json::to_string(value) {
        Ok(j) => format!("ok {j}"),
        Err(e) => format!("error: {e}"),
    }
}

/// A controller (one host association), as `controllers` reports it: what Linux nvmet shows per controller
/// in debugfs (`nvmet/SUBSYS/ctrlN/`), and SPDK's `nvmf_subsystem_get_controllers`.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ControllerInfo {
    /// Subsystem NQN (the discovery subsystem's for a discovery controller).
    pub subsystem: String,
    /// Controller ID.
    pub cntlid: u16,
    /// Host NQN.
    pub hostnqn: String,
    /// Host Identifier, as a UUID.
    pub hostid: String,
    /// Port ID its admin queue came in on.
    pub port: u16,
    /// The host's address on the admin queue.
    pub host_addr: String,
    /// I/O queues connected.
    pub io_queues: usize,
    /// Keep Alive Timeout (0: none).
    pub kato_ms: u32,
    /// CSTS.RDY: the host enabled it.
    pub ready: bool,
    /// Seconds since its Connect.
    pub age_s: u64,
}

/// Every controller of the target.
pub fn controllers(target: &Target) -> Vec<ControllerInfo> {
    let now = target.now_ms();
    let mut v: Vec<ControllerInfo> = target
        .all_controllers()
        .into_iter()
        .map(|c| ControllerInfo {
            subsystem: c.subsys.nqn.clone(),
            cntlid: c.cntlid,
            hostnqn: c.hostnqn.clone(),
            hostid: uuid::Uuid::from_bytes(c.hostid).to_string(),
            port: c.port_id,
            host_addr: c.peer_addr.to_string(),
            io_queues: c.io_queues(),
            kato_ms: c.kato_ms.load(Ordering::Relaxed),
            ready: c.ready(),
            age_s: now.saturating_sub(c.created_ms) / 1000,
        })
        .collect();
    v.sort_by(|a, b| (&a.subsystem, a.cntlid).cmp(&(&b.subsystem, b.cntlid)));
    v
}

/// A subsystem's I/O counters since the target started (a namespace replaced by a reload keeps counting into
/// its subsystem's), as `stats` reports them.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct SubsystemStats {
    /// Subsystem NQN.
    pub subsystem: String,
    /// Namespaces.
    pub namespaces: usize,
    /// Controllers now.
    pub controllers: usize,
    /// Read and Compare commands.
    pub read_cmds: u64,
    /// Write commands.
    pub write_cmds: u64,
    /// Bytes read (and compared).
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Media and data integrity errors.
    pub media_errors: u64,
    /// Commands failed, admin and I/O, any status (a target from before this count reports none).
    #[serde(default)]
    pub failed_cmds: u64,
}

/// Every subsystem's counters.
pub fn stats(target: &Target) -> Vec<SubsystemStats> {
    let mut v: Vec<SubsystemStats> = target
        .subsystems()
        .into_iter()
        .map(|s| {
            let st = &s.stats;
            SubsystemStats {
                subsystem: s.nqn.clone(),
                namespaces: s.namespaces.read().len(),
                controllers: s.controllers().len(),
                read_cmds: st.read_cmds.load(Ordering::Relaxed),
                write_cmds: st.write_cmds.load(Ordering::Relaxed),
                bytes_read: st.bytes_read.load(Ordering::Relaxed),
                bytes_written: st.bytes_written.load(Ordering::Relaxed),
                media_errors: st.media_errors.load(Ordering::Relaxed),
                failed_cmds: st.failed_cmds.load(Ordering::Relaxed),
            }
        })
        .collect();
    v.sort_by(|a, b| a.subsystem.cmp(&b.subsystem));
    v
}

/// Ask for a reload through `reload` and wait for its reply line.
async fn reload_reply(reload: Option<&tokio::sync::mpsc::Sender<ReloadRequest>>) -> String {
    let Some(reload) = reload else {
        return "error: nothing to reload: this target runs without a configuration file (quick mode)".into();
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if reload.send(tx).await.is_err() {
        return "error: the target is stopping".into();
    }
    rx.await.unwrap_or_else(|_| "error: the target is stopping".into())
}

/// The longest command line the control socket takes.
pub const MAX_LINE: usize = 4096;

/// Bind the control socket at `path`. A socket file that nothing answers on (left by a target that died) is
/// replaced; one a live process answers on (another target whose first port has the same TCP port number, on
/// another address) or anything but a socket (a file given to `--control` by mistake) is left alone, an error.
///
/// The socket is its owner's alone (mode 0600, whatever the umask), and [`serve`] answers only a peer of the
/// same user or root ([`peer_allowed`]): its commands disconnect hosts and reload the configuration.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let l = holdfast_rt::bind_unix_socket(path)?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(std::io::Error::new(
            e.kind(),
            format!("{}: cannot make it the owner's alone: {e}", path.display()),
        ));
    }
    Ok(l)
}

/// May the process at the other end of a control connection use it: root, or the user this process runs as
/// (whose the socket file is). Checked on every connection, so that a permissive umask before the socket's
/// mode was set, or a path in a directory others may write, gives no one else the target's controls.
pub fn peer_allowed(stream: &tokio::net::UnixStream) -> bool {
    stream.peer_cred().is_ok_and(|c| trusted_user(c.uid()))
}

/// Is `uid` one the control socket trusts, either way: root, or the user this process runs as. The target
/// answers only such a peer ([`peer_allowed`]); `target-ctl` talks only to a socket file such a user owns.
pub fn trusted_user(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// A `reload` asked for on the control socket: the one who runs the target reloads its configuration (as on
/// SIGHUP) and answers with the reply line (`ok ...` or `error: ...`).
pub type ReloadRequest = tokio::sync::oneshot::Sender<String>;

/// Serve the control socket `listener` (from [`bind`]) until `shutdown`. Removing its file is the caller's.
/// `reload` takes the `reload` command's requests (None: a target with nothing to reload, as in quick mode).
pub async fn serve(
    target: Arc<Target>,
    listener: UnixListener,
    shutdown: CancellationToken,
    reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
) -> std::io::Result<()> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => {
                let (stream, _) = match r {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and the like: the listener stays readable, so wait a little rather than spin.
                        tracing::warn!("control socket: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let allowed = peer_allowed(&stream);
                if !allowed {
                    let who = stream.peer_cred().map_or_else(|e| format!("unknown ({e})"), |c| c.uid().to_string());
                    tracing::warn!("control socket: a connection from user {who} refused (only this target's user and root)");
                }
                let (target, reload) = (target.clone(), reload.clone());
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let (rd, mut wr) = stream.into_split();
                    let mut rd = BufReader::new(rd);
                    let mut line = Vec::new();
                    loop {
                        // A line is a command of a few words: one longer than MAX_LINE is refused and the
                        // connection closed, not gathered (it grew the target by the size of what was sent).
                        line.clear();
                        match (&mut rd).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
                            let _ = wr.write_all(format!("error: a line longer than {MAX_LINE} bytes\n").as_bytes()).await;
                            break;
                        }
                        // Another user's command is answered (after it is read: a client writing into a connection
                        // closed under it would die of SIGPIPE without a word) and the connection closed.
                        if !allowed {
                            let no = "error: not allowed: the control socket answers only the target's user and root\n";
                            let _ = wr.write_all(no.as_bytes()).await;
                            break;
                        }
                        let line = String::from_utf8_lossy(&line);
                        let reply = if line.trim() == "reload" {
                            reload_reply(reload.as_ref()).await
                        } else {
                            execute(&target, line.trim_end())
                        };
                        if wr.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// `announce-restart` with a downtime says what it did; with 0 it withdraws the announcement and says so
    /// (it answered "announced" before).
    #[tokio::test]
    async fn announcing_no_downtime_says_it_withdraws() {
        let t = Target::new(&Config::parse(crate::config::tests::GOOD, "t.toml").unwrap(), Default::default()).unwrap();
        let r = execute(&t, "announce-restart 30000");
        assert!(r.starts_with("ok planned downtime 30000 ms announced"), "{r}");
        assert!(r.ends_with("within 10 min"), "{r}");
        assert_eq!(t.planned_downtime_ms.load(Ordering::SeqCst), 30000);
        assert!(execute(&t, "status").contains("planned_downtime_ms 30000 lapses_in_ms "));
        let r = execute(&t, "announce-restart 0");
        assert_eq!(r, "ok planned restart withdrawn (a downtime of 0 is none)");
        assert_eq!(t.planned_downtime_ms.load(Ordering::SeqCst), 0);
        assert!(!execute(&t, "status").contains("lapses_in_ms"));
        assert!(execute(&t, "announce-restart soon").starts_with("error: "));
        assert!(execute(&t, "announce-restart 1000 0").starts_with("error: the lapse"));
        assert!(execute(&t, "announce-restart 1000 5000 7").starts_with("error: unknown command"));
    }

    /// An announced restart that does not happen lapses: withdrawn, with a policy notice, once its lapse has
    /// passed; a later announcement is not withdrawn by an earlier one's timer.
    #[tokio::test(start_paused = true)]
    async fn an_announced_restart_lapses_unless_announced_again() {
        let t = Target::new(&Config::parse(crate::config::tests::GOOD, "t.toml").unwrap(), Default::default()).unwrap();
        let generation = || t.subsystems()[0].policy_generation.load(Ordering::SeqCst);
        let r = execute(&t, "announce-restart 30000 60000");
        assert!(r.ends_with("within 1 min"), "{r}");
        tokio::time::sleep(Duration::from_secs(30)).await;
        // Announced again, with a lapse of its own: the first one's timer leaves it be.
        execute(&t, "announce-restart 45000 60000");
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(t.planned_downtime_ms.load(Ordering::SeqCst), 45000, "withdrawn by the first lapse");
        let before = generation();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(t.planned_downtime_ms.load(Ordering::SeqCst), 0, "the second announcement lapsed");
        assert_eq!(generation(), before + 1, "hosts told of the withdrawal");
        assert!(!execute(&t, "status").contains("lapses_in_ms"));
    }
}
