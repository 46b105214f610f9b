//! Target configuration: a TOML file, or the quick mode's command-line flags, both ending as one [`Config`].
//!
//! ```toml
//! [[port]]
//! id = 1
//! listen = "0.0.0.0:4420"
//! ana_state = "optimized"        # optional: ANA state of every group through this port (or non-optimized,
//!                                # inaccessible, persistent-loss, change)
//! ana_groups = { "2" = "inaccessible" }   # optional: per ANA group
//!
//! [[subsystem]]
//! nqn = "nqn.2026-01.io.holdfast:vol1"
//! serial = "HF0001"              # optional: derived from the NQN
//! model = "holdfast"             # optional
//! allow_any_host = false
//! allowed_hosts = ["nqn.2014-08.org.nvmexpress:uuid:..."]
//! ports = [1]                    # optional: every port
//!
//! [subsystem.policy]             # optional: the connection policy hosts follow
//! kato_ms = 5000
//!
//! [[subsystem.namespace]]
//! nsid = 1
//! backend = "file"               # or "ram"
//! path = "/var/lib/holdfast/vol1.img"
//! size_mib = 1024                # ram: required; file: optional (grows the file)
//! block_size = 4096              # 512 or 4096
//! uuid = "..."; nguid = "..."; eui64 = "..."   # optional: derived from the NQN and nsid
//! ana_group = 1                  # optional: its ANA group (1..=128)
//!
//! [[host]]                       # optional: DH-HMAC-CHAP keys of a host that subsystems list
//! nqn = "nqn.2014-08.org.nvmexpress:uuid:..."
//! dhchap_key = "DHHC-1:00:...:"  # the host must authenticate on every queue
//! dhchap_ctrl_key = "DHHC-1:00:...:"   # optional: the controller authenticates to the host too
//! dhchap_hash = "sha256"         # optional: sha256 (default), sha384, sha512
//! dhchap_dhgroup = "null"        # optional: null (default), ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144, ffdhe8192
//! ```
//!
//! Every error names the file, the key and the reason.

use holdfast_proto::log_page::AnaState;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration error: which file, which key, why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The file (or "command line").
    pub file: String,
    /// The key path, e.g. `subsystem[0].namespace[1].block_size`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// The whole target configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners.
    #[serde(rename = "port", default)]
    pub ports: Vec<PortConfig>,
    /// Subsystems.
    #[serde(rename = "subsystem", default)]
    pub subsystems: Vec<SubsystemConfig>,
    /// Hosts with DH-HMAC-CHAP keys.
    #[serde(rename = "host", default)]
    pub hosts: Vec<HostConfig>,
    /// Other discovery controllers the discovery log refers hosts to.
    #[serde(rename = "referral", default)]
    pub referrals: Vec<ReferralConfig>,
}

/// A referral (NVMe-oF 1.1 §5.3, SUBTYPE 1): another target's discovery controller, listed in this target's
/// discovery log so that a host that follows referrals (nvme-cli's `connect-all`) finds its subsystems too;
/// Linux nvmet's `ports/N/referrals/NAME`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReferralConfig {
    /// The other discovery controller's address, IP:PORT.
    pub address: String,
    /// Its port ID there (the entry's PORTID).
    pub portid: u16,
    /// Listed to hosts that came in on these of this target's ports (empty: every port).
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// A host's DH-HMAC-CHAP secrets (Linux nvmet's configfs `hosts/NQN/dhchap_key`, `dhchap_ctrl_key`,
/// `dhchap_hash`, `dhchap_dhgroup`). A subsystem that lists the host in `allowed_hosts` makes it authenticate on every queue.
/// Its `Debug` never shows the secrets.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Host NQN.
    pub nqn: String,
    /// The host's secret, `DHHC-1:XX:<base64>:` (`nvme gen-dhchap-key`).
    pub dhchap_key: String,
    /// The controller's secret, for bidirectional authentication (the host proves the controller knows it).
    pub dhchap_ctrl_key: Option<String>,
    /// The HMAC hash offered first: "sha256" (default), "sha384" or "sha512".
    pub dhchap_hash: Option<String>,
    /// The DH group: "null" (default) or an FFDHE group, "ffdhe2048" ... "ffdhe8192".
    pub dhchap_dhgroup: Option<String>,
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConfig")
            .field("nqn", &self.nqn)
            .field("dhchap_key", &"<secret>")
            .field("dhchap_ctrl_key", &self.dhchap_ctrl_key.as_ref().map(|_| "<secret>"))
            .field("dhchap_hash", &self.dhchap_hash)
            .field("dhchap_dhgroup", &self.dhchap_dhgroup)
            .finish()
    }
}

/// A host's parsed DH-HMAC-CHAP keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeys {
    /// The host's secret.
    pub host_key: holdfast_proto::auth::DhchapSecret,
    /// The controller's secret (bidirectional authentication).
    pub ctrl_key: Option<holdfast_proto::auth::DhchapSecret>,
    /// The hash the controller picks when the host offers it.
    pub hash: holdfast_proto::auth::HashId,
    /// The DH group the controller asks for ([`holdfast_proto::auth::dh_group`]: NULL, or an FFDHE group).
    pub dh_group: u8,
}

impl HostConfig {
    /// The parsed keys, or (the key at fault, why).
    pub fn keys(&self) -> Result<HostKeys, (&'static str, String)> {
        use holdfast_proto::auth::{DhchapSecret, HashId};
        let host_key = DhchapSecret::parse(&self.dhchap_key).map_err(|e| ("dhchap_key", e.to_string()))?;
        let ctrl_key = match &self.dhchap_ctrl_key {
            Some(k) => Some(DhchapSecret::parse(k).map_err(|e| ("dhchap_ctrl_key", e.to_string()))?),
            None => None,
        };
        let hash = match &self.dhchap_hash {
            None => HashId::Sha256,
            Some(h) => {
                HashId::from_name(h).ok_or(("dhchap_hash", format!("\"{h}\" is not sha256, sha384 or sha512")))?
            }
        };
        let dh_group = match self.dhchap_dhgroup.as_deref() {
            None | Some("null") => holdfast_proto::auth::dh_group::NULL,
            Some(g) => holdfast_proto::auth::ffdhe::group_by_name(g).map(|g| g.id).ok_or((
                "dhchap_dhgroup",
                format!("\"{g}\" is not null, ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144 or ffdhe8192"),
            ))?,
        };
        Ok(HostKeys { host_key, ctrl_key, hash, dh_group })
    }
}

