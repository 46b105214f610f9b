//! holdfast's host against holdfast's target, both in this process: what the two must agree on beyond the
//! I/O path (the Linux peers are the judges of each side's protocol; tests/interop).

use holdfast_host::controller::Event;
use holdfast_host::{ConnectOptions, Controller};
use holdfast_target::config::Config;
use holdfast_target::{Server, Target, TargetSettings};
use std::time::Duration;

const NQN: &str = "nqn.2026-01.io.holdfast:host-and-target";

/// One port and subsystem `NQN` (any host), `tables` (TOML: its policy, its namespaces) after it.
fn config_with(tables: &str) -> Config {
    let s = format!(
        "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n{tables}"
    );
    Config::parse(&s, "test").unwrap()
}

/// A 1 MiB RAM namespace `nsid`, with `keys` (TOML lines) added.
fn ram_ns(nsid: u32, keys: &str) -> String {
    format!("[[subsystem.namespace]]\nnsid = {nsid}\nbackend = \"ram\"\nsize_mib = 1\n{keys}")
}

fn config(namespaces: &[u32]) -> Config {
    config_with(&namespaces.iter().map(|&n| ram_ns(n, "")).collect::<String>())
}

/// The host enables the namespace notices the controller offers (Set Features Asynchronous Event
/// Configuration; a target reports none before), and tells the application which namespaces changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_added_on_the_target_reaches_the_host_as_an_event() {
    let server = Server::start(Target::new(&config(&[1]), TargetSettings::default()).unwrap()).await.unwrap();
    let ctrl = connect(&server).await;
    let mut events = ctrl.events();
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1]);
    // The host's event task has its Asynchronous Event Request outstanding once the target holds it; a
    // notice raised before would be held by the target until then, so no wait is needed for correctness.
    server.target.reload(&config(&[1, 2])).unwrap();
    assert_eq!(changed_event(&mut events).await, Some(vec![2]));
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1, 2]);
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// A KATO changed in the target's configuration (reload: a policy-changed event) is the KATO the host's
/// association runs with on the target (Get Features Keep Alive Timer), not only the one the host reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kato_changed_by_a_reload_is_set_on_the_hosts_association() {
    let with_kato = |ms: u32| config_with(&format!("[subsystem.policy]\nkato_ms = {ms}\n{}", ram_ns(1, "")));
    let server = Server::start(Target::new(&with_kato(6000), TargetSettings::default()).unwrap()).await.unwrap();
    let ctrl = connect(&server).await;
    let kato_on_target = || async {
        let mut s = holdfast_proto::SubmissionEntry::new(holdfast_proto::opcode::admin::GET_FEATURES, 0);
        s.cdw10.set(holdfast_proto::features::KEEP_ALIVE_TIMER as u32);
        ctrl.admin(s, bytes::Bytes::new(), 0).await.unwrap().cqe.dw0.get()
    };
    assert_eq!(kato_on_target().await, 6000);
    server.target.reload(&with_kato(1000)).unwrap();
    let t0 = std::time::Instant::now();
    while ctrl.effective_policy().kato.0 != Duration::from_secs(1) {
        assert!(t0.elapsed() < Duration::from_secs(5), "the changed policy never reached the host");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = std::time::Instant::now();
    while kato_on_target().await != 1000 {
        assert!(t0.elapsed() < Duration::from_secs(2), "the association kept KATO {} ms", kato_on_target().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// A namespace the target exports write protected (`read_only = true`): the host says so
/// (`Namespace::write_protected`), reads it, and a write fails with Namespace is Write Protected, at once
/// (DNR: not retried) and without a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_protected_namespace_reads_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("golden.img");
    std::fs::write(&img, vec![0x5A; 1 << 20]).unwrap();
    let ns = format!(
        "[[subsystem.namespace]]\nnsid = 1\nbackend = \"file\"\npath = \"{}\"\nread_only = true\n",
        img.display()
    );
    let server = Server::start(Target::new(&config_with(&ns), TargetSettings::default()).unwrap()).await.unwrap();
    let ctrl = connect(&server).await;
    let ns = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    assert!(ns.write_protected());
    assert_eq!(&ns.read(3, 1).await.unwrap()[..], &[0x5A; 512][..]);
    match ns.write(3, bytes::Bytes::from(vec![0u8; 512]), false).await {
        Err(holdfast_host::Error::Nvme { status, .. }) => {
            assert_eq!(status.code(), holdfast_proto::Status::NS_WRITE_PROTECTED, "{status}");
            assert!(status.dnr(), "{status}")
        }
        other => panic!("a write to a write-protected namespace: {other:?}"),
    }
    assert_eq!(ctrl.state(), holdfast_host::controller::State::Live);
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// Asymmetric Namespace Access: a command refused with Asymmetric Access Transition (its namespace's group is
/// changing state through this port) waits for the change to end, within twice ANATT, instead of failing after
/// five immediate retries; one refused with Asymmetric Access Inaccessible fails with that status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ana_transition_is_ridden_out_and_an_inaccessible_namespace_fails_with_its_status() {
    let with_state = |state: &str| {
        let s = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\nana_state = \"{state}\"\n[[subsystem]]\nnqn = \"{NQN}\"\n\
             allow_any_host = true\n{}",
            ram_ns(1, "")
        );
        Config::parse(&s, "test").unwrap()
    };
    let server = Server::start(Target::new(&with_state("change"), TargetSettings::default()).unwrap()).await.unwrap();
    let ctrl = connect(&server).await;
    let ns = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    let write = tokio::spawn({
        let ns = ns.clone();
        async move { ns.write(5, bytes::Bytes::from(vec![0xA5; 512]), false).await }
    });
    // Well past five immediate retries; the write is still waiting for the transition to end.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!write.is_finished(), "the write ended during the transition: {:?}", write.await);
    server.target.reload(&with_state("optimized")).unwrap();
    write.await.unwrap().expect("the write rides out the ANA transition");
    assert_eq!(&ns.read(5, 1).await.unwrap()[..], &[0xA5; 512][..]);

    server.target.reload(&with_state("inaccessible")).unwrap();
    match ns.read(5, 1).await {
        Err(holdfast_host::Error::Nvme { status, .. }) => {
            assert_eq!(status.code(), holdfast_proto::Status::ANA_INACCESSIBLE, "{status}")
        }
        other => panic!("a read through an inaccessible path: {other:?}"),
    }
    assert_eq!(ctrl.state(), holdfast_host::controller::State::Live);
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// A configuration with namespaces `(nsid, uuid)`: a namespace whose UUID is given has it (and an NGUID and
/// EUI-64 derived from the same byte), else all three derived from the NQN and NSID.
fn config_ids(namespaces: &[(u32, Option<u8>)]) -> Config {
    let ns = |&(n, id): &(u32, Option<u8>)| {
        let ids = id.map(|b| {
            let hex = |len: usize| format!("{b:02x}").repeat(len);
            format!("uuid = \"{}\"\nnguid = \"{}\"\neui64 = \"{}\"\n", hex(16), hex(16), hex(8))
        });
        ram_ns(n, &ids.unwrap_or_default())
    };
    config_with(&namespaces.iter().map(ns).collect::<String>())
}

/// The host connected to `server`'s subsystem `NQN`, with one I/O queue.
async fn connect(server: &Server) -> Controller {
    let mut o = ConnectOptions::new(server.bound[0].1.to_string(), NQN);
    o.nr_io_queues = 1;
    Controller::connect(o).await.unwrap()
}

async fn changed_event(events: &mut tokio::sync::broadcast::Receiver<Event>) -> Option<Vec<u32>> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(Event::NamespacesChanged { nsids }) => return nsids,
                Ok(_) => continue,
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("no namespace change event within 5 s")
}

/// End the host's association from the target side and wait until the host has a new one.
async fn reconnect(server: &Server, ctrl: &Controller) {
    let mut events = ctrl.events();
    for c in server.target.subsystem(NQN).unwrap().controllers() {
        c.teardown("test");
    }
    restored(&mut events).await;
}

/// Wait (up to 10 s) for the host's next association: `Restored`, not `Failed`.
async fn restored(events: &mut tokio::sync::broadcast::Receiver<Event>) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(Event::Restored { .. }) => return,
                Ok(Event::Failed { reason }) => panic!("the controller was lost: {reason}"),
                Ok(_) => continue,
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("not reconnected within 10 s");
}

