//! The target's local control socket (a Unix socket, one command per line, one reply line): lets an
//! operator announce a planned restart so that hosts keep I/O queued through it (design §3,
//! `planned_downtime_ms`).
//!
//! | command | effect |
//! |---|---|
//! | `announce-restart MS` | advertise a planned downtime of MS ms in the policy page; notify every host |
//! | `cancel-restart` | withdraw it |
//! | `status` | one line: instance, controllers, planned downtime |

use crate::subsystem::Target;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// The default control socket path for a target whose first port is `port`.
pub fn default_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("holdfast-target-{port}.sock"))
}

/// Announce (or with 0, withdraw) a planned restart: every controller gets a policy-changed notice.
pub fn announce_restart(target: &Target, downtime_ms: u32) {
    target.planned_downtime_ms.store(downtime_ms, Ordering::SeqCst);
    for s in target.subsystems() {
        s.policy_generation.fetch_add(1, Ordering::SeqCst);
    }
    for c in target.all_controllers() {
        c.raise_policy_changed();
    }
    if downtime_ms > 0 {
        tracing::warn!(downtime_ms, "planned restart announced: hosts will keep I/O queued at least this long");
    } else {
        tracing::info!("planned restart withdrawn");
    }
}

/// Execute one control command line.
pub fn execute(target: &Target, line: &str) -> String {
    let mut w = line.split_whitespace();
    match (w.next(), w.next()) {
        (Some("announce-restart"), Some(ms)) => match ms.parse::<u32>() {
            Ok(0) => {
                announce_restart(target, 0);
                "ok planned restart withdrawn (a downtime of 0 is none)".into()
            }
            Ok(ms) => {
                announce_restart(target, ms);
                format!("ok planned downtime {ms} ms announced to {} controller(s)", target.all_controllers().len())
            }
            Err(_) => format!("error: \"{ms}\" is not a number of milliseconds"),
        },
        (Some("cancel-restart"), None) => {
            announce_restart(target, 0);
            "ok planned restart withdrawn".into()
        }
        (Some("status"), None) => format!(
            "ok instance {:016x} controllers {} planned_downtime_ms {}",
            target.instance_id,
            target.all_controllers().len(),
            target.planned_downtime_ms.load(Ordering::SeqCst)
        ),
        _ => format!("error: unknown command \"{}\" (announce-restart MS, cancel-restart, status)", line.trim()),
    }
}

/// Bind the control socket at `path`. A socket file that nothing answers on (left by a target that died) is
/// replaced; one a live process answers on (another target whose first port has the same TCP port number, on
/// another address) or anything but a socket (a file given to `--control` by mistake) is left alone, an error.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    holdfast_rt::bind_unix_socket(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => std::io::Error::new(
            e.kind(),
            format!("{e} (another target on the same TCP port number?): left alone; --control PATH chooses another"),
        ),
        _ => e,
    })
}

/// Serve the control socket `listener` (from [`bind`]) until `shutdown`. Removing its file is the caller's.
pub async fn serve(target: Arc<Target>, listener: UnixListener, shutdown: CancellationToken) -> std::io::Result<()> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => {
                let (stream, _) = match r {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and the like: the listener stays readable, so wait a little rather than spin.
                        tracing::warn!("control socket: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let target = target.clone();
                tokio::spawn(async move {
                    let (rd, mut wr) = stream.into_split();
                    let mut lines = BufReader::new(rd).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply = execute(&target, &line);
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
    #[test]
    fn announcing_no_downtime_says_it_withdraws() {
        let t = Target::new(&Config::parse(crate::config::tests::GOOD, "t.toml").unwrap(), Default::default()).unwrap();
        let r = execute(&t, "announce-restart 30000");
        assert!(r.starts_with("ok planned downtime 30000 ms announced"), "{r}");
        assert_eq!(t.planned_downtime_ms.load(Ordering::SeqCst), 30000);
        let r = execute(&t, "announce-restart 0");
        assert_eq!(r, "ok planned restart withdrawn (a downtime of 0 is none)");
        assert_eq!(t.planned_downtime_ms.load(Ordering::SeqCst), 0);
        assert!(execute(&t, "announce-restart soon").starts_with("error: "));
    }
}