/// One listener (an NVMe-oF port).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Port ID (PORTID in the discovery log).
    pub id: u16,
    /// Address to listen on.
    pub listen: String,
    /// The Asymmetric Namespace Access state of every ANA group through this port, unless `ana_groups` names
    /// the group (as nvmet's `ports/N/ana_groups/G/ana_state`): `optimized` (the default), `non-optimized`,
    /// `inaccessible`, `persistent-loss` or `change`.
    pub ana_state: Option<String>,
    /// ANA states of chosen groups through this port: `ana_groups = { "2" = "inaccessible" }`.
    #[serde(default)]
    pub ana_groups: std::collections::BTreeMap<String, String>,
}

impl PortConfig {
    /// The ANA states this port gives: the default for every group and the groups named; the key and the
    /// reason for a state or group that is not one.
    pub fn ana(&self) -> Result<crate::ana::PortAnaConfig, (String, String)> {
        let state = |v: &str| {
            AnaState::from_name(v).ok_or_else(|| {
                let names: Vec<&str> = AnaState::ALL.iter().map(|s| s.name()).collect();
                format!("\"{v}\" is not an ANA state ({})", names.join(", "))
            })
        };
        let default = match &self.ana_state {
            None => AnaState::Optimized,
            Some(v) => state(v).map_err(|r| ("ana_state".to_string(), r))?,
        };
        let mut groups = std::collections::BTreeMap::new();
        for (g, v) in &self.ana_groups {
            let key = format!("ana_groups.{g}");
            let id = g.parse::<u32>().ok().filter(|id| (1..=crate::ana::ANAGRPMAX).contains(id)).ok_or_else(|| {
                (key.clone(), format!("\"{g}\" is not an ANA group ID (1..={})", crate::ana::ANAGRPMAX))
            })?;
            groups.insert(id, state(v).map_err(|r| (key, r))?);
        }
        Ok(crate::ana::PortAnaConfig { default, groups })
    }
}

/// One subsystem.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    /// Subsystem NQN.
    pub nqn: String,
    /// Serial number (at most 20 ASCII characters); derived from the NQN if absent.
    pub serial: Option<String>,
    /// Model number (at most 40 ASCII characters).
    pub model: Option<String>,
    /// Admit any host.
    #[serde(default)]
    pub allow_any_host: bool,
    /// Host NQNs admitted when `allow_any_host` is false (both at once is refused).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Port IDs the subsystem is exported on; empty = all.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Lowest CNTLID a controller of this subsystem gets (as nvmet's `attr_cntlid_min`): two target processes
    /// serving one subsystem on two paths need disjoint ranges, or a multipath host refuses the second path's
    /// controller as a duplicate.
    #[serde(default = "default_cntlid_min")]
    pub cntlid_min: u16,
    /// Highest CNTLID a controller of this subsystem gets (at most 0xFFEF).
    #[serde(default = "default_cntlid_max")]
    pub cntlid_max: u16,
    /// Connection policy advertised to hosts.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Namespaces.
    #[serde(rename = "namespace", default)]
    pub namespaces: Vec<NamespaceConfig>,
}

/// The connection policy of README, Connection policy (milliseconds).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Keep-alive timeout hosts should request.
    pub kato_ms: u32,
    /// First delay between reconnect attempts.
    pub reconnect_delay_ms: u32,
    /// Cap of the exponential reconnect backoff.
    pub reconnect_delay_max_ms: u32,
    /// How long hosts keep reconnecting before failing I/O for good.
    pub ctrl_loss_tmo_ms: u32,
    /// After this long disconnected, I/O fails fast while reconnecting continues (0 = off).
    pub fast_io_fail_tmo_ms: u32,
    /// Command quiesce time: how long a dead association's commands may still touch media.
    pub cqt_ms: u32,
}

fn default_cntlid_min() -> u16 {
    crate::subsystem::MIN_CNTLID
}

fn default_cntlid_max() -> u16 {
    crate::subsystem::MAX_CNTLID
}

/// Largest `cqt_ms` accepted: a Connect held that long still completes well inside a host's admin command
/// timeout (60 s on Linux), and the value fits Identify Controller CQT (16 bits of milliseconds).
pub const MAX_CQT_MS: u32 = 30_000;

impl PolicyConfig {
    /// The policy hosts are told, in a line.
    pub fn describe(&self) -> String {
        let fast_io_fail = match self.fast_io_fail_tmo_ms {
            0 => "off".to_string(),
            ms => format!("{ms} ms"),
        };
        format!(
            "kato {} ms, reconnect delay {} ms (backoff to {} ms), ctrl_loss_tmo {} ms, fast_io_fail_tmo {fast_io_fail}, \
             cqt {} ms",
            self.kato_ms, self.reconnect_delay_ms, self.reconnect_delay_max_ms, self.ctrl_loss_tmo_ms, self.cqt_ms
        )
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            kato_ms: 5000,
            reconnect_delay_ms: 1000,
            reconnect_delay_max_ms: 8000,
            ctrl_loss_tmo_ms: 600_000,
            fast_io_fail_tmo_ms: 0,
            cqt_ms: 5000,
        }
    }
}

/// Backend kind.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// In memory.
    Ram,
    /// A file or block device.
    File,
}

/// One namespace.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Namespace ID (1..0xFFFFFFFE).
    pub nsid: u32,
    /// Backend kind.
    pub backend: BackendKind,
    /// File path (file backend).
    pub path: Option<PathBuf>,
    /// Size in MiB (required for RAM; for a file, grows it to this size).
    pub size_mib: Option<u64>,
    /// Logical block size: 512 or 4096.
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Namespace UUID ("xxxxxxxx-xxxx-..."); derived from the NQN and nsid if absent.
    pub uuid: Option<String>,
    /// NGUID (32 hex digits); derived if absent.
    pub nguid: Option<String>,
    /// EUI-64 (16 hex digits); derived if absent.
    pub eui64: Option<String>,
    /// Export the namespace write protected (a file backend only): the file is opened read-only and never
    /// grown (`size_mib`, if given, at most its size), Identify Namespace says so (NSATTR bit 0), and every
    /// command but Read and Flush fails with Namespace is Write Protected, as nvmet serves a read-only device.
    #[serde(default)]
    pub read_only: bool,
    /// The ANA group the namespace belongs to (ANAGRPID, 1..=128; default 1): its state through each port is
    /// that port's `ana_state` for the group.
    #[serde(default = "default_ana_group")]
    pub ana_group: u32,
}