/// Namespace 1 replaced on the live target by another namespace under the same NSID (new identifiers): once
/// the host has the Namespace Attribute Changed notice for it, a handle opened on the old one does not write
/// into the new one; it fails saying why. A handle opened again gets the new namespace, and a later reconnect
/// takes it for the namespace it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_replaced_on_the_target_is_not_written_through_an_old_handle() {
    let server =
        Server::start(Target::new(&config_ids(&[(1, Some(0x11))]), TargetSettings::default()).unwrap()).await.unwrap();
    let ctrl = connect(&server).await;
    let mut events = ctrl.events();
    let old = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    old.write(0, bytes::Bytes::from(vec![0xAA; 512]), false).await.unwrap();
    server.target.reload(&config_ids(&[(1, Some(0x22))])).unwrap();
    assert_eq!(changed_event(&mut events).await, Some(vec![1]));
    let new = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    assert_ne!(new.descriptors(), old.descriptors());
    let r = old.write(0, bytes::Bytes::from(vec![0xBB; 512]), false).await;
    let e = r.expect_err("a write through the old handle went into the namespace that replaced it");
    assert!(e.to_string().contains("namespace 1"), "{e}");
    assert_eq!(new.read(0, 1).await.unwrap(), vec![0u8; 512], "the new namespace was written through the old handle");
    // The handle opened again is the namespace now under NSID 1: a reconnect keeps it.
    reconnect(&server, &ctrl).await;
    new.write(0, bytes::Bytes::from(vec![0xCC; 512]), false).await.unwrap();
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// Two namespaces; the target's configuration drops namespace 2 (the host is told). A later reconnect does not
/// take the controller down for it: namespace 1 goes on, and namespace 2's handle fails saying it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_removed_on_the_target_does_not_take_the_others_down_at_a_reconnect() {
    let server = Server::start(Target::new(&config(&[1, 2]), TargetSettings::default()).unwrap()).await.unwrap();
    let ctrl = connect(&server).await;
    let mut events = ctrl.events();
    let ns1 = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    let ns2 = holdfast_host::Namespace::open(&ctrl, 2).await.unwrap();
    ns2.write(0, bytes::Bytes::from(vec![0xAA; 4096]), false).await.unwrap();
    server.target.reload(&config(&[1])).unwrap();
    assert_eq!(changed_event(&mut events).await, Some(vec![2]));
    let e = ns2.read(0, 1).await.expect_err("read of a removed namespace");
    assert!(e.to_string().contains("namespace 2") || e.to_string().contains("Invalid Namespace"), "{e}");
    reconnect(&server, &ctrl).await;
    ns1.write(0, bytes::Bytes::from(vec![0xBB; 4096]), false).await.unwrap();
    assert_eq!(ns1.read(0, 8).await.unwrap(), vec![0xBB; 4096]);
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// Two namespaces; the host's association is torn down on the target, and the target's configuration replaces
/// namespace 2 (new identifiers) before the host is back: the reconnect finds namespace 2 another namespace and
/// fails it alone, as the Linux host does, rather than the whole controller. Namespace 1's write queued during
/// the outage completes and its I/O goes on; namespace 2's fails saying why and is never written to the namespace
/// now under NSID 2 (read back through a handle opened again); the controller stays live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_replaced_while_the_host_is_away_fails_alone_at_the_reconnect() {
    let server = Server::start(
        Target::new(&config_ids(&[(1, Some(0x11)), (2, Some(0x22))]), TargetSettings::default()).unwrap(),
    )
    .await
    .unwrap();
    let ctrl = connect(&server).await;
    let mut events = ctrl.events();
    let ns1 = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    let ns2 = holdfast_host::Namespace::open(&ctrl, 2).await.unwrap();
    ns2.write(0, bytes::Bytes::from(vec![0xAA; 4096]), false).await.unwrap();
    // No await in between: the host's first attempt after an association this young waits 100 ms (the flap delay).
    for c in server.target.subsystem(NQN).unwrap().controllers() {
        c.teardown("test");
    }
    server.target.reload(&config_ids(&[(1, Some(0x11)), (2, Some(0x33))])).unwrap();
    let w1 = tokio::spawn({
        let ns1 = ns1.clone();
        async move { ns1.write(0, bytes::Bytes::from(vec![0xB1; 4096]), false).await }
    });
    let w2 = tokio::spawn({
        let ns2 = ns2.clone();
        async move { ns2.write(0, bytes::Bytes::from(vec![0xB2; 4096]), false).await }
    });
    restored(&mut events).await;
    let done = |h: tokio::task::JoinHandle<holdfast_host::Result<()>>| async move {
        tokio::time::timeout(Duration::from_secs(5), h).await.expect("a write never finished").unwrap()
    };
    done(w1).await.expect("namespace 1's write queued during the outage");
    let e = done(w2).await.expect_err("namespace 2's write went to the namespace that replaced it");
    assert!(
        e.to_string().contains("namespace 2")
            && e.to_string().contains("replaced by another namespace across a reconnect"),
        "{e}"
    );
    assert_eq!(ctrl.state(), holdfast_host::controller::State::Live);
    assert_eq!(ns1.read(0, 8).await.unwrap(), vec![0xB1; 4096]);
    ns1.write(8, bytes::Bytes::from(vec![0xC1; 4096]), false).await.unwrap();
    let e = ns2.read(0, 1).await.expect_err("a read through the handle of the namespace replaced");
    assert!(e.to_string().contains("namespace 2"), "{e}");
    let new = holdfast_host::Namespace::open(&ctrl, 2).await.unwrap();
    assert_ne!(new.descriptors(), ns2.descriptors());
    assert_eq!(new.read(0, 8).await.unwrap(), vec![0u8; 4096], "namespace 2's pending write landed in the new one");
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// Namespace 1's block size changed by a reload (512 to 4096 bytes; the same identifiers): a handle opened with
/// 512-byte blocks counts blocks the namespace no longer has. Once the host has the notice, a Write Zeroes
/// through it (no data whose length would betray the mismatch) fails saying why instead of zeroing eight times
/// the blocks asked for, at eight times the offset, in the namespace as it is now. Opened again, it has the new
/// blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_whose_block_size_changed_is_not_zeroed_through_an_old_handle() {
    let with_bs = |bs: u32| config_with(&ram_ns(1, &format!("block_size = {bs}\n")));
    let server = Server::start(Target::new(&with_bs(512), TargetSettings::default()).unwrap()).await.unwrap();
    let ctrl = connect(&server).await;
    let mut events = ctrl.events();
    let old = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    assert_eq!(old.block_size(), 512);
    server.target.reload(&with_bs(4096)).unwrap();
    assert_eq!(changed_event(&mut events).await, Some(vec![1]));
    // Bytes 4096..8192 of the namespace, as the old handle counts them: 32768..65536 now.
    let r = old.write_zeroes(8, 8).await;
    let e = r.expect_err("a Write Zeroes in 512-byte blocks went to a namespace of 4096-byte blocks");
    assert!(e.to_string().contains("namespace 1") && e.to_string().contains("4096"), "{e}");
    let new = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    assert_eq!(new.block_size(), 4096);
    new.write_zeroes(8, 8).await.unwrap();
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

