//! Previews open sandbox ports in the kernel on demand: the real gateway process, enforcing,
//! a sandbox in a network namespace. Every check reads the kernel back (the admin policy view,
//! the pinned maps themselves, `gateway dataplane dump`) AND connects with the gateway's mark.

use gateway::{dataplane::maps::KernelMaps, model::time};
use gateway_common::{
    IPPROTO_TCP,
    policy::{Endpoint, origin},
};
use gateway_tests::{
    edge::{WS, register},
    env::Env,
    gateway_process::*,
    harness::*,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The sandbox of [`Env`], `app` of [`WS`].
const SBX: &str = "/v1/workspaces/acme/sandboxes/app";

fn put_preview(gw: &GatewayProcess, name: &str, body: Value) -> Value {
    let r = gw.client().put_json(&format!("{SBX}/previews/{name}"), &body);
    assert_eq!(r.status, 200, "PUT preview {name}: {}", r.text());
    r.json()
}

fn delete_preview(gw: &GatewayProcess, name: &str) {
    let r = gw.client().delete(&format!("{SBX}/previews/{name}"));
    assert_eq!(r.status, 204, "DELETE preview {name}: {}", r.text());
}

/// The policy view's entry for `port`: (origin, previewRefs), `None` if the kernel has none.
fn entry(gw: &GatewayProcess, port: u16) -> Option<(Vec<String>, u64)> {
    let r = gw.client().get(&format!("{SBX}/policy"));
    assert_eq!(r.status, 200, "GET policy: {}", r.text());
    r.json()["entries"].as_array().expect("entries").iter().find(|e| e["port"] == port).map(|e| {
        let origins =
            e["origin"].as_array().expect("origin").iter().map(|o| o.as_str().unwrap_or("").to_string()).collect();
        (origins, e["previewRefs"].as_u64().expect("previewRefs"))
    })
}

/// The pinned GW_POLICY entry for (sandbox, port), read straight from the map.
fn map_entry(bpffs: &BpffsDir, sb: &Sandbox, port: u16) -> Option<(u8, u32)> {
    let maps = KernelMaps::open(&bpffs.path().join("maps")).expect("open the pinned maps");
    maps.policy.get(&Endpoint::new(sb.addr().octets(), port, IPPROTO_TCP), 0).ok().map(|v| (v.origin, v.preview_refs))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn state_of(gw: &GatewayProcess) -> (String, String) {
    (
        gw.client().get(&format!("{SBX}/previews")).text(),
        gw.client().get(&format!("{SBX}/policy")).json()["entries"].to_string(),
    )
}

#[test]
fn previews_open_undeclared_ports_and_the_last_one_closes_them() {
    let mut e = Env::new().sandbox("app", &[(3000, "HTTP")]).start();
    let Env { gw, sandbox, pins: bpffs, .. } = &mut e;
    let sb = sandbox.as_ref().expect("sandbox");
    let _apps: Vec<Listener> = [3000, 4000, 5000, 8080].iter().map(|p| spawn_tcp_echo(sb, sb.sock(*p))).collect();
    assert_unreachable(Origin::gateway(), sb.sock(4000), "undeclared port before any preview");
    assert_eq!(entry(gw, 4000), None);

    // A preview on an undeclared port opens it, for the gateway only.
    let v = put_preview(gw, "p1", json!({"port": 4000}));
    assert!(v["policyAppliedMicros"].is_u64(), "{v}");
    assert_eq!(entry(gw, 4000), Some((strings(&["preview"]), 1)));
    assert_eq!(map_entry(bpffs, sb, 4000), Some((origin::PREVIEW, 1)));
    assert_reachable(Origin::gateway(), sb.sock(4000), "preview port from the gateway");
    assert_unreachable(Origin::host(), sb.sock(4000), "preview port, unmarked");

    // Two previews on one port: counted; a preview on a declared port: both origins.
    put_preview(gw, "p2", json!({"port": 4000, "public": true}));
    assert_eq!(entry(gw, 4000), Some((strings(&["preview"]), 2)));
    put_preview(gw, "p3", json!({"port": 3000}));
    assert_eq!(entry(gw, 3000), Some((strings(&["declared", "preview"]), 1)));
    assert_eq!(map_entry(bpffs, sb, 3000), Some((origin::DECLARED | origin::PREVIEW, 1)));
    // 443 is the sandbox API (8080 inside, built in): no entry of its own.
    let before = gw.client().get(&format!("{SBX}/policy")).json()["entries"].clone();
    put_preview(gw, "api", json!({"port": 443}));
    assert_eq!(gw.client().get(&format!("{SBX}/policy")).json()["entries"], before);

    // `gateway dataplane dump` shows why each entry exists.
    let dump = dataplane_dump(bpffs.path());
    let e4000 =
        dump["sandboxes"][0]["entries"].as_array().expect("entries").iter().find(|e| e["port"] == 4000).cloned();
    assert_eq!(e4000.map(|e| (e["origin"].clone(), e["previewRefs"].clone())), Some((json!(["preview"]), json!(2))));

    // Refused requests change nothing, in the state or in the kernel.
    let before = state_of(gw);
    for (body, status) in [
        (json!({"port": 80}), 400),
        (json!({"port": 8080}), 400),
        (json!({"port": 0}), 400),
        (json!({"port": 70000}), 400),
        (json!({"port": 5000, "ttl": "forever"}), 400),
        (json!({"port": 5000, "bogus": 1}), 400),
    ] {
        let r = gw.client().put_json(&format!("{SBX}/previews/p9"), &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
    }
    let r = gw.client().put_json(&format!("/v1/workspaces/{WS}/sandboxes/nope/previews/p9"), &json!({"port": 5000}));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(state_of(gw), before);
    assert_unreachable(Origin::gateway(), sb.sock(5000), "a refused preview opened nothing");

    // Re-registering the sandbox with other declared ports keeps the preview ports.
    register(gw, WS, "app", sb, &[]);
    assert_eq!(entry(gw, 3000), Some((strings(&["preview"]), 1)));
    assert_reachable(Origin::gateway(), sb.sock(4000), "preview port after re-registration");
    register(gw, WS, "app", sb, &[(3000, "HTTP")]);

    // A crash and a restart: the state comes back and the kernel agrees.
    gw.kill();
    assert_reachable(Origin::gateway(), sb.sock(4000), "preview port while the gateway is dead");
    gw.spawn();
    assert_eq!(entry(gw, 4000), Some((strings(&["preview"]), 2)));

    // Deleting previews: the port stays while one uses it, closes with the last, unless declared.
    delete_preview(gw, "p1");
    assert_eq!(entry(gw, 4000), Some((strings(&["preview"]), 1)));
    assert_reachable(Origin::gateway(), sb.sock(4000), "one preview left");
    delete_preview(gw, "p2");
    assert_eq!(entry(gw, 4000), None);
    assert_eq!(map_entry(bpffs, sb, 4000), None);
    assert_unreachable(Origin::gateway(), sb.sock(4000), "last preview deleted");
    delete_preview(gw, "p3");
    assert_eq!(entry(gw, 3000), Some((strings(&["declared"]), 0)));
    assert_reachable(Origin::gateway(), sb.sock(3000), "declared port outlives its preview");
    assert_eq!(gw.client().delete(&format!("{SBX}/previews/p3")).status, 404);
}

#[test]
fn an_expired_preview_is_reaped_and_its_port_closed() {
    let e = Env::new().sandbox("app", &[]).start();
    let Env { gw, pins: bpffs, .. } = &e;
    let sb = e.sb();
    let _app = spawn_tcp_echo(sb, sb.sock(4000));
    let expires = time::add(time::now(), Duration::from_secs(2));
    let v = put_preview(gw, "brief", json!({"port": 4000, "expiresAt": time::format_timestamp(expires)}));
    assert_eq!(v["expiresAt"], time::format_timestamp(time::truncate_millis(expires)));
    assert_reachable(Origin::gateway(), sb.sock(4000), "before expiry");
    assert_eq!(entry(gw, 4000), Some((strings(&["preview"]), 1)));

    // Reaped within a second of its expiry: state, kernel and connections agree.
    let deadline = Instant::now() + Duration::from_secs(6);
    while entry(gw, 4000).is_some() {
        assert!(Instant::now() < deadline, "not reaped; log:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(time::now() >= expires, "reaped before its expiry");
    assert!(time::until(time::now(), expires) < Duration::from_millis(1500), "reaped late");
    assert_eq!(map_entry(bpffs, sb, 4000), None);
    assert_unreachable(Origin::gateway(), sb.sock(4000), "after expiry");
    assert_eq!(gw.client().get(&format!("{SBX}/previews/brief")).status, 404);
    assert_eq!(gw.client().get(&format!("{SBX}/previews")).json(), json!({"previews": []}));
    assert!(gw.log().contains("expired preview reaped"), "{}", gw.log());
}

#[test]
fn deleting_a_sandbox_deletes_its_previews() {
    let mut e = Env::new().sandbox("app", &[]).start();
    let Env { gw, sandbox, .. } = &mut e;
    let sb = sandbox.as_ref().expect("sandbox");
    let _app = spawn_tcp_echo(sb, sb.sock(4000));
    let first = put_preview(gw, "web", json!({"port": 4000}));
    assert_eq!(gw.client().delete(SBX).status, 204);
    assert_unreachable(Origin::gateway(), sb.sock(4000), "sandbox deleted");
    assert_eq!(gw.client().get(&format!("{SBX}/previews")).status, 404);
    gw.restart();
    register(gw, WS, "app", sb, &[]);
    assert_eq!(gw.client().get(&format!("{SBX}/previews")).json(), json!({"previews": []}));
    assert_unreachable(Origin::gateway(), sb.sock(4000), "re-registered without previews");
    // The URL of a re-created preview is the same as before.
    let again = put_preview(gw, "web", json!({"port": 4000}));
    assert_eq!(again["url"], first["url"]);
}
