//! The etcd cluster the fleet tests run on (`gateway_tests::etcd`): three real members of
//! Debian's etcd 3.4 on loopback. A write through one member is read through another; after the
//! leader is killed the survivors elect another and commit writes again; the killed member
//! rejoins with what it missed. Everything the fleet tests do to etcd rests on these.

use gateway_tests::etcd::EtcdCluster;
use std::time::{Duration, Instant};

#[test]
fn a_three_member_cluster_replicates_survives_its_leader_and_takes_it_back() {
    let mut etcd = EtcdCluster::start(3);
    assert!(etcd.try_put(0, "/gateway-test/a", "1"), "put via m0:\n{}", etcd.logs());
    assert_eq!(etcd.get(2, "/gateway-test/a").as_deref(), Some("1"), "read via m2");

    let leader = etcd.leader().unwrap_or_else(|| panic!("no leader:\n{}", etcd.logs()));
    etcd.kill(leader);
    let survivor = (leader + 1) % 3;
    // Liveness, not a speed target: an election takes about a second (1 s election timeout).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !etcd.try_put(survivor, "/gateway-test/b", "2") {
        assert!(Instant::now() < deadline, "no write committed after the leader died:\n{}", etcd.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let new_leader = etcd.leader().unwrap_or_else(|| panic!("no new leader:\n{}", etcd.logs()));
    assert_ne!(new_leader, leader, "the killed member cannot be the leader");

    etcd.restart(leader);
    assert_eq!(
        etcd.get(leader, "/gateway-test/b").as_deref(),
        Some("2"),
        "the rejoined member has the write it missed"
    );
    assert_eq!(etcd.get(leader, "/gateway-test/a").as_deref(), Some("1"));
}
