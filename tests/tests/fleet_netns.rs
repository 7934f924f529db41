//! Three hosts of a fleet, each in its own network namespace with its own pin directory and a
//! sandbox behind it, on a real three-member etcd ([`FleetLab`]): every gateway serves every
//! sandbox; the etcd leader dies while an admin API writes (refusals for a few seconds at
//! most, every acknowledged write kept); a host cut off from etcd answers mutations 503, keeps
//! serving, refuses tokens once its replica is older than `fleet.auth_max_staleness` (public
//! previews still work), restarts from its saved replica during the outage, and after the cut
//! heals it converges without help, even though the history it missed was compacted away (a
//! preview deleted meanwhile disappears, and its port closes in the host's kernel).

use gateway_tests::{
    edge::*,
    fleet::{FleetLab, LabHost},
    gateway_process::{GatewayProcess, Response},
};
use http::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Polls `check` until it holds; panics after `limit` (liveness bounds, not speed targets).
fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn post(gw: &GatewayProcess, path: &str, body: Value) -> Response {
    let body = serde_json::to_vec(&body).expect("json");
    gw.client().request("POST", path, &[("content-type", "application/json")], Some(&body)).expect("POST")
}

/// A public preview `name` of sandbox s2 on `port`, made through `gw`; its host name.
fn public_preview(gw: &GatewayProcess, name: &str, port: u16) -> String {
    let path = format!("/v1/workspaces/acme/sandboxes/s2/previews/{name}");
    let r = gw.client().put_json(&path, &json!({"port": port, "public": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["url"].as_str().expect("url").to_string();
    url.trim_start_matches("https://").split(':').next().expect("host").to_string()
}

#[test]
fn three_hosts_serve_every_sandbox_and_survive_leader_loss_partitions_restarts_and_compaction() {
    // Host C gives up on tokens after 3 s without news from etcd.
    let mut lab = FleetLab::start(3, |i| if i == 2 { "auth_max_staleness = \"3s\"\n".into() } else { String::new() });
    let rt = runtime();
    let _rt = rt.enter();
    let _apps: Vec<Backend> =
        lab.hosts.iter().map(|h| spawn_backend(&h.sandbox, h.sandbox.addr(), 3000, Speaks::Http1)).collect();
    let _preview_app = spawn_backend(&lab.hosts[2].sandbox, lab.hosts[2].sandbox.addr(), 4000, Speaks::Http1);
    for i in 0..3 {
        lab.register(i, &[(3000, "HTTP")]);
    }
    let token = create_token(&lab.hosts[0].gw, WS, "ci");
    let bearer = format!("Bearer {token}");
    let get = |h: &LabHost, host: &str, headers: &[(&str, &str)]| {
        rt.block_on(h.edge().get(host, "/port/3000/hello", headers))
    };

    // Every gateway serves every sandbox, over HTTP/1.1 and HTTP/2.
    for via in &lab.hosts {
        for i in 0..3 {
            let host = sandbox_host(&format!("s{i}"));
            until(&format!("{} serves s{i}", via.name), Duration::from_secs(5), || {
                get(via, &host, &[("authorization", &bearer)]).status == 200
            });
            let status = rt.block_on(async {
                let mut h2 = via.edge().h2("any.local.gw.test").await;
                let req = build_h2(Method::GET, &host, "/port/3000/h2", &[("authorization", &bearer)], empty());
                h2.send_request(req).await.expect("h2").status()
            });
            assert_eq!(status, 200, "h2 through {} to s{i}", via.name);
        }
    }

    // The etcd leader dies while A's admin API creates tokens: refusals (503) for a few
    // seconds at most, and every token acknowledged (201) is known to B afterwards.
    let leader = lab.etcd.leader().unwrap_or_else(|| panic!("no leader:\n{}", lab.etcd.logs()));
    let (mut acked, mut refused) = (Vec::new(), Vec::<Instant>::new());
    let started = Instant::now();
    let mut i = 0;
    while acked.len() < 30 {
        assert!(started.elapsed() < Duration::from_secs(60), "writes did not resume: {} acknowledged", acked.len());
        if i == 5 {
            lab.etcd.kill(leader);
        }
        let name = format!("lk{i}");
        let r = post(&lab.hosts[0].gw, "/v1/workspaces/acme/tokens", json!({"name": name}));
        match r.status {
            201 => acked.push(name),
            _ => {
                r.assert_error(503, "STORE_UNAVAILABLE");
                refused.push(Instant::now());
            }
        }
        i += 1;
    }
    if let (Some(first), Some(last)) = (refused.first(), refused.last()) {
        let window = last.duration_since(*first);
        eprintln!("leader killed: {} writes refused over {window:?}", refused.len());
        assert!(window < Duration::from_secs(15), "writes refused for {window:?}");
    }
    lab.etcd.restart(leader);
    for name in &acked {
        until(&format!("B knows {name}"), Duration::from_secs(5), || {
            lab.hosts[1].gw.client().get(&format!("/v1/workspaces/acme/tokens/{name}")).status == 200
        });
    }

    // Before the cut: a public preview of C's sandbox on port 4000 (made through A; C's kernel
    // opens the port), and one on 3000 that stays.
    let doomed = public_preview(&lab.hosts[0].gw, "doomed", 4000);
    let kept = public_preview(&lab.hosts[0].gw, "kept", 3000);
    until("C opens port 4000", Duration::from_secs(5), || opens_4000(&lab.hosts[2]));
    until("C serves the preview", Duration::from_secs(5), || {
        rt.block_on(lab.hosts[2].edge().get(&kept, "/", &[])).status == 200
    });
    let (a, c) = (&lab.hosts[0], &lab.hosts[2]);

    // C is cut off from etcd.
    // Serving goes on (checked first: within auth_max_staleness of the cut); a token A creates
    // meanwhile is unknown to C.
    c.cut_from_etcd(true);
    assert_eq!(get(c, &sandbox_host("s2"), &[("authorization", &bearer)]).status, 200, "C's own sandbox");
    assert_eq!(get(c, &sandbox_host("s0"), &[("authorization", &bearer)]).status, 200, "A's, through C");
    let late = create_token(&a.gw, WS, "made-during-the-cut");
    let late_bearer = format!("Bearer {late}");
    assert_eq!(get(c, &sandbox_host("s2"), &[("authorization", &late_bearer)]).status, 401, "C cannot know it");
    // Mutations through C: 503 within a few seconds.
    let t = Instant::now();
    post(&c.gw, "/v1/workspaces/acme/tokens", json!({"name": "on-c"})).assert_error(503, "STORE_UNAVAILABLE");
    assert!(t.elapsed() < Duration::from_secs(10), "a mutation during the cut took {:?}", t.elapsed());
    // Meanwhile A deletes C's preview, and the history is compacted.
    assert_eq!(a.gw.client().delete("/v1/workspaces/acme/sandboxes/s2/previews/doomed").status, 204);
    let revision = lab.etcd.revision(0);
    lab.etcd.compact(0, revision);
    // After auth_max_staleness (3 s) without news: tokens refused, public previews served.
    until("C refuses tokens once stale", Duration::from_secs(10), || {
        let r = get(c, &sandbox_host("s2"), &[("authorization", &bearer)]);
        r.status == 503 && r.text().contains("auth_max_staleness")
    });
    assert_eq!(rt.block_on(c.edge().get(&kept, "/", &[])).status, 200, "a public preview needs no token");

    // C restarts during the outage: it serves from the replica it saved.
    let c_gw = &mut lab.hosts[2];
    c_gw.gw.stop();
    c_gw.gw.spawn();
    let c_gw = &lab.hosts[2];
    assert!(c_gw.gw.log().contains("serving the replica saved"), "{}", c_gw.gw.log());
    assert_eq!(rt.block_on(c_gw.edge().get(&kept, "/", &[])).status, 200, "served after a restart without etcd");
    post(&c_gw.gw, "/v1/workspaces/acme/tokens", json!({"name": "on-c"})).assert_error(503, "STORE_UNAVAILABLE");
    assert!(opens_4000(c_gw), "the kernel still holds what C last knew");

    // Healed: C resumes, finds the history compacted, reads everything again, converges.
    c_gw.cut_from_etcd(false);
    until("C's kernel closes the deleted preview's port", Duration::from_secs(20), || !opens_4000(c_gw));
    until("C accepts the token made during the cut", Duration::from_secs(10), || {
        rt.block_on(c_gw.edge().get(&sandbox_host("s2"), "/port/3000/", &[("authorization", &late_bearer)])).status
            == 200
    });
    assert_eq!(rt.block_on(c_gw.edge().get(&doomed, "/", &[])).status, 404, "the deleted preview is gone");
    assert!(c_gw.gw.log().contains("compacted"), "the resync path was taken:\n{}", c_gw.gw.log());
    assert_eq!(post(&c_gw.gw, "/v1/workspaces/acme/tokens", json!({"name": "on-c"})).status, 201);
}

/// Port 4000 is open for sandbox `s2` in this host's kernel (C's).
fn opens_4000(h: &LabHost) -> bool {
    let r = h.gw.client().get("/v1/workspaces/acme/sandboxes/s2/policy");
    r.status == 200 && r.text().contains("4000")
}