fn default_ana_group() -> u32 {
    1
}

fn default_block_size() -> u32 {
    512
}

/// Namespace identifiers after derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsIds {
    /// UUID.
    pub uuid: [u8; 16],
    /// NGUID.
    pub nguid: [u8; 16],
    /// EUI-64.
    pub eui64: [u8; 8],
}

fn derive(tag: &str, nqn: &str, nsid: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update(b"/");
    h.update(nqn.as_bytes());
    h.update(b"/");
    h.update(nsid.to_le_bytes());
    h.finalize().into()
}

/// A serial number derived from the NQN: stable across restarts, 20 hex characters.
pub fn derived_serial(nqn: &str) -> String {
    derive("serial", nqn, 0)[..10].iter().map(|b| format!("{b:02x}")).collect()
}

/// `2 * N` hex digits (dashes ignored, as in a UUID) as `N` bytes.
pub(crate) fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s: String = s.chars().filter(|c| *c != '-').collect();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl NamespaceConfig {
    /// The namespace's identifiers: configured, or derived from (subsystem NQN, nsid) so that a restarted
    /// target is the same subsystem to a host.
    pub fn ids(&self, nqn: &str) -> NsIds {
        let mut uuid: [u8; 16] = derive("uuid", nqn, self.nsid)[..16].try_into().unwrap_or([0; 16]);
        uuid[6] = (uuid[6] & 0x0F) | 0x40; // RFC 4122 version 4 layout (name-derived, random-looking)
        uuid[8] = (uuid[8] & 0x3F) | 0x80;
        let nguid: [u8; 16] = derive("nguid", nqn, self.nsid)[..16].try_into().unwrap_or([0; 16]);
        let eui64: [u8; 8] = derive("eui64", nqn, self.nsid)[..8].try_into().unwrap_or([0; 8]);
        NsIds {
            uuid: self.uuid.as_deref().and_then(parse_hex).unwrap_or(uuid),
            nguid: self.nguid.as_deref().and_then(parse_hex).unwrap_or(nguid),
            eui64: self.eui64.as_deref().and_then(parse_hex).unwrap_or(eui64),
        }
    }
    /// Size in bytes, if set.
    pub fn size_bytes(&self) -> Option<u64> {
        self.size_mib.map(|m| m.saturating_mul(1 << 20))
    }
}

/// A namespace identifier given in the file: not all zeroes ("not reported", NVMe Base 2.0 §5.17.2.1), and
/// not one another namespace has (a host tells namespaces apart by them, and the Linux host refuses a
/// namespace whose identifier another already has).
fn unique_id(
    seen: &mut HashMap<(&'static str, Vec<u8>), String>,
    kind: &'static str,
    v: &[u8],
    key: &str,
) -> Result<(), String> {
    if v.iter().all(|&b| b == 0) {
        return Err(format!("an all-zero {kind} means \"none\"; leave it out to have one derived"));
    }
    if let Some(other) = seen.insert((kind, v.to_vec()), key.to_string()) {
        return Err(format!("the same {kind} as {other}"));
    }
    Ok(())
}

/// Which file a namespace's path names, to tell two paths to one file: a block device by its device number, an
/// existing file by its inode (whatever links or symbolic links lead to it), a file yet to be created by its
/// absolute path.
#[derive(PartialEq, Eq, Hash)]
enum FileIdentity {
    Device(u64),
    Inode(u64, u64),
    Path(PathBuf),
}

impl FileIdentity {
    fn of(path: &Path) -> FileIdentity {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_block_device() => FileIdentity::Device(m.rdev()),
            Ok(m) => FileIdentity::Inode(m.dev(), m.ino()),
            Err(_) => FileIdentity::Path(resolved_to_be(path)),
        }
    }
}

/// Where a file yet to be created will be: its directory resolved (`..`, symbolic links), then its name, so that
/// `d/new.img`, `d/sub/../new.img` and `link-to-d/new.img` are one file to be (the absolute path if the
/// directory cannot be resolved).
pub(crate) fn resolved_to_be(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (abs.parent().map(std::fs::canonicalize), abs.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => abs,
    }
}

fn valid_nqn(n: &str) -> Result<(), String> {
    if n.is_empty() {
        return Err("is empty".into());
    }
    if n.len() > holdfast_proto::fabrics::NQN_MAX_LEN {
        return Err(format!("is {} bytes; an NQN has at most 223", n.len()));
    }
    if !n.starts_with("nqn.") {
        return Err(format!("\"{n}\" does not start with \"nqn.\""));
    }
    // NVMe Base 2.0 §4.5: "nqn.yyyy-mm." and a reverse domain name (or the UUID form, "nqn.2014-08.org.nvmexpress:uuid:...").
    let date = n.as_bytes().get(4..12).unwrap_or_default();
    let date_ok = date.len() == 8
        && date[..4].iter().all(u8::is_ascii_digit)
        && date[4] == b'-'
        && date[5..7].iter().all(u8::is_ascii_digit)
        && date[7] == b'.';
    if !date_ok || n.len() <= 12 {
        return Err(format!("\"{n}\" is not \"nqn.yyyy-mm.\" followed by a reverse domain name"));
    }
    // The month the naming authority held the domain: 01 to 12.
    let month = (date[5] - b'0') * 10 + (date[6] - b'0');
    if !(1..=12).contains(&month) {
        return Err(format!("\"{n}\": {month:02} is not a month (nqn.yyyy-mm., mm from 01 to 12)"));
    }
    if n.bytes().any(|b| b == 0 || b.is_ascii_control()) {
        return Err("contains control characters".into());
    }
    Ok(())
}

/// The key path (`subsystem[0].namespace[1].size_mib`) of what TOML text `text` has at byte `at`: the innermost
/// key whose name or value covers it, or table whose header does. None if `text` is not TOML.
fn key_at(text: &str, at: usize) -> Option<String> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut path = String::new();
    key_in_table(doc.as_table(), at, &mut path).then_some(path)
}

