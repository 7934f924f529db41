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

/// The etcd store (`gateway::state::EtcdStore`) on the real cluster: what one gateway writes
/// another loads, at one revision; the fleet's secret is created once however many gateways
/// race for it; a record under another record's key is refused; a sealed store writes nothing;
/// writes go on after the leader dies, and no request fails for the member that is down.
#[test]
fn the_etcd_store_shares_records_between_gateways() {
    use gateway::state::{Store, StoreError, etcd_store::EtcdSettings};
    let mut etcd = EtcdCluster::start(3);
    let prefix = format!("/gateway-test-{}/", std::process::id());
    let settings = |endpoints: Vec<String>| EtcdSettings {
        endpoints,
        prefix: prefix.clone(),
        user: None,
        replica: None,
        tls: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let sandbox: gateway::model::sandbox::Sandbox = serde_json::from_str(
        r#"{"workspace":"acme","name":"web","address":"198.18.0.2","interface":"gwt-veth0","ports":[{"target":3000,"protocol":"HTTP"}]}"#,
    )
    .expect("sandbox");
    let token: gateway::model::sandbox::AccessToken = serde_json::from_str(&format!(
        r#"{{"workspace":"acme","name":"ci","secretSha256":"{}","createdAt":"2026-12-06T00:00:00Z"}}"#,
        "ab".repeat(32)
    ))
    .expect("token");
    let preview: gateway::model::preview::Preview = serde_json::from_str(
        r#"{"workspace":"acme","sandbox":"web","name":"p1","id":"abcdefgh","port":3000,"public":true,"createdAt":"2026-12-06T00:00:00Z"}"#,
    )
    .expect("preview");

    rt.block_on(async {
        let a = gateway::state::EtcdStore::connect(&settings(etcd.endpoints())).await.expect("connect a");
        let b = gateway::state::EtcdStore::connect(&settings(vec![etcd.endpoint(2)])).await.expect("connect b");
        assert!(
            a.describe().starts_with("etcd:http://127.0.0.1:") && a.describe().ends_with(&prefix),
            "{}",
            a.describe()
        );
        let empty = a.load().await.expect("load");
        assert!(empty.sandboxes.is_empty() && empty.tokens.is_empty() && empty.previews.is_empty());

        a.put_sandbox(sandbox.clone()).await.expect("put sandbox");
        a.put_token(token.clone()).await.expect("put token");
        a.put_preview(preview.clone()).await.expect("put preview");
        let seen = b.load().await.expect("load through another member");
        assert_eq!(
            (seen.sandboxes, seen.tokens, seen.previews),
            (vec![sandbox.clone()], vec![token.clone()], vec![preview.clone()])
        );

        let (sa, sb) = tokio::join!(a.secret("preview-id"), b.secret("preview-id"));
        let (sa, sb) = (sa.expect("secret a"), sb.expect("secret b"));
        assert_eq!(sa, sb, "one secret for the fleet");
        assert_eq!(a.secret("preview-id").await.expect("again"), sa, "created once");
        assert_ne!(a.secret("other").await.expect("other"), sa);

        b.delete_sandbox(sandbox.id()).await.expect("delete");
        b.delete_token(token.id()).await.expect("delete");
        b.delete_preview(preview.key()).await.expect("delete");
        let gone = a.load().await.expect("load");
        assert!(gone.sandboxes.is_empty() && gone.tokens.is_empty() && gone.previews.is_empty(), "{gone:?}");

        // A record copied under another record's key is refused, naming the key.
        let copied = serde_json::json!({ "version": 1, "sandbox": sandbox }).to_string();
        assert!(etcd.try_put(0, &format!("{prefix}sandboxes/sbx-other-acme"), &copied));
        match a.load().await {
            Err(StoreError::Corrupt { path, reason }) => {
                assert!(
                    path.display().to_string().ends_with("sandboxes/sbx-other-acme") && reason.contains("sbx-web-acme"),
                    "{reason}"
                )
            }
            other => panic!("a misplaced record was loaded: {other:?}"),
        }
        etcd.etcdctl(0, &["del", &format!("{prefix}sandboxes/sbx-other-acme")]);

        // A write based on a stale view is refused and changes nothing: `b` has not seen what
        // `a` wrote since `b` loaded.
        a.load().await.expect("load");
        a.put_token(token.clone()).await.expect("put token");
        assert!(matches!(b.put_token(token.clone()).await, Err(StoreError::Changed { .. })), "stale put");
        assert!(matches!(b.delete_token(token.id()).await, Err(StoreError::Changed { .. })), "stale delete");
        assert_eq!(a.load().await.expect("load").tokens, vec![token.clone()]);
        b.load().await.expect("load");
        b.delete_token(token.id()).await.expect("delete after catching up");
        a.load().await.expect("load");

        // More records than one page of `load` (500 keys), all loaded, at one revision.
        for i in 0..1_100 {
            let mut s = sandbox.clone();
            s.name = format!("s{i:04}");
            a.put_sandbox(s).await.unwrap_or_else(|e| panic!("put {i}: {e}"));
        }
        let many = b.load().await.expect("paged load");
        assert_eq!(many.sandboxes.len(), 1_100);
        assert!(many.sandboxes.windows(2).all(|w| w[0].id() < w[1].id()), "sorted, no duplicate");
        for i in 0..1_100 {
            a.delete_sandbox(gateway::model::sandbox::SandboxId::new("acme", format!("s{i:04}")))
                .await
                .expect("delete");
        }

        b.seal();
        assert!(matches!(b.put_sandbox(sandbox.clone()).await, Err(StoreError::Sealed)));

        // Liveness after losing the leader, not a speed target (an election takes about a second).
        let leader = etcd.leader().unwrap_or_else(|| panic!("no leader:\n{}", etcd.logs()));
        etcd.kill(leader);
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = a.put_sandbox(sandbox.clone()).await {
            assert!(Instant::now() < deadline, "no write after the leader died: {e}\n{}", etcd.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
            // A write that timed out may have committed: what etcd holds is the view to write on.
            let _ = a.load().await;
        }
        // With the member down, every request still succeeds: one sent to its endpoint goes
        // again to another (the client spreads requests over all three).
        for i in 0..12 {
            assert_eq!(a.load().await.unwrap_or_else(|e| panic!("load {i}: {e}")).sandboxes, vec![sandbox.clone()]);
            a.put_token(token.clone()).await.unwrap_or_else(|e| panic!("put {i}: {e}"));
        }
    });
}

/// A fleet member reaches etcd as production runs it: mutual TLS (`fleet.etcd_ca`,
/// `etcd_cert`, `etcd_key`; the certificates made with `gateway fleet ca|cert`) as a user whose
/// role reaches the fleet's prefix only (`etcd_user`, `etcd_password_file`); with a wrong
/// password it does not start, and says why.
#[test]
fn a_member_reaches_etcd_over_mutual_tls_as_a_user_limited_to_its_prefix() {
    use gateway_tests::{
        edge::{WS, create_token},
        fleet::{fleet_pki, fleet_section},
        gateway_process::{GatewayProcess, free_port, temp_dir},
        harness::BpffsDir,
    };
    let pki = fleet_pki(&["localhost", "host-a"]);
    let mut etcd = EtcdCluster::start_tls(1, pki.path());
    let prefix = format!("/tls-fleet-{}/", std::process::id());
    for args in [
        vec!["user", "add", "root:root-password"],
        vec!["user", "add", "gw:gw-password"],
        vec!["role", "add", "gw"],
        vec!["role", "grant-permission", "gw", "readwrite", "--prefix=true", &prefix],
        vec!["user", "grant-role", "gw", "gw"],
        vec!["auth", "enable"],
    ] {
        let out = etcd.etcdctl(0, &args);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    etcd.set_user("root:root-password");
    let dir = temp_dir("gateway-etcd-user");
    let config = |password: &str| {
        let file = dir.path().join(format!("{password}.txt"));
        std::fs::write(&file, format!("{password}\n")).expect("password file");
        let p = pki.path().display();
        fleet_section(&etcd.endpoints(), pki.path(), &prefix, "host-a", &format!("127.0.0.1:{}", free_port()))
            + &format!(
                "etcd_ca = \"{p}/ca.pem\"\netcd_cert = \"{p}/host-a.pem\"\netcd_key = \"{p}/host-a.key\"\netcd_user = \"gw\"\netcd_password_file = \"{}\"\n",
                file.display()
            )
    };
    let pins = BpffsDir::new();
    let mut gw = GatewayProcess::enforcing(pins.path(), &config("gw-password"));
    gw.spawn();
    create_token(&gw, WS, "ci");
    assert!(etcd.get(0, &format!("{prefix}tokens/acme/ci")).is_some(), "the token is in etcd");
    let view = gw.client().get("/v1/fleet").json();
    assert!(view["revision"].as_i64().unwrap_or(0) > 0, "{view}");
    drop(gw);

    let other = BpffsDir::new();
    let mut bad = GatewayProcess::enforcing(other.path(), &config("not-the-password"));
    let (status, log) = bad.spawn_expect_exit();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("cannot connect to the fleet's etcd") && log.contains("authentication failed"), "{log}");
}

/// `gateway fleet import`: a single host's state (a sandbox, a token, a preview) copied into a
/// fleet's etcd, the host owning its sandbox; a second run imports nothing; the gateway started
/// again as a fleet member serves the same sandbox with the same token and the same preview URL;
/// with the gateway running, the import refuses (the state directory is locked).
#[test]
fn fleet_import_brings_a_single_hosts_state_into_the_fleet_once() {
    use gateway_tests::{
        edge::*,
        fleet::{fleet_pki, fleet_section},
        gateway_process::{GatewayProcess, free_port, run_gateway},
        harness::{BpffsDir, Sandbox},
    };
    let etcd = EtcdCluster::start(1);
    let pki = fleet_pki(&["host-a"]);
    let prefix = format!("/import-{}/", std::process::id());
    let pins = BpffsDir::new();
    let rt = runtime();
    let _rt = rt.enter();
    let sb = Sandbox::new();
    let _app = spawn_backend(&sb, sb.addr(), 3000, Speaks::Http1);
    let mut gw = GatewayProcess::enforcing(pins.path(), "");
    gw.spawn();
    register(&gw, WS, "web", &sb, &[(3000, "HTTP")]);
    let bearer = format!("Bearer {}", create_token(&gw, WS, "ci"));
    let preview_path = "/v1/workspaces/acme/sandboxes/web/previews/site";
    let r = gw.client().put_json(preview_path, &serde_json::json!({"port": 3000, "public": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["url"].clone();
    gw.stop();

    let listen = format!("127.0.0.1:{}", free_port());
    gw.edit_config(|c| c + &fleet_section(&etcd.endpoints(), pki.path(), &prefix, "host-a", &listen));
    let config = gw.config_path().to_str().expect("utf-8").to_string();
    let import = || run_gateway(&["fleet", "import", "--config", &config]);
    let out = import();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("imported 3 records"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = import();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && text.contains("imported 0 records") && text.contains("3 already there"), "{text}");
    let record = etcd.get(0, &format!("{prefix}sandboxes/sbx-web-acme")).expect("the sandbox is in etcd");
    assert!(record.contains("\"owner\":\"host-a\""), "{record}");

    gw.spawn();
    let r = rt.block_on(EdgeClient::new(&gw).get(&sandbox_host("web"), "/port/3000/", &[("authorization", &bearer)]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.client().get(preview_path).json()["url"], url, "the preview keeps its URL");
    let out = import();
    assert!(!out.status.success(), "an import while the gateway runs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop the gateway first"), "{out:?}");
}