const AUTH_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000aa";

/// A DH-HMAC-CHAP secret of 32 bytes `b`, transformed with `t` (None: used as it is).
fn secret(b: u8, t: Option<holdfast_proto::auth::HashId>) -> String {
    holdfast_proto::auth::DhchapSecret::new(&[b; 32], t).encode()
}

/// Subsystem `NQN` open to `AUTH_HOST` alone, which must authenticate with `key` (and `ctrl_key`, for
/// bidirectional authentication), HMAC `hash`.
fn auth_config(key: &str, ctrl_key: Option<&str>, hash: &str) -> Config {
    let ctrl = ctrl_key.map(|k| format!("dhchap_ctrl_key = \"{k}\"\n")).unwrap_or_default();
    let text = format!(
        "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallowed_hosts = [\"{AUTH_HOST}\"]\n{}\
         [[host]]\nnqn = \"{AUTH_HOST}\"\ndhchap_key = \"{key}\"\n{ctrl}dhchap_hash = \"{hash}\"\n",
        ram_ns(1, "")
    );
    Config::parse(&text, "test").unwrap()
}

/// `AUTH_HOST`'s options for `server`, two I/O queues, with these secrets.
fn auth_options(server: &Server, key: Option<&str>, ctrl_key: Option<&str>) -> ConnectOptions {
    let mut o = ConnectOptions::new(server.bound[0].1.to_string(), NQN);
    o.hostnqn = AUTH_HOST.into();
    o.nr_io_queues = 2;
    o.dhchap_secret = key.map(str::to_string);
    o.dhchap_ctrl_secret = ctrl_key.map(str::to_string);
    o
}