fn covers(span: Option<std::ops::Range<usize>>, at: usize) -> bool {
    span.is_some_and(|s| s.contains(&at))
}

/// `path` extended by `step`, kept if `found` says so.
fn descend(path: &mut String, step: &str, found: impl FnOnce(&mut String) -> bool) -> bool {
    let len = path.len();
    if !path.is_empty() && !step.starts_with('[') {
        path.push('.');
    }
    path.push_str(step);
    if found(path) {
        return true;
    }
    path.truncate(len);
    false
}

fn key_in_table(t: &toml_edit::Table, at: usize, path: &mut String) -> bool {
    t.iter().any(|(k, item)| {
        let key_span = t.get_key_value(k).and_then(|(key, _)| key.span());
        descend(path, k, |p| key_in_item(item, at, p) || covers(key_span, at))
    })
}

fn key_in_item(item: &toml_edit::Item, at: usize, path: &mut String) -> bool {
    match item {
        toml_edit::Item::Value(v) => key_in_value(v, at, path),
        toml_edit::Item::Table(t) => key_in_table(t, at, path) || covers(t.span(), at),
        toml_edit::Item::ArrayOfTables(a) => a
            .iter()
            .enumerate()
            .any(|(i, t)| descend(path, &format!("[{i}]"), |p| key_in_table(t, at, p) || covers(t.span(), at))),
        toml_edit::Item::None => false,
    }
}

fn key_in_value(v: &toml_edit::Value, at: usize, path: &mut String) -> bool {
    match v {
        toml_edit::Value::Array(a) => {
            a.iter().enumerate().any(|(i, x)| descend(path, &format!("[{i}]"), |p| key_in_value(x, at, p)))
                || covers(a.span(), at)
        }
        toml_edit::Value::InlineTable(t) => {
            t.iter().any(|(k, x)| {
                let key_span = t.get_key_value(k).and_then(|(key, _)| key.span());
                descend(path, k, |p| key_in_value(x, at, p) || covers(key_span, at))
            }) || covers(t.span(), at)
        }
        _ => covers(v.span(), at),
    }
}

