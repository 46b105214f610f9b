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