/// Writes and reads back (the commands go round the I/O queues).
async fn io_works(ctrl: &Controller, seed: u8) {
    let ns = holdfast_host::Namespace::open(ctrl, 1).await.unwrap();
    for i in 0..8u64 {
        ns.write(i, bytes::Bytes::from(vec![seed.wrapping_add(i as u8); 512]), false).await.unwrap();
    }
    for i in 0..8u64 {
        assert_eq!(&ns.read(i, 1).await.unwrap()[..], &[seed.wrapping_add(i as u8); 512][..]);
    }
}

async fn auth_server(cfg: &Config) -> Server {
    Server::start(Target::new(cfg, TargetSettings::default()).unwrap()).await.unwrap()
}

/// A subsystem that makes this host authenticate, and the host given its secret: every queue (admin and
/// both I/O queues) authenticates (the target refuses any other command before), and I/O flows. Keys used as
/// they are and transformed, every hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_authenticates_with_its_dhchap_secret() {
    use holdfast_proto::auth::HashId;
    for (t, hash) in [(None, "sha256"), (Some(HashId::Sha256), "sha384"), (Some(HashId::Sha512), "sha512")] {
        let key = secret(7, t);
        let server = auth_server(&auth_config(&key, None, hash)).await;
        let ctrl = Controller::connect(auth_options(&server, Some(&key), None)).await.unwrap();
        io_works(&ctrl, 1).await;
        ctrl.shutdown().await.unwrap();
        server.stop().await;
    }
}

/// An FFDHE group configured for the host (`dhchap_dhgroup`): every queue's exchange carries both DH values and
/// both responses are over the augmented challenges, one way and both ways, every group; a controller secret
/// that is not the controller's is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_authenticates_with_an_ffdhe_group() {
    let (key, ckey) = (secret(7, Some(holdfast_proto::auth::HashId::Sha256)), secret(9, None));
    for (i, g) in holdfast_proto::auth::ffdhe::GROUPS.iter().enumerate() {
        let bidirectional = i % 2 == 1;
        let cfg = auth_config(&key, bidirectional.then_some(ckey.as_str()), "sha384");
        let mut cfg = cfg;
        cfg.hosts[0].dhchap_dhgroup = Some(g.name.to_string());
        let server = auth_server(&cfg).await;
        let ctrl = Controller::connect(auth_options(&server, Some(&key), bidirectional.then_some(ckey.as_str())))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", g.name));
        io_works(&ctrl, 10 + i as u8).await;
        ctrl.shutdown().await.unwrap();
        if bidirectional {
            let e = Controller::connect(auth_options(&server, Some(&key), Some(&secret(8, None))))
                .await
                .err()
                .expect("a controller with another key must be refused")
                .to_string();
            assert!(e.contains("does not match --dhchap-ctrl-secret"), "{}: {e}", g.name);
        }
        server.stop().await;
    }
}