impl Config {
    /// Read and validate a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &file)
    }

    /// Parse and validate TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let mut reason = e.message().to_string();
            let key = match e.span() {
                Some(span) => {
                    let at = span.start.min(text.len());
                    let line = text.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
                    // `toml` names the key of an unknown field, not that of a value of the wrong type: the
                    // key whose name or value is at the error's place, when the text is TOML at all.
                    match key_at(text, at) {
                        Some(key) => {
                            reason = format!("{reason} (line {line})");
                            key
                        }
                        None => format!("line {line}"),
                    }
                }
                None => "(document)".into(),
            };
            ConfigError { file: file.into(), key, reason }
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Check everything TOML's types cannot.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: String, reason: String| ConfigError { file: file.into(), key, reason };
        if self.ports.is_empty() {
            return Err(err("port".into(), "at least one [[port]] is needed".into()));
        }
        let mut ids = HashSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if !ids.insert(p.id) {
                return Err(err(format!("port[{i}].id"), format!("duplicate port id {}", p.id)));
            }
            p.ana().map_err(|(key, reason)| err(format!("port[{i}].{key}"), reason))?;
            let Ok(a) = p.listen.parse::<SocketAddr>() else {
                return Err(err(format!("port[{i}].listen"), format!("\"{}\" is not an IP:PORT address", p.listen)));
            };
            // Two ports on one TCP port: the second could never be bound (an unspecified address takes the
            // port on every address). Port 0 (any free port) is each its own.
            if a.port() != 0 {
                for (j, q) in self.ports[..i].iter().enumerate() {
                    let Ok(b) = q.listen.parse::<SocketAddr>() else { continue };
                    if b.port() == a.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
                    {
                        return Err(err(
                            format!("port[{i}].listen"),
                            format!("{} overlaps port[{j}]'s {} (same TCP port)", p.listen, q.listen),
                        ));
                    }
                }
            }
        }
        let mut referred = HashSet::new();
        for (i, r) in self.referrals.iter().enumerate() {
            let k = |f: &str| format!("referral[{i}].{f}");
            let a = match r.address.parse::<SocketAddr>() {
                Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => a,
                _ => {
                    return Err(err(
                        k("address"),
                        format!("\"{}\" is not the IP:PORT of a discovery controller", r.address),
                    ))
                }
            };
            if !referred.insert((a, r.portid)) {
                return Err(err(k("address"), format!("{a} (port ID {}) is referred to twice", r.portid)));
            }
            for (j, p) in r.ports.iter().enumerate() {
                if !ids.contains(p) {
                    return Err(err(k(&format!("ports[{j}]")), format!("no [[port]] has id {p}")));
                }
            }
        }
        let mut nqns = HashSet::new();
        // Namespace identifiers given in the file, with the key that gave each: unique across subsystems.
        let mut seen: HashMap<(&'static str, Vec<u8>), String> = HashMap::new();
        let mut ram_mib = 0u64;
        // The file each file namespace names, with its key: one file under two namespaces would have each
        // overwrite the other's data unseen (two identities for one medium; SPDK refuses it by claiming the bdev).
        let mut files: HashMap<FileIdentity, String> = HashMap::new();
        for (i, s) in self.subsystems.iter().enumerate() {
            let k = |f: &str| format!("subsystem[{i}].{f}");
            valid_nqn(&s.nqn).map_err(|r| err(k("nqn"), format!("NQN {r}")))?;
            if s.nqn == holdfast_proto::fabrics::DISCOVERY_NQN {
                return Err(err(k("nqn"), "the discovery NQN is reserved".into()));
            }
            if !nqns.insert(&s.nqn) {
                return Err(err(k("nqn"), format!("duplicate subsystem {}", s.nqn)));
            }
            if let Some(sn) = &s.serial {
                if sn.is_empty() || sn.len() > 20 || !sn.bytes().all(|b| (0x20..0x7F).contains(&b)) {
                    return Err(err(k("serial"), "must be 1 to 20 printable ASCII characters".into()));
                }
            }
            if let Some(mn) = &s.model {
                if mn.is_empty() || mn.len() > 40 || !mn.bytes().all(|b| (0x20..0x7F).contains(&b)) {
                    return Err(err(k("model"), "must be 1 to 40 printable ASCII characters".into()));
                }
            }
            for (j, h) in s.allowed_hosts.iter().enumerate() {
                valid_nqn(h).map_err(|r| err(k(&format!("allowed_hosts[{j}]")), format!("host NQN {r}")))?;
            }
            if !s.allow_any_host && s.allowed_hosts.is_empty() {
                return Err(err(k("allowed_hosts"), "no host could connect: set allow_any_host or list hosts".into()));
            }
            // Either every host or the listed ones: with both, the list would look enforced and admit anyone
            // (Linux nvmet's configfs refuses the combination either way round).
            if s.allow_any_host && !s.allowed_hosts.is_empty() {
                return Err(err(
                    k("allowed_hosts"),
                    "lists hosts while allow_any_host = true admits every host: remove one of the two".into(),
                ));
            }
            for (j, p) in s.ports.iter().enumerate() {
                if !ids.contains(p) {
                    return Err(err(k(&format!("ports[{j}]")), format!("no [[port]] has id {p}")));
                }
            }
            if s.cntlid_min < crate::subsystem::MIN_CNTLID || s.cntlid_min > s.cntlid_max {
                return Err(err(
                    k("cntlid_min"),
                    format!(
                        "{} is not in {}..=cntlid_max ({})",
                        s.cntlid_min,
                        crate::subsystem::MIN_CNTLID,
                        s.cntlid_max
                    ),
                ));
            }
            if s.cntlid_max > crate::subsystem::MAX_CNTLID {
                return Err(err(
                    k("cntlid_max"),
                    format!(
                        "{:#x} is above {:#x} (0xFFF0..=0xFFFF are reserved)",
                        s.cntlid_max,
                        crate::subsystem::MAX_CNTLID
                    ),
                ));
            }
            let pol = &s.policy;
            if pol.kato_ms < holdfast_proto::policy::MIN_KATO_MS {
                return Err(err(
                    k("policy.kato_ms"),
                    format!(
                        "{} is below {} (keep-alive is mandatory on fabrics, and a host sends a Keep Alive every \
                         third of KATO and must have its answer within the rest)",
                        pol.kato_ms,
                        holdfast_proto::policy::MIN_KATO_MS
                    ),
                ));
            }
            if pol.reconnect_delay_max_ms < pol.reconnect_delay_ms {
                return Err(err(k("policy.reconnect_delay_max_ms"), "is below reconnect_delay_ms".into()));
            }
            if pol.cqt_ms > MAX_CQT_MS {
                return Err(err(
                    k("policy.cqt_ms"),
                    format!(
                        "{} is above {MAX_CQT_MS}: a reconnecting host's Connect is held up to this long, and hosts \
                         give up on an admin command after 60 s (Linux NVME_ADMIN_TIMEOUT)",
                        pol.cqt_ms
                    ),
                ));
            }
            if pol.fast_io_fail_tmo_ms != 0 && pol.fast_io_fail_tmo_ms > pol.ctrl_loss_tmo_ms {
                return Err(err(k("policy.fast_io_fail_tmo_ms"), "is above ctrl_loss_tmo_ms".into()));
            }
            let mut nsids = HashSet::new();
            for (j, n) in s.namespaces.iter().enumerate() {
                let k = |f: &str| format!("subsystem[{i}].namespace[{j}].{f}");
                if n.nsid == 0 || n.nsid == 0xFFFF_FFFF {
                    return Err(err(k("nsid"), format!("{} is not a valid namespace ID", n.nsid)));
                }
                if n.nsid > crate::MAX_NSID {
                    return Err(err(
                        k("nsid"),
                        format!("{} is above the highest supported nsid {}", n.nsid, crate::MAX_NSID),
                    ));
                }
                if !nsids.insert(n.nsid) {
                    return Err(err(k("nsid"), format!("duplicate nsid {}", n.nsid)));
                }
                if !(1..=crate::ana::ANAGRPMAX).contains(&n.ana_group) {
                    return Err(err(
                        k("ana_group"),
                        format!("{} is not an ANA group ID (1..={})", n.ana_group, crate::ana::ANAGRPMAX),
                    ));
                }
                if n.block_size != 512 && n.block_size != 4096 {
                    return Err(err(k("block_size"), format!("{} is not 512 or 4096", n.block_size)));
                }
                if let Some(m) = n.size_mib {
                    if m.checked_mul(1 << 20).is_none_or(|b| b > i64::MAX as u64) {
                        return Err(err(k("size_mib"), format!("{m} MiB is more bytes than a file can hold")));
                    }
                }
                match n.backend {
                    BackendKind::Ram => {
                        if n.path.is_some() {
                            return Err(err(k("path"), "a RAM namespace has no path".into()));
                        }
                        if n.read_only {
                            return Err(err(
                                k("read_only"),
                                "a RAM namespace starts empty: write protected, it could only read zeroes".into(),
                            ));
                        }
                        if n.size_mib.unwrap_or(0) == 0 {
                            return Err(err(k("size_mib"), "a RAM namespace needs a size above 0".into()));
                        }
                        ram_mib = ram_mib.saturating_add(n.size_mib.unwrap_or(0));
                        let max = crate::backend::ram::max_total_mib();
                        if ram_mib > max {
                            return Err(err(
                                k("size_mib"),
                                format!(
                                    "RAM namespaces of {ram_mib} MiB in all, above the {max} MiB this machine takes: \
                                     their chunks are allocated only when written, but the table of them (16 bytes \
                                     per 128 KiB) is allocated at once, and may take at most 1/16 of its memory"
                                ),
                            ));
                        }
                    }
                    BackendKind::File => {
                        let Some(path) = &n.path else {
                            return Err(err(k("path"), "a file namespace needs a path".into()));
                        };
                        if let Some(other) = files.insert(FileIdentity::of(path), k("path")) {
                            return Err(err(
                                k("path"),
                                format!(
                                    "{} is the same file as {other}: two namespaces on one file would overwrite \
                                     each other's data",
                                    path.display()
                                ),
                            ));
                        }
                        if n.size_mib == Some(0) {
                            return Err(err(k("size_mib"), "must be above 0".into()));
                        }
                    }
                }
                if let Some(u) = &n.uuid {
                    let v = parse_hex::<16>(u).ok_or_else(|| err(k("uuid"), format!("\"{u}\" is not a UUID")))?;
                    unique_id(&mut seen, "uuid", &v, &k("uuid")).map_err(|r| err(k("uuid"), r))?;
                }
                if let Some(u) = &n.nguid {
                    let v =
                        parse_hex::<16>(u).ok_or_else(|| err(k("nguid"), format!("\"{u}\" is not 32 hex digits")))?;
                    unique_id(&mut seen, "nguid", &v, &k("nguid")).map_err(|r| err(k("nguid"), r))?;
                }
                if let Some(u) = &n.eui64 {
                    let v =
                        parse_hex::<8>(u).ok_or_else(|| err(k("eui64"), format!("\"{u}\" is not 16 hex digits")))?;
                    unique_id(&mut seen, "eui64", &v, &k("eui64")).map_err(|r| err(k("eui64"), r))?;
                }
            }
        }
        // The identifiers in force, derived ones included: one given in the file may be another namespace's
        // derived one (its UUID, read from `identify`), and two namespaces would then share it.
        let mut in_force: HashMap<(&'static str, Vec<u8>), (String, bool)> = HashMap::new();
        for (i, s) in self.subsystems.iter().enumerate() {
            for (j, n) in s.namespaces.iter().enumerate() {
                let ids = n.ids(&s.nqn);
                let here = format!("subsystem[{i}].namespace[{j}]");
                for (kind, v, given) in [
                    ("uuid", ids.uuid.to_vec(), n.uuid.is_some()),
                    ("nguid", ids.nguid.to_vec(), n.nguid.is_some()),
                    ("eui64", ids.eui64.to_vec(), n.eui64.is_some()),
                ] {
                    if let Some((other, other_given)) = in_force.insert((kind, v), (here.clone(), given)) {
                        // Said at the one the file gives (both given was refused above).
                        let (at, derived) = if given { (&here, &other) } else { (&other, &here) };
                        debug_assert!(given || other_given);
                        return Err(err(
                            format!("{at}.{kind}"),
                            format!("the {kind} {derived} has, derived from its subsystem NQN and NSID"),
                        ));
                    }
                }
            }
        }
        let mut host_nqns = HashSet::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let k = |f: &str| format!("host[{i}].{f}");
            valid_nqn(&h.nqn).map_err(|r| err(k("nqn"), format!("host NQN {r}")))?;
            if !host_nqns.insert(&h.nqn) {
                return Err(err(k("nqn"), format!("duplicate host {}", h.nqn)));
            }
            h.keys().map_err(|(key, reason)| err(k(key), reason))?;
            if !self.subsystems.iter().any(|s| s.allowed_hosts.contains(&h.nqn)) {
                return Err(err(
                    k("nqn"),
                    format!(
                        "no subsystem lists {} in allowed_hosts, so its keys would never be asked for (a subsystem \
                         with allow_any_host = true does not authenticate hosts)",
                        h.nqn
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid configuration: one port, one subsystem with one 16 MiB RAM namespace (other modules' tests too).
    pub(crate) const GOOD: &str = r#"
[[port]]
id = 1
listen = "127.0.0.1:4420"

[[subsystem]]
nqn = "nqn.2026-01.io.holdfast:a"
allow_any_host = true
[[subsystem.namespace]]
nsid = 1
backend = "ram"
size_mib = 16
block_size = 4096
"#;

    #[test]
    fn good_config_parses() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.subsystems[0].namespaces[0].block_size, 4096);
        assert_eq!(c.subsystems[0].policy, PolicyConfig::default());
    }

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001";
    // bytes(range(32)) with its CRC-32 (see holdfast_proto::auth's known answers).
    const KEY: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";

    /// GOOD with HOSTNQN listed, and a [[host]] table with these extra lines.
    fn with_host(lines: &str) -> Result<Config, ConfigError> {
        let text = GOOD.replace("allow_any_host = true", &format!("allowed_hosts = [\"{HOST}\"]"))
            + &format!("[[host]]\nnqn = \"{HOST}\"\n{lines}");
        Config::parse(&text, "t.toml")
    }

    #[test]
    fn host_keys_parse_and_bad_ones_are_refused_by_key_without_the_secret() {
        let c = with_host(&format!(
            "dhchap_key = \"{KEY}\"\ndhchap_ctrl_key = \"{}\"\ndhchap_hash = \"sha512\"\n",
            KEY.replace(":00:", ":01:")
        ))
        .unwrap();
        let k = c.hosts[0].keys().unwrap();
        assert_eq!(k.hash, holdfast_proto::auth::HashId::Sha512);
        assert_eq!(k.ctrl_key.unwrap().transform, Some(holdfast_proto::auth::HashId::Sha256));
        assert!(!format!("{c:?}").contains("AAEC"), "Debug shows no secret");
        let e =
            with_host("dhchap_key = \"DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaS:\"\n").unwrap_err();
        assert_eq!(e.key, "host[0].dhchap_key");
        assert!(e.reason.contains("CRC-32"), "{e}");
        assert!(!e.to_string().contains("AAEC"), "{e}");
        let e = with_host("dhchap_key = \"secret\"\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.file.as_str()), ("host[0].dhchap_key", "t.toml"));
        let e = with_host(&format!("dhchap_key = \"{KEY}\"\ndhchap_ctrl_key = \"DHHC-1:07:AAAA:\"\n")).unwrap_err();
        assert_eq!(e.key, "host[0].dhchap_ctrl_key", "{e}");
        let e = with_host(&format!("dhchap_key = \"{KEY}\"\ndhchap_hash = \"md5\"\n")).unwrap_err();
        assert_eq!(e.to_string(), "t.toml: host[0].dhchap_hash: \"md5\" is not sha256, sha384 or sha512");
        let k =
            with_host(&format!("dhchap_key = \"{KEY}\"\ndhchap_dhgroup = \"ffdhe3072\"\n")).unwrap().hosts[0].keys();
        assert_eq!(k.unwrap().dh_group, 0x02);
        assert_eq!(with_host(&format!("dhchap_key = \"{KEY}\"\n")).unwrap().hosts[0].keys().unwrap().dh_group, 0);
        let e = with_host(&format!("dhchap_key = \"{KEY}\"\ndhchap_dhgroup = \"ffdhe1024\"\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: host[0].dhchap_dhgroup: \"ffdhe1024\" is not null, ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144 or \
             ffdhe8192"
        );
        // A host no subsystem lists (here: the subsystem admits any host) would never be asked for its keys.
        let text = GOOD.to_string() + &format!("[[host]]\nnqn = \"{HOST}\"\ndhchap_key = \"{KEY}\"\n");
        let e = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(e.key, "host[0].nqn");
        assert!(e.reason.contains("allowed_hosts"), "{e}");
    }

    /// GOOD with `from` replaced by `to`, which must be refused.
    fn bad(from: &str, to: &str) -> ConfigError {
        Config::parse(&GOOD.replace(from, to), "t.toml").unwrap_err()
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let e = bad("4096", "1024");
        assert_eq!(e.to_string(), "t.toml: subsystem[0].namespace[0].block_size: 1024 is not 512 or 4096");
        let e = bad("size_mib = 16", "size_mib = 16\nsizee = 1");
        assert!(e.to_string().starts_with("t.toml: subsystem[0].namespace[0].sizee: "), "{e}");
        assert!(e.to_string().ends_with("(line 13)"), "the line of `sizee`: {e}");
        // Sizes: one that wraps when made bytes, and RAM namespaces whose chunk tables this machine cannot hold.
        let e = bad("size_mib = 16", "size_mib = 17592186044417");
        assert_eq!(e.key, "subsystem[0].namespace[0].size_mib", "{e}");
        let e = bad("size_mib = 16", "size_mib = 4000000000000");
        assert_eq!(e.key, "subsystem[0].namespace[0].size_mib", "{e}");
        assert!(e.reason.contains("this machine takes"), "{e}");
        // NQNs without the date and domain.
        let e = bad("nqn.2026-01.io.holdfast:a", "nqn.");
        assert_eq!(e.key, "subsystem[0].nqn", "{e}");
        let e = bad("nqn.2026-01.io.holdfast:a", "nqn.2026-13.io.holdfast:a");
        assert_eq!((e.key.as_str(), e.reason.contains("13 is not a month")), ("subsystem[0].nqn", true), "{e}");
        // Two ports on one TCP port.
        let e = bad(
            "listen = \"127.0.0.1:4420\"",
            "listen = \"127.0.0.1:4420\"\n[[port]]\nid = 2\nlisten = \"0.0.0.0:4420\"",
        );
        assert_eq!(e.key, "port[1].listen", "{e}");
        // Referrals: an address that is not a discovery controller's, a port that does not exist, one twice.
        let referral = |body: &str| Config::parse(&format!("{GOOD}[[referral]]\n{body}\n"), "t.toml");
        let e = referral("address = \"0.0.0.0:4420\"\nportid = 1").unwrap_err();
        assert_eq!(e.key, "referral[0].address", "{e}");
        let e = referral("address = \"192.0.2.1:4420\"\nportid = 1\nports = [9]").unwrap_err();
        assert_eq!((e.key.as_str(), e.reason.as_str()), ("referral[0].ports[0]", "no [[port]] has id 9"));
        let e = referral(
            "address = \"192.0.2.1:4420\"\nportid = 1\n[[referral]]\naddress = \"192.0.2.1:4420\"\nportid = 1",
        )
        .unwrap_err();
        assert_eq!(e.key, "referral[1].address", "{e}");
        let e = referral("address = \"192.0.2.1:4420\"").unwrap_err();
        assert!(e.to_string().contains("portid"), "{e}");
        assert!(referral("address = \"192.0.2.1:4420\"\nportid = 2\nports = [1]").is_ok());
        // Namespace identifiers: all zeroes, or the same as another namespace's.
        let e = bad("block_size = 4096", "block_size = 4096\neui64 = \"0000000000000000\"");
        assert_eq!(e.key, "subsystem[0].namespace[0].eui64", "{e}");
        let g = "nguid = \"000102030405060708090a0b0c0d0e0f\"";
        let twice = GOOD.replace("block_size = 4096", &format!("block_size = 4096\n{g}"))
            + &format!("[[subsystem.namespace]]\nnsid = 2\nbackend = \"ram\"\nsize_mib = 1\n{g}\n");
        let e = Config::parse(&twice, "t.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: subsystem[0].namespace[1].nguid: the same nguid as subsystem[0].namespace[0].nguid"
        );
        // A UUID given in the file that another namespace has derived (from its subsystem NQN and NSID).
        let good = Config::parse(GOOD, "t.toml").unwrap();
        let derived = good.subsystems[0].namespaces[0].ids(&good.subsystems[0].nqn).uuid;
        let hex: String = derived.iter().map(|b| format!("{b:02x}")).collect();
        let clash = GOOD.to_string()
            + &format!("[[subsystem.namespace]]\nnsid = 2\nbackend = \"ram\"\nsize_mib = 1\nuuid = \"{hex}\"\n");
        let e = Config::parse(&clash, "t.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: subsystem[0].namespace[1].uuid: the uuid subsystem[0].namespace[0] has, derived from its \
             subsystem NQN and NSID"
        );
        let e = bad("nqn.2026", "foo.2026");
        assert_eq!(e.key, "subsystem[0].nqn");
        let e = bad("allow_any_host = true", "allow_any_host = true\n[subsystem.policy]\ncqt_ms = 90000");
        assert_eq!(e.key, "subsystem[0].policy.cqt_ms", "{e}");
        let e = bad("allow_any_host = true", "allow_any_host = true\n[subsystem.policy]\nkato_ms = 100");
        assert_eq!(e.to_string(), "t.toml: subsystem[0].policy.kato_ms: 100 is below 500 (keep-alive is mandatory on fabrics, and a host sends a Keep Alive every third of KATO and must have its answer within the rest)");
        let e = bad("allow_any_host = true", "allow_any_host = true\ncntlid_min = 9\ncntlid_max = 8");
        assert_eq!(e.key, "subsystem[0].cntlid_min", "{e}");
        let e = bad("allow_any_host = true", "allow_any_host = true\ncntlid_max = 65520");
        assert_eq!(e.key, "subsystem[0].cntlid_max", "{e}");
        // A write-protected RAM namespace could only read zeroes.
        let e = bad("size_mib = 16", "size_mib = 16\nread_only = true");
        assert_eq!(e.key, "subsystem[0].namespace[0].read_only", "{e}");
        // Every host and a list at once: the list would look enforced.
        let e = bad(
            "allow_any_host = true",
            "allow_any_host = true\nallowed_hosts = [\"nqn.2014-08.org.nvmexpress:uuid:1\"]",
        );
        assert_eq!(e.key, "subsystem[0].allowed_hosts", "{e}");
        assert!(e.to_string().contains("allow_any_host = true admits every host"), "{e}");
        // ANA: a state by another name, a group ID out of range, as a port's key or a namespace's group.
        let port = "listen = \"127.0.0.1:4420\"";
        let e = bad(port, &format!("{port}\nana_state = \"standby\""));
        assert_eq!(
            e.to_string(),
            "t.toml: port[0].ana_state: \"standby\" is not an ANA state (optimized, non-optimized, inaccessible, \
             persistent-loss, change)"
        );
        let e = bad(port, &format!("{port}\nana_groups = {{ \"0\" = \"optimized\" }}"));
        assert_eq!(e.to_string(), "t.toml: port[0].ana_groups.0: \"0\" is not an ANA group ID (1..=128)");
        let e = bad(port, &format!("{port}\nana_groups = {{ \"2\" = \"gone\" }}"));
        assert_eq!(e.key, "port[0].ana_groups.2", "{e}");
        let e = bad("size_mib = 16", "size_mib = 16\nana_group = 129");
        assert_eq!(e.to_string(), "t.toml: subsystem[0].namespace[0].ana_group: 129 is not an ANA group ID (1..=128)");
        Config::parse(&GOOD.replace(port, &format!("{port}\nana_groups = {{ \"128\" = \"change\" }}")), "t").unwrap();
    }

    /// Two file namespaces on one file, by the same path, by another spelling of a file yet to be created (`.`,
    /// `..`, a symbolic link to its directory), or through a symbolic link, in one subsystem or two: refused,
    /// naming both keys.
    #[test]
    fn two_namespaces_on_one_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vol.img");
        std::fs::write(&file, [0u8; 4096]).unwrap();
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let ns = |nsid: u32, p: &Path| {
            format!("[[subsystem.namespace]]\nnsid = {nsid}\nbackend = \"file\"\npath = \"{}\"\n", p.display())
        };
        let sub2 = "[[subsystem]]\nnqn = \"nqn.2026-01.io.holdfast:b\"\nallow_any_host = true\n";
        let nowhere = dir.path().join("new.img");
        let respelled = dir.path().join(".").join("new.img");
        // A file yet to be created, through `..` and through a symbolic link to its directory.
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let up = dir.path().join("sub").join("..").join("new.img");
        std::os::unix::fs::symlink(dir.path(), dir.path().join("dirlink")).unwrap();
        let via_link = dir.path().join("dirlink").join("new.img");
        for (a, b, two_subsystems) in [
            (&file, &file, false),
            (&file, &link, false),
            (&file, &link, true),
            (&nowhere, &respelled, false),
            (&nowhere, &up, false),
            (&nowhere, &via_link, true),
        ] {
            let text = if two_subsystems {
                format!("{GOOD}{}{sub2}{}", ns(2, a), ns(1, b))
            } else {
                format!("{GOOD}{}{}", ns(2, a), ns(3, b))
            };
            let e = Config::parse(&text, "t.toml").unwrap_err();
            let second =
                if two_subsystems { "subsystem[1].namespace[0].path" } else { "subsystem[0].namespace[2].path" };
            assert_eq!(e.key, second, "{e}");
            assert!(e.reason.contains("the same file as subsystem[0].namespace[1].path"), "{e}");
        }
        // Two files: accepted.
        let other = dir.path().join("other.img");
        Config::parse(&format!("{GOOD}{}{}", ns(2, &file), ns(3, &other)), "t.toml").unwrap();
    }

    /// A value of the wrong type or out of its type's range: `toml` gives only its place, the error names its key
    /// (it used to say `t.toml: line 13: invalid type: string "16", expected u64`, not which key).
    #[test]
    fn type_errors_name_the_key() {
        let cases = [
            ("size_mib = 16", "size_mib = \"16\"", "subsystem[0].namespace[0].size_mib", "invalid type: string"),
            ("allow_any_host = true", "allow_any_host = \"yes\"", "subsystem[0].allow_any_host", "expected a boolean"),
            ("id = 1", "id = 70000", "port[0].id", "expected u16"),
            ("listen = \"127.0.0.1:4420\"", "listen = 4420", "port[0].listen", "expected a string"),
            ("allow_any_host = true", "allow_any_host = true\nports = [1, \"2\"]", "subsystem[0].ports[1]", "string"),
            (
                "allow_any_host = true",
                "allow_any_host = true\n[subsystem.policy]\nkato_ms = \"5s\"",
                "subsystem[0].policy.kato_ms",
                "expected u32",
            ),
            ("backend = \"ram\"", "backend = \"disk\"", "subsystem[0].namespace[0].backend", "unknown variant"),
            ("backend = \"ram\"\n", "", "subsystem[0].namespace[0]", "missing field `backend`"),
        ];
        for (from, to, key, reason) in cases {
            let e = bad(from, to);
            assert_eq!(e.key, key, "{to}: {e}");
            assert!(e.reason.contains(reason) && e.reason.contains("(line "), "{to}: {e}");
        }
        // Namespaces as an inline array of inline tables.
        let inline = GOOD.split("[[subsystem.namespace]]").next().unwrap_or_default().to_string()
            + "namespace = [ { nsid = 1, backend = \"ram\", size_mib = true } ]\n";
        let e = Config::parse(&inline, "t.toml").unwrap_err();
        assert_eq!(e.key, "subsystem[0].namespace[0].size_mib", "{e}");
        // Text that is not TOML: the line alone.
        let e = Config::parse("this is not toml\n", "t.toml").unwrap_err();
        assert_eq!(e.key, "line 1", "{e}");
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        let n = &c.subsystems[0].namespaces[0];
        assert_eq!(n.ids("nqn.x"), n.ids("nqn.x"));
        assert_ne!(n.ids("nqn.x").nguid, n.ids("nqn.y").nguid);
        assert_eq!(derived_serial("nqn.x").len(), 20);
    }
}
