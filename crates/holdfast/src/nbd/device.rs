//! The Linux kernel's NBD client as the bridge's client: a `/dev/nbdN` device given one end of a socket
//! pair whose other end the bridge serves, as `qemu-nbd --connect` and `nbd-client` set a device up. The
//! kernel skips the handshake (user space tells it the size, block size and transmission flags by ioctl)
//! and speaks the transmission phase on the socket: the requests of the block layer, the simple replies of
//! [`super::server`].
//!
//! The ioctls are the ones `nbd-client` uses (Linux `include/uapi/linux/nbd.h`, `_IO(0xab, n)`), the one
//! that runs the device (`NBD_DO_IT`) in a process of its own ([`Device::start`]); the device's request
//! timeout is left at 0, which on Linux 5.10 and later means "never give up on the
//! server" (the kernel logs "Possible stuck request" every 30 s and waits): whether a request fails is the
//! host library's decision, under the connection policy the target advertises, not a second timer's.

use anyhow::{bail, Context as _};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The block major number of NBD devices (`include/uapi/linux/major.h`).
const NBD_MAJOR: u32 = 43;

/// Settings of the process that serves a device, made before any other thread starts (threads inherit
/// them): it is in the device's writeback path, so the memory it allocates while serving must not wait on
/// that writeback (`PR_SET_IO_FLUSHER`, Linux 5.6, what prctl(2) asks of such processes; needs
/// CAP_SYS_RESOURCE, else a warning), and the terminal's job-control stops (SIGTSTP, SIGTTIN, SIGTTOU) are
/// ignored, since a stopped bridge is a device whose I/O waits (a Ctrl-Z typed at the wrong terminal).
pub fn prepare_process() {
    // SAFETY: prctl with integer arguments only; PR_SET_IO_FLUSHER (57) sets flags of the calling task.
    let r = unsafe { libc::prctl(57, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r != 0 {
        tracing::warn!(
            "cannot mark the bridge as an I/O flusher (PR_SET_IO_FLUSHER: {}): under memory pressure it may wait \
             on the device it serves",
            std::io::Error::last_os_error()
        );
    }
    for sig in [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
        // SAFETY: SIG_IGN for a job-control signal; no handler code of ours runs.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

/// `_IO(0xab, n)` numbers of `include/uapi/linux/nbd.h`.
mod ioctl {
    pub const SET_SOCK: u64 = 0xab00;
    pub const SET_BLKSIZE: u64 = 0xab01;
    pub const DO_IT: u64 = 0xab03;
    pub const CLEAR_SOCK: u64 = 0xab04;
    pub const SET_SIZE_BLOCKS: u64 = 0xab07;
    pub const DISCONNECT: u64 = 0xab08;
    pub const SET_FLAGS: u64 = 0xab0a;
}

/// `ioctl(fd, req, arg)` with an integer argument (every NBD ioctl takes one or none).
fn nbd_ioctl(f: &File, req: u64, arg: u64, what: &str) -> std::io::Result<()> {
    // SAFETY: `f` is an open file for the call's whole length; the NBD ioctls used here take their argument
    // as an integer by value (a size, a flag word, a file descriptor) and never as a pointer, so the kernel
    // reads and writes no memory of ours.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as libc::Ioctl, arg as libc::c_ulong) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// An NBD device, opened, then configured, then started ([`Device::start`]).
pub struct Device {
    path: PathBuf,
    file: File,
    /// The kernel's end of the socket pair, kept open until the device stops (the kernel holds its own
    /// reference while it runs).
    sock: Option<OwnedFd>,
}

/// What [`Device::configure`] tells the kernel.
pub struct Geometry {
    pub block_size: u32,
    pub size: u64,
    /// NBD transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
}

impl Device {
    /// Open `path`: a Linux NBD device that no client runs. Fails with the reason if the device is missing
    /// (no `nbd` module), not a block device, or in use.
    pub fn open(path: &Path) -> anyhow::Result<Device> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| {
            let hint =
                if e.kind() == std::io::ErrorKind::NotFound { " (is the nbd module loaded? modprobe nbd)" } else { "" };
            anyhow::anyhow!("cannot open {}: {e}{hint}", path.display())
        })?;
        use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
        let meta = file.metadata()?;
        if !meta.file_type().is_block_device() {
            bail!("{} is not a block device", path.display());
        }
        // Only a whole NBD device: the ioctls on another driver's device mean something else, and on a
        // partition of one they would act on the whole device.
        if libc::major(meta.rdev()) != NBD_MAJOR {
            bail!("{} is not an NBD device (major {}, NBD's is {NBD_MAJOR})", path.display(), libc::major(meta.rdev()));
        }
        let name = sys_name(path).unwrap_or_default();
        if !Path::new("/sys/block").join(&name).exists() {
            bail!("{} is a partition, not a whole NBD device", path.display());
        }
        // A device another client runs has a pid in sysfs (nbd-client checks the same). Nothing is sent to
        // such a device: NBD_CLEAR_SOCK would shut its sockets down and NBD_SET_BLKSIZE resize it under its
        // user.
        if let Some(tid) = running_pid(path) {
            // sysfs gives the thread that runs NBD_DO_IT; the process is its thread group.
            let pid = std::fs::read_to_string(format!("/proc/{tid}/status"))
                .ok()
                .and_then(|st| st.lines().find_map(|l| l.strip_prefix("Tgid:").map(|v| v.trim().to_owned())))
                .unwrap_or_else(|| tid.to_string());
            bail!("{} is in use by another NBD client (process {pid})", path.display());
        }
        Ok(Device { path: path.to_owned(), file, sock: None })
    }

    /// Configure the device: its one connection, `sock` (the kernel's end; the bridge serves the other), block
    /// size, size and flags.
    pub fn configure(mut self, g: &Geometry, sock: OwnedFd) -> anyhow::Result<Device> {
        let (file, path) = (&self.file, &self.path);
        if !g.size.is_multiple_of(g.block_size as u64) {
            bail!("the namespace's size ({} bytes) is not a whole number of {}-byte blocks", g.size, g.block_size);
        }
        let dev = path.display();
        // The socket first: NBD_SET_SOCK makes this thread the device's set-up task, and another process's
        // then gets EBUSY. Once it is in, a failure undoes the set-up (NBD_CLEAR_SOCK), ours alone.
        if let Err(e) = nbd_ioctl(file, ioctl::SET_SOCK, sock.as_raw_fd() as u64, "NBD_SET_SOCK") {
            if e.raw_os_error() == Some(libc::EBUSY) {
                bail!("{dev} is in use by another NBD client ({e})");
            }
            bail!("{dev}: {e}");
        }
        let set = || -> anyhow::Result<()> {
            nbd_ioctl(file, ioctl::SET_BLKSIZE, g.block_size as u64, "NBD_SET_BLKSIZE")
                .with_context(|| format!("{dev}: block size {}", g.block_size))?;
            nbd_ioctl(file, ioctl::SET_SIZE_BLOCKS, g.size / g.block_size as u64, "NBD_SET_SIZE_BLOCKS")
                .with_context(|| format!("{dev}: size {} bytes", g.size))?;
            nbd_ioctl(file, ioctl::SET_FLAGS, g.flags as u64, "NBD_SET_FLAGS").with_context(|| dev.to_string())?;
            Ok(())
        };
        if let Err(e) = set() {
            let _ = nbd_ioctl(file, ioctl::CLEAR_SOCK, 0, "NBD_CLEAR_SOCK");
            return Err(e);
        }
        self.sock = Some(sock);
        Ok(self)
    }

    /// The device's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle that can ask the running device to disconnect ([`Disconnect::request`]).
    pub fn disconnect_handle(&self) -> anyhow::Result<Disconnect> {
        Ok(Disconnect { file: self.file.try_clone()?, path: self.path.clone() })
    }

    /// Start the device: `NBD_DO_IT`, which blocks until the device stops, in a process of its own (this
    /// program, [`run_device_process`]), given the device's file and nothing else. Anything that interrupts
    /// the task waiting in `NBD_DO_IT` (a signal, even a blocked one when it stops the process: SIGSTOP; a
    /// tracer attaching, strace or gdb; the freezer) makes the kernel shut the device down at once, failing
    /// its outstanding I/O. In the bridge's own process that task would be exposed to everything aimed at
    /// the bridge; in its own, only to what is aimed at it (it blocks every signal it can), and to the
    /// freezer (a frozen cgroup, a suspend), which nothing keeps out.
    pub fn start(self) -> anyhow::Result<Running> {
        // A descriptor without close-on-exec, so that the child inherits it (std's own descriptors, and
        // tokio's, all have close-on-exec: the child gets this one and stdio only).
        // SAFETY: dup of a descriptor `self.file` keeps open; the result is checked and owned below.
        let fd = unsafe { libc::dup(self.file.as_raw_fd()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("dup");
        }
        // SAFETY: `fd` was just returned by dup and nothing else owns it.
        let inherited = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // This very program: /proc/self/exe runs the image this process runs even if the file was replaced
        // or removed since (an upgrade under a running bridge), where its path would not.
        let child = std::process::Command::new("/proc/self/exe")
            .args([DEVICE_PROCESS_ARG, &fd.to_string()])
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("starting the device's process")?;
        drop(inherited);
        Ok(Running { child, _device: self })
    }
}

/// The hidden first argument that makes this program the device's process ([`run_device_process`]).
pub const DEVICE_PROCESS_ARG: &str = "__nbd-device-process";

/// The device's process: `NBD_DO_IT` on the inherited descriptor `fd` until the device stops, then
/// `NBD_CLEAR_SOCK`; exit 0, or 1 with the reason. Every signal it can block is blocked: a SIGTERM or
/// SIGINT meant for the bridge (a terminal's Ctrl-C reaches the whole process group) must not interrupt
/// it. When the bridge goes, so does the device: the kernel sees its connection close, `NBD_DO_IT` returns.
pub fn run_device_process(fd: &str) -> std::process::ExitCode {
    // SAFETY: a local sigset_t filled by sigfillset before sigprocmask reads it; the old-set pointer may be
    // null. The process is single-threaded here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let Ok(fd) = fd.parse::<i32>() else {
        eprintln!("holdfast: {DEVICE_PROCESS_ARG}: not a descriptor: {fd}");
        return std::process::ExitCode::from(2);
    };
    // SAFETY: the bridge passed this descriptor, open and without close-on-exec, for this process to own.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let r = nbd_ioctl(&file, ioctl::DO_IT, 0, "NBD_DO_IT");
    let _ = nbd_ioctl(&file, ioctl::CLEAR_SOCK, 0, "NBD_CLEAR_SOCK");
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Best effort: the terminal may have hung up long ago (the bridge outlives a SIGHUP).
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "holdfast: the NBD device stopped: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// A device whose process runs `NBD_DO_IT`.
pub struct Running {
    child: std::process::Child,
    /// Its file and the kernel's end of the socket, kept open until it stops.
    _device: Device,
}

impl Running {
    /// Wait (blocking) until the device stopped: Ok if `NBD_DO_IT` returned without error.
    pub fn wait(mut self) -> anyhow::Result<()> {
        let st = self.child.wait().context("waiting for the device's process")?;
        anyhow::ensure!(st.success(), "the device's process ended with {st} (its reason is in the log above)");
        Ok(())
    }
}

/// Asks a running device to disconnect.
pub struct Disconnect {
    file: File,
    path: PathBuf,
}

impl Disconnect {
    /// [`Disconnect::request`] on a thread of its own: the ioctl waits for each connection's send lock,
    /// which the kernel holds while a write's payload waits for room in the socket, that is for as long as
    /// the bridge does not read (its request budget full while the target is away).
    pub async fn request_off_thread(self: std::sync::Arc<Self>) -> anyhow::Result<()> {
        tokio::task::spawn_blocking(move || self.request()).await?
    }

    /// `NBD_DISCONNECT`: the kernel sends `NBD_CMD_DISC` on every connection; the bridge answers what it
    /// received before it, then closes, and `NBD_DO_IT` returns. Requests the block layer submits after it
    /// fail.
    pub fn request(&self) -> anyhow::Result<()> {
        nbd_ioctl(&self.file, ioctl::DISCONNECT, 0, "NBD_DISCONNECT")
            .with_context(|| self.path.display().to_string())?;
        Ok(())
    }
}

/// The process running the device (`/sys/block/NAME/pid`, present while `NBD_DO_IT` runs).
pub fn running_pid(path: &Path) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/sys/block/{}/pid", sys_name(path)?)).ok()?;
    s.trim().parse().ok()
}

fn sys_name(path: &Path) -> Option<String> {
    Some(std::fs::canonicalize(path).ok()?.file_name()?.to_str()?.to_owned())
}

/// The device's size in bytes as the block layer sees it (`/sys/block/NAME/size`, in 512-byte sectors):
/// non-zero once `NBD_DO_IT` has started it.
pub fn block_layer_size(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/sys/block/{}/size", sys_name(path)?)).ok()?;
    s.trim().parse::<u64>().ok().map(|n| n * 512)
}