/// Bidirectional: the host challenges the controller too and checks its answer against the controller secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_authenticates_the_controller_with_its_ctrl_secret() {
    let (key, ckey) = (secret(7, Some(holdfast_proto::auth::HashId::Sha256)), secret(9, None));
    let server = auth_server(&auth_config(&key, Some(&ckey), "sha384")).await;
    let ctrl = Controller::connect(auth_options(&server, Some(&key), Some(&ckey))).await.unwrap();
    io_works(&ctrl, 2).await;
    ctrl.shutdown().await.unwrap();
    // A controller secret that is not the controller's: the host refuses the controller (and tells it, with
    // AUTH_Failure2).
    let e = Controller::connect(auth_options(&server, Some(&key), Some(&secret(8, None))))
        .await
        .err()
        .expect("a controller with another key must be refused")
        .to_string();
    assert!(e.contains("authentication failed: the controller's response does not match --dhchap-ctrl-secret"), "{e}");
    assert!(!e.contains("DHHC"), "{e}");
    server.stop().await;
}

/// A wrong secret: the controller refuses the host's response (AUTH_Failure1), and the connect fails saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_dhchap_secret_fails_the_connect_with_the_reason() {
    let server = auth_server(&auth_config(&secret(7, None), None, "sha256")).await;
    let e = Controller::connect(auth_options(&server, Some(&secret(6, None)), None))
        .await
        .err()
        .expect("a wrong secret must be refused");
    assert!(matches!(e, holdfast_host::Error::Authentication(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("authentication failed: the controller refused the host's response (wrong secret?)"), "{e}");
    // A secret that is not one says why, never what it was.
    let bad = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaS:";
    let e = Controller::connect(auth_options(&server, Some(bad), None)).await.err().expect("a bad secret").to_string();
    assert!(e.contains("--dhchap-secret: the key's CRC-32 does not match") && !e.contains("AAEC"), "{e}");
    server.stop().await;
}

/// A subsystem that makes this host authenticate, and no secret: the Connect is refused with words that say
/// what to give, not with the next command's Authentication Required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subsystem_requiring_dhchap_is_refused_with_the_reason() {
    let server = auth_server(&auth_config(&secret(7, None), None, "sha256")).await;
    let e = Controller::connect(auth_options(&server, None, None)).await.err().expect("the Connect must be refused");
    assert_eq!(e.status().map(|s| s.code()), Some(holdfast_proto::Status::AUTHENTICATION_REQUIRED), "{e}");
    let e = e.to_string();
    assert!(
        e.contains(&format!("requires DH-HMAC-CHAP authentication of host {AUTH_HOST}: give --dhchap-secret")),
        "{e}"
    );
    server.stop().await;
}

/// A secret given for a subsystem that does not ask for authentication: connected as usual (as Linux). With a
/// controller secret too, refused: the controller cannot be authenticated in an exchange it does not start, and
/// an impersonated target (or an AUTHREQ cleared on the way) was used unauthenticated (found by a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dhchap_secret_is_not_used_where_the_controller_does_not_ask() {
    let server = Server::start(Target::new(&config(&[1]), TargetSettings::default()).unwrap()).await.unwrap();
    let ctrl = Controller::connect(auth_options(&server, Some(&secret(7, None)), None)).await.unwrap();
    io_works(&ctrl, 3).await;
    ctrl.shutdown().await.unwrap();
    match Controller::connect(auth_options(&server, Some(&secret(7, None)), Some(&secret(9, None)))).await {
        Err(e) => assert!(e.to_string().contains("could not be authenticated with --dhchap-ctrl-secret"), "{e}"),
        Ok(_) => panic!("a controller that did not ask for authentication taken as authenticated"),
    }
    server.stop().await;
}

