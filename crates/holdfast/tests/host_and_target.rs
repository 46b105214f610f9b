//! holdfast's host against holdfast's target, both in this process: what the two must agree on beyond the
//! I/O path (the Linux peers are the judges of each side's protocol; tests/interop).

use holdfast_host::controller::Event;
use holdfast_host::{ConnectOptions, Controller};
use holdfast_target::config::Config;
use holdfast_target::{Server, Target, TargetSettings};
use std::time::Duration;

const NQN: &str = "nqn.2026-01.io.holdfast:host-and-target";

fn config(namespaces: &[u32]) -> Config {
    let mut s =
        format!("[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n");
    for n in namespaces {
        s += &format!("[[subsystem.namespace]]\nnsid = {n}\nbackend = \"ram\"\nsize_mib = 1\n");
    }
    Config::parse(&s, "test").unwrap()
}

/// The host enables the namespace notices the controller offers (Set Features Asynchronous Event
/// Configuration; a target reports none before), and tells the application which namespaces changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_added_on_the_target_reaches_the_host_as_an_event() {
    let server = Server::start(Target::new(&config(&[1]), TargetSettings::default()).unwrap()).await.unwrap();
    let mut o = ConnectOptions::new(server.bound[0].1.to_string(), NQN);
    o.nr_io_queues = 1;
    let ctrl = Controller::connect(o).await.unwrap();
    let mut events = ctrl.events();
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1]);
    // The host's event task has its Asynchronous Event Request outstanding once the target holds it; a
    // notice raised before would be held by the target until then, so no wait is needed for correctness.
    server.target.reload(&config(&[1, 2])).unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(Event::NamespacesChanged { nsids }) => return nsids,
                Ok(_) => continue,
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("no namespace change event within 5 s");
    assert_eq!(changed, Some(vec![2]));
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1, 2]);
    ctrl.shutdown().await.unwrap();
    server.stop().await;
}

/// A KATO changed in the target's configuration (reload: a policy-changed event) is the KATO the host's
/// association runs with on the target (Get Features Keep Alive Timer), not only the one the host reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kato_changed_by_a_reload_is_set_on_the_hosts_association() {
    let with_kato = |ms: u32| {
        let s = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
             [subsystem.policy]\nkato_ms = {ms}\n[[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = 1\n"
        );
        Config::parse(&s, "test").unwrap()
    };
    let server = Server::start(Target::new(&with_kato(6000), TargetSettings::default()).unwrap()).await.unwrap();
    let mut o = ConnectOptions::new(server.bound[0].1.to_string(), NQN);
    o.nr_io_queues = 1;
    let ctrl = Controller::connect(o).await.unwrap();
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
    let s = format!(
        "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
         [[subsystem.namespace]]\nnsid = 1\nbackend = \"file\"\npath = \"{}\"\nread_only = true\n",
        img.display()
    );
    let server = Server::start(Target::new(&Config::parse(&s, "test").unwrap(), TargetSettings::default()).unwrap())
        .await
        .unwrap();
    let mut o = ConnectOptions::new(server.bound[0].1.to_string(), NQN);
    o.nr_io_queues = 1;
    let ctrl = Controller::connect(o).await.unwrap();
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