/// Ride-through: every association the host reconnects authenticates every queue again, with the same
/// secrets. One whose authentication fails (the target's key changed meanwhile) is a failed attempt, retried
/// like a refused Connect: once the key is back, the host reconnects, and I/O queued meanwhile completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_host_rides_through_and_authenticates_again() {
    let (key, ckey) = (secret(7, None), secret(9, Some(holdfast_proto::auth::HashId::Sha512)));
    let good = auth_config(&key, Some(&ckey), "sha256");
    let server = auth_server(&good).await;
    let mut o = auth_options(&server, Some(&key), Some(&ckey));
    o.reconnect_delay = Some(Duration::from_millis(100));
    o.ctrl_loss_tmo = Some(Duration::from_secs(30));
    let ctrl = Controller::connect(o).await.unwrap();
    io_works(&ctrl, 4).await;
    reconnect(&server, &ctrl).await;
    io_works(&ctrl, 5).await;

    // The target now wants another key: the reconnect attempts fail authentication, and go on.
    let mut events = ctrl.events();
    server.target.reload(&auth_config(&secret(1, None), Some(&ckey), "sha256")).unwrap();
    for c in server.target.subsystem(NQN).unwrap().controllers() {
        c.teardown("test");
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(Event::Reconnecting { attempt, cause, .. })
                    if attempt > 0 && cause.contains("authentication failed") =>
                {
                    assert!(cause.contains("the controller refused the host's response"), "{cause}");
                    return;
                }
                Ok(Event::Failed { reason }) => panic!("the controller was lost: {reason}"),
                Ok(_) => continue,
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("no failed authentication at a reconnect within 10 s");
    assert!(matches!(ctrl.state(), holdfast_host::controller::State::Reconnecting { .. }), "{:?}", ctrl.state());
    // A command queued while the host cannot authenticate completes once it can again.
    let write = {
        let ctrl = ctrl.clone();
        tokio::spawn(async move {
            let mut s = holdfast_proto::SubmissionEntry::new(holdfast_proto::opcode::admin::GET_FEATURES, 0);
            s.cdw10.set(holdfast_proto::features::KEEP_ALIVE_TIMER as u32);
            ctrl.admin(s, bytes::Bytes::new(), 0).await
        })
    };
    server.target.reload(&good).unwrap();
    restored(&mut events).await;
    write.await.unwrap().unwrap();
    io_works(&ctrl, 6).await;
    assert_eq!(ctrl.state(), holdfast_host::controller::State::Live);
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// The host connected to `server`'s subsystem as host number `n` (its own host NQN and Host Identifier).
async fn connect_as_host(server: &Server, n: u8) -> Controller {
    let mut o = ConnectOptions::new(server.bound[0].1.to_string(), NQN);
    o.nr_io_queues = 1;
    o.hostnqn = format!("nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000{n:02x}");
    o.hostid = [n; 16];
    Controller::connect(o).await.unwrap()
}

/// Compare and Compare and Write (a fused operation) through the host library: equal and differing data,
/// the checks made before anything is sent, and the atomicity that makes compare and write a lock: four
/// tasks on two hosts add one to a counter in one block 150 times each, by read, then compare and write of
/// the value read plus one (again when the block changed meanwhile), and no increment is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_write_lets_hosts_share_a_counter_without_losing_an_increment() {
    use bytes::Bytes;
    let server = Server::start(Target::new(&config(&[1]), TargetSettings::default()).unwrap()).await.unwrap();
    let hosts = [connect_as_host(&server, 1).await, connect_as_host(&server, 2).await];
    let ns = holdfast_host::Namespace::open(&hosts[0], 1).await.unwrap();
    let block = |v: u64| {
        let mut b = vec![0u8; 512];
        b[..8].copy_from_slice(&v.to_le_bytes());
        Bytes::from(b)
    };
    assert!(ns.compare(0, block(0)).await.unwrap(), "a never-written block compares equal to zeroes");
    assert!(!ns.compare(0, block(1)).await.unwrap());
    assert!(!ns.compare_and_write(0, block(5), block(6), false).await.unwrap(), "a miscompare");
    assert_eq!(ns.read(0, 1).await.unwrap(), block(0), "a miscompare writes nothing");
    let too_long = Bytes::from(vec![0u8; 65 * 4096]);
    assert!(matches!(
        ns.compare_and_write(0, too_long.clone(), too_long, false).await,
        Err(holdfast_host::Error::Invalid(_))
    ));
    assert!(matches!(
        ns.compare_and_write(0, block(0), Bytes::from(vec![0u8; 1024]), false).await,
        Err(holdfast_host::Error::Invalid(_))
    ));

    const EACH: u64 = 150;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let ns = holdfast_host::Namespace::open(&hosts[t % 2], 1).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < EACH {
                let cur = ns.read(0, 1).await.unwrap();
                let v = u64::from_le_bytes(cur[..8].try_into().unwrap());
                if ns.compare_and_write(0, cur, block(v + 1), false).await.unwrap() {
                    done += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ns.read(0, 1).await.unwrap(), block(4 * EACH), "increments lost");
    // The Write refused (another host's Write Exclusive reservation; the Compare, a read, may run): the
    // caller gets the Write's status, not the Compare's Failed Fused Command.
    use holdfast_proto::reservation as r;
    let other = holdfast_host::Namespace::open(&hosts[1], 1).await.unwrap();
    other.reservation_register(r::RREGA_REGISTER, 0, 0xB1, false).await.unwrap();
    other.reservation_acquire(r::RACQA_ACQUIRE, r::ReservationType::WriteExclusive, 0xB1, 0).await.unwrap();
    match ns.compare_and_write(0, block(4 * EACH), block(0), false).await {
        Err(holdfast_host::Error::Nvme { status, .. }) => {
            assert_eq!(status.code(), holdfast_proto::Status::RESERVATION_CONFLICT, "{status}")
        }
        other => panic!("a compare and write whose Write the reservation refuses: {other:?}"),
    }
    for h in hosts {
        h.shutdown().await.unwrap();
    }
    server.stop().await;
}

/// A Compare and Write outstanding when the connection drops is not issued again on the next association
/// (README, Ride-through: had it written, a second try would find the new data and answer that the blocks differ): it fails
/// with a retryable path error, and it did not write (the target drops what the dead association had not yet
/// taken to the media, README, No stale writes); the host rides through, and the next one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_and_write_cut_off_by_a_lost_connection_fails_with_a_path_error_and_is_not_replayed() {
    use bytes::Bytes;
    let settings = TargetSettings { test_delay_writes: Some(Duration::from_millis(800)), ..TargetSettings::default() };
    let server = Server::start(Target::new(&config(&[1]), settings).unwrap()).await.unwrap();
    let ctrl = connect(&server).await;
    let ns = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    let (zeroes, ones) = (Bytes::from(vec![0u8; 512]), Bytes::from(vec![1u8; 512]));
    let pending = {
        let ns = ns.clone();
        let (zeroes, ones) = (zeroes.clone(), ones.clone());
        tokio::spawn(async move { ns.compare_and_write(0, zeroes, ones, false).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // on the target, waiting before the media
    reconnect(&server, &ctrl).await;
    match pending.await.unwrap() {
        Err(e) if e.is_path_error() => {}
        other => panic!("a compare and write in flight at the loss: {other:?}"),
    }
    assert_eq!(ns.read(0, 1).await.unwrap(), zeroes, "the cut-off compare and write wrote");
    assert!(ns.compare_and_write(0, zeroes, ones.clone(), false).await.unwrap(), "the next one runs");
    assert_eq!(ns.read(0, 1).await.unwrap(), ones);
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// A Compare and a Reservation Report outstanding when the connection drops only read: they are issued again on
/// the next association and answer for the blocks and the reservation as they then are, as a read would, instead
/// of failing with a path error (README, Ride-through). Both are held in a blackholed proxy, so they were sent and
/// never answered, then the connection is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_and_a_reservation_report_cut_off_by_a_lost_connection_are_replayed() {
    use bytes::Bytes;
    use holdfast_proto::reservation as r;
    let server = Server::start(Target::new(&config(&[1]), TargetSettings::default()).unwrap()).await.unwrap();
    let proxy = holdfast_testkit::proxy::Proxy::start("127.0.0.1:0".parse().unwrap(), server.bound[0].1).await.unwrap();
    let mut o = ConnectOptions::new(proxy.local_addr().to_string(), NQN);
    o.nr_io_queues = 1;
    let ctrl = Controller::connect(o).await.unwrap();
    let ns = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    let ones = Bytes::from(vec![1u8; 512]);
    ns.write(0, ones.clone(), false).await.unwrap();
    ns.reservation_register(r::RREGA_REGISTER, 0, 0xA1, false).await.unwrap();
    let mut events = ctrl.events();
    proxy.blackhole();
    let compare = {
        let ns = ns.clone();
        tokio::spawn(async move { ns.compare(0, ones).await })
    };
    let report = {
        let ns = ns.clone();
        tokio::spawn(async move { ns.reservation_report().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // sent, held in the proxy
    assert!(!compare.is_finished() && !report.is_finished(), "answered through a blackhole");
    assert!(proxy.cut().await >= 2, "the admin and I/O connections");
    proxy.resume();
    restored(&mut events).await;
    assert!(compare.await.unwrap().expect("the compare is replayed"), "the blocks compare equal");
    let report = report.await.unwrap().expect("the reservation report is replayed");
    assert_eq!(report.registrants.iter().map(|g| g.rkey).collect::<Vec<_>>(), [0xA1]);
    ctrl.shutdown().await.unwrap();
    proxy.shutdown().await;
    server.stop().await;
}

/// The write cache a host turned off stays off across a reconnect: a new association starts with the
/// controller's default (on), and the host sets it again before it re-issues anything; it was left on, so that
/// writes were acknowledged from a cache the application had turned off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cache_turned_off_stays_off_across_a_reconnect() {
    let server = Server::start(Target::new(&config(&[1]), TargetSettings::default()).unwrap()).await.unwrap();
    let ctrl = connect(&server).await;
    let wce = |ctrl: Controller| async move {
        let mut s = holdfast_proto::SubmissionEntry::new(holdfast_proto::opcode::admin::GET_FEATURES, 0);
        s.cdw10.set(holdfast_proto::features::VOLATILE_WRITE_CACHE as u32);
        ctrl.admin(s, bytes::Bytes::new(), 0).await.unwrap().cqe.dw0.get() & 1
    };
    assert_eq!(wce(ctrl.clone()).await, 1, "on by default");
    ctrl.set_write_cache(false).await.unwrap();
    assert_eq!(wce(ctrl.clone()).await, 0);
    reconnect(&server, &ctrl).await;
    assert_eq!(wce(ctrl.clone()).await, 0, "off again on the new association");
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// A host whose registration another host preempts hears of it: the target's reservation notice (an event and
/// log page 80h) reaches the application as `Event::ReservationNotice` (Registration Preempted, namespace 1),
/// and the host that preempted hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_host_gets_a_reservation_notice_event() {
    use holdfast_proto::reservation as r;
    let server = Server::start(Target::new(&config(&[1]), TargetSettings::default()).unwrap()).await.unwrap();
    let (a, b) = (connect_as_host(&server, 1).await, connect_as_host(&server, 2).await);
    let (mut a_events, mut b_events) = (a.events(), b.events());
    let (na, nb) =
        (holdfast_host::Namespace::open(&a, 1).await.unwrap(), holdfast_host::Namespace::open(&b, 1).await.unwrap());
    na.reservation_register(r::RREGA_REGISTER, 0, 0xA1, false).await.unwrap();
    nb.reservation_register(r::RREGA_REGISTER, 0, 0xB1, false).await.unwrap();
    nb.reservation_acquire(r::RACQA_PREEMPT, r::ReservationType::WriteExclusive, 0xB1, 0xA1).await.unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::ReservationNotice { nsid, kind, lost }) = a_events.recv().await {
                return (nsid, kind, lost);
            }
        }
    })
    .await
    .expect("no reservation notice within 5 s");
    assert_eq!(notice, (1, holdfast_proto::log_page::rnlpt::REGISTRATION_PREEMPTED, 0));
    while let Ok(e) = b_events.try_recv() {
        assert!(!matches!(e, Event::ReservationNotice { .. }), "the preempting host heard of its own command: {e:?}");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    server.stop().await;
}

/// A compare and write still waiting in its queue for two free slots when the connection drops was never
/// sent: it is issued on the next association (no replay) and runs, instead of failing with a path error as
/// one that was outstanding does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_and_write_never_sent_before_a_loss_runs_after_the_reconnect() {
    use bytes::Bytes;
    let settings = TargetSettings { test_delay_writes: Some(Duration::from_millis(600)), ..TargetSettings::default() };
    let server = Server::start(Target::new(&config(&[1]), settings).unwrap()).await.unwrap();
    let mut o = ConnectOptions::new(server.bound[0].1.to_string(), NQN);
    o.nr_io_queues = 1;
    o.queue_size = 3; // two commands outstanding at most
    let ctrl = Controller::connect(o).await.unwrap();
    let ns = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    let (zeroes, ones) = (Bytes::from(vec![0u8; 512]), Bytes::from(vec![1u8; 512]));
    // A write held on the target takes one of the two slots; the pair needs both, and waits.
    let held = {
        let ns = ns.clone();
        tokio::spawn(async move { ns.write(8, Bytes::from(vec![9u8; 512]), false).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pair = {
        let ns = ns.clone();
        let (zeroes, ones) = (zeroes.clone(), ones.clone());
        tokio::spawn(async move { ns.compare_and_write(0, zeroes, ones, false).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    reconnect(&server, &ctrl).await;
    held.await.unwrap().expect("the held write is replayed");
    assert!(pair.await.unwrap().expect("the pair never sent runs after the reconnect"));
    assert_eq!(ns.read(0, 1).await.unwrap(), ones);
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// A target restarted under the host (a new `Target`, so a new instance ID, on the same port; its RAM namespace
/// starts empty): the write acknowledged before is gone, and a Flush on the new instance succeeds all the same.
/// `Controller::target_restarts` says so, counted before anything completes on the new association: read after
/// the Flush, it has changed (the `Restored` event may come after). Options of `Duration::MAX` (never give up,
/// no limit on connecting, no cap on the backoff) are taken without overflowing an instant: the first of them
/// used to panic the reconnect task, leaving the controller "reconnecting" for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_restarts_tells_a_flush_that_its_writes_went_with_a_restart() {
    let server = Server::start(Target::new(&config(&[1]), TargetSettings::default()).unwrap()).await.unwrap();
    let addr = server.bound[0].1;
    let mut o = ConnectOptions::new(addr.to_string(), NQN);
    o.nr_io_queues = 1;
    o.ctrl_loss_tmo = Some(holdfast_host::CTRL_LOSS_NEVER);
    o.connect_timeout = Duration::MAX;
    o.reconnect_delay = Some(Duration::from_millis(100));
    o.reconnect_delay_max = Some(Duration::MAX);
    let ctrl = Controller::connect(o).await.unwrap();
    let ns = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    let before = ctrl.target_restarts();
    ns.write(0, bytes::Bytes::from(vec![0x5A; 4096]), false).await.unwrap();
    ns.flush().await.unwrap();
    assert_eq!(ctrl.target_restarts(), before, "no restart yet: the write is durable where it landed");
    server.stop().await;
    let text = format!(
        "[[port]]\nid = 1\nlisten = \"{addr}\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n{}",
        ram_ns(1, "")
    );
    let server = Server::start(Target::new(&Config::parse(&text, "test").unwrap(), TargetSettings::default()).unwrap())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), ns.flush()).await.expect("no reconnect within 10 s").unwrap();
    assert_eq!(ctrl.target_restarts(), before + 1, "the Flush completed on a restarted target");
    assert_eq!(ns.read(0, 8).await.unwrap(), vec![0u8; 4096], "the RAM namespace started empty");
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// An I/O queue index beyond the controller's (`0..io_queues()`, as documented) is the caller's mistake and
/// refused, for reads and writes alike: it was taken modulo the count, so a wrong index went unnoticed (found by
/// a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_index_beyond_io_queues_is_refused() {
    let server = Server::start(Target::new(&config(&[1]), TargetSettings::default()).unwrap()).await.unwrap();
    let ctrl = connect(&server).await;
    let ns = holdfast_host::Namespace::open(&ctrl, 1).await.unwrap();
    assert_eq!(ctrl.io_queues(), 1);
    let r = ns.read_on(Some(7), 0, 1).await;
    assert!(
        matches!(&r, Err(holdfast_host::Error::Invalid(m)) if m.contains("I/O queue 7")),
        "{:?}",
        r.map(|b| b.len())
    );
    let w = ns.write_on(Some(1), 0, bytes::Bytes::from(vec![1u8; 512]), false).await;
    assert!(matches!(w, Err(holdfast_host::Error::Invalid(_))), "{w:?}");
    assert_eq!(ns.read_on(Some(0), 0, 1).await.unwrap().len(), 512, "queue 0 is one");
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}
