//! State durability: a stream of admin mutations (sandbox creates, port
//! changes and deletes, previews and their tokens, workspace tokens) with the gateway SIGKILLed
//! in the middle of a mutation at random points. After every restart: each acknowledged (2xx)
//! mutation is there, the one in flight at the kill is either wholly there or wholly absent,
//! every file of the state directory parses and no temporary file is left, and the kernel maps
//! (`gateway dataplane dump --json`, `GET …/policy`) equal the state.
//!
//! The seed is printed; `GATEWAY_SOAK_SEED=<n>` replays a run.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    edge::{WS, sandbox_body},
    env::Env,
    gateway_process::*,
    harness::*,
};
use serde_json::{Value, json};

const SANDBOXES: usize = 5;
const PREVIEWS: [&str; 2] = ["pa", "pb"];

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the admin API and the kernel should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    /// sandbox name → declared ports.
    sandboxes: BTreeMap<String, BTreeSet<u16>>,
    /// (sandbox, preview) → (port, preview token names).
    previews: BTreeMap<(String, String), (u16, BTreeSet<String>)>,
    /// Workspace token names.
    tokens: BTreeSet<String>,
}

impl Model {
    /// Declared ∪ preview ports of a sandbox (what the kernel should allow).
    fn kernel_ports(&self, sandbox: &str) -> BTreeSet<u16> {
        let mut ports = self.sandboxes.get(sandbox).cloned().unwrap_or_default();
        ports.extend(self.previews.iter().filter(|((s, _), _)| s == sandbox).map(|(_, (p, _))| *p));
        ports
    }
}

#[derive(Clone, Debug)]
enum Op {
    PutSandbox(usize, BTreeSet<u16>),
    DeleteSandbox(usize),
    PutPreview(usize, &'static str, u16),
    DeletePreview(usize, &'static str),
    PreviewToken(usize, &'static str, String),
    CreateToken(String),
    RevokeToken(String),
}

fn name(i: usize) -> String {
    format!("s{i}")
}

impl Op {
    fn random(rng: &mut Rng, serial: usize) -> Op {
        let i = rng.below(SANDBOXES as u64) as usize;
        let preview = PREVIEWS[rng.below(PREVIEWS.len() as u64) as usize];
        match rng.below(100) {
            0..=29 => {
                let n = 1 + rng.below(3);
                let ports = (0..n).map(|_| 3000 + rng.below(8) as u16).collect();
                Op::PutSandbox(i, ports)
            }
            30..=39 => Op::DeleteSandbox(i),
            40..=54 => Op::PutPreview(i, preview, 4000 + rng.below(4) as u16),
            55..=61 => Op::DeletePreview(i, preview),
            62..=71 => Op::PreviewToken(i, preview, format!("t{serial}")),
            72..=87 => Op::CreateToken(format!("k{}", rng.below(12))),
            _ => Op::RevokeToken(format!("k{}", rng.below(12))),
        }
    }

    /// Method, path, body.
    fn request(&self, sbs: &[Sandbox]) -> (&'static str, String, Option<Value>) {
        let base = format!("/v1/workspaces/{WS}/sandboxes");
        match self {
            Op::PutSandbox(i, ports) => (
                "PUT",
                format!("{base}/{}", name(*i)),
                Some(sandbox_body(&sbs[*i], &ports.iter().map(|p| (*p, "HTTP")).collect::<Vec<_>>())),
            ),
            Op::DeleteSandbox(i) => ("DELETE", format!("{base}/{}", name(*i)), None),
            Op::PutPreview(i, p, port) => {
                ("PUT", format!("{base}/{}/previews/{p}", name(*i)), Some(json!({"port": port, "public": false})))
            }
            Op::DeletePreview(i, p) => ("DELETE", format!("{base}/{}/previews/{p}", name(*i)), None),
            Op::PreviewToken(i, p, t) => {
                ("POST", format!("{base}/{}/previews/{p}/tokens", name(*i)), Some(json!({"name": t})))
            }
            Op::CreateToken(t) => ("POST", format!("/v1/workspaces/{WS}/tokens"), Some(json!({"name": t}))),
            Op::RevokeToken(t) => ("DELETE", format!("/v1/workspaces/{WS}/tokens/{t}"), None),
        }
    }

    /// The model after this mutation succeeded.
    fn apply(&self, m: &mut Model) {
        match self {
            Op::PutSandbox(i, ports) => {
                m.sandboxes.insert(name(*i), ports.clone());
            }
            Op::DeleteSandbox(i) => {
                m.sandboxes.remove(&name(*i));
                m.previews.retain(|(s, _), _| *s != name(*i));
            }
            Op::PutPreview(i, p, port) => {
                let tokens = m.previews.get(&(name(*i), p.to_string())).map(|(_, t)| t.clone()).unwrap_or_default();
                m.previews.insert((name(*i), p.to_string()), (*port, tokens));
            }
            Op::DeletePreview(i, p) => {
                m.previews.remove(&(name(*i), p.to_string()));
            }
            Op::PreviewToken(i, p, t) => {
                if let Some((_, tokens)) = m.previews.get_mut(&(name(*i), p.to_string())) {
                    tokens.insert(t.clone());
                }
            }
            Op::CreateToken(t) => {
                m.tokens.insert(t.clone());
            }
            Op::RevokeToken(t) => {
                m.tokens.remove(t);
            }
        }
    }

    /// Whether a refusal with this status is what the model predicts (the target is missing,
    /// or a token name is taken).
    fn refusal_expected(&self, status: u16, m: &Model) -> bool {
        match self {
            Op::DeleteSandbox(i) => status == 404 && !m.sandboxes.contains_key(&name(*i)),
            Op::PutPreview(i, ..) => status == 404 && !m.sandboxes.contains_key(&name(*i)),
            Op::DeletePreview(i, p) | Op::PreviewToken(i, p, _) => {
                status == 404 && !m.previews.contains_key(&(name(*i), p.to_string()))
            }
            Op::CreateToken(t) => status == 409 && m.tokens.contains(t),
            Op::RevokeToken(t) => status == 404 && !m.tokens.contains(t),
            Op::PutSandbox(..) => false,
        }
    }
}

/// The ports of a policy view's `entries` that are there because a sandbox declares them or a
/// preview opened them.
fn declared_or_preview_ports(view: &Value) -> BTreeSet<u16> {
    view["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["origin"].as_array().is_some_and(|o| o.iter().any(|x| x == "declared" || x == "preview")))
        .map(|e| e["port"].as_u64().expect("port") as u16)
        .collect()
}

fn names_in(v: &Value, key: &str) -> BTreeSet<String> {
    v[key]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// What the running gateway says it holds (admin API), checked against the kernel.
fn observe(gw: &GatewayProcess, bpffs: &BpffsDir, sbs: &[Sandbox]) -> Model {
    let c = gw.client();
    let mut m = Model::default();
    let list = c.get(&format!("/v1/workspaces/{WS}/sandboxes"));
    assert_eq!(list.status, 200, "{}", list.text());
    let list = list.json();
    for s in list["sandboxes"].as_array().unwrap_or_else(|| panic!("no sandboxes array: {list}")) {
        let n = s["name"].as_str().expect("name").to_string();
        let ports: BTreeSet<u16> = s["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| p["target"].as_u64().expect("target") as u16)
            .collect();
        m.sandboxes.insert(n.clone(), ports);
        let previews = c.get(&format!("/v1/workspaces/{WS}/sandboxes/{n}/previews"));
        assert_eq!(previews.status, 200, "{}", previews.text());
        for p in previews.json()["previews"].as_array().expect("previews") {
            let pname = p["name"].as_str().expect("preview name").to_string();
            let tokens = c.get(&format!("/v1/workspaces/{WS}/sandboxes/{n}/previews/{pname}/tokens"));
            assert_eq!(tokens.status, 200, "{}", tokens.text());
            m.previews.insert(
                (n.clone(), pname),
                (p["port"].as_u64().expect("port") as u16, names_in(&tokens.json(), "tokens")),
            );
        }
    }
    let tokens = c.get(&format!("/v1/workspaces/{WS}/tokens"));
    assert_eq!(tokens.status, 200, "{}", tokens.text());
    m.tokens = names_in(&tokens.json(), "tokens");

    // The kernel equals the state: every registered sandbox with exactly its ports, nothing else.
    let dump = dataplane_dump(bpffs.path());
    let mut kernel: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for view in dump["sandboxes"].as_array().expect("sandboxes") {
        let address = view["address"].as_str().expect("address");
        let i = sbs
            .iter()
            .position(|s| s.addr().to_string() == address)
            .unwrap_or_else(|| panic!("unknown address in the kernel: {view}"));
        assert_eq!(view["registered"], json!(true), "a kernel entry without a sandbox record: {view}");
        kernel.insert(name(i), declared_or_preview_ports(view));
    }
    let want: BTreeMap<String, BTreeSet<u16>> = m.sandboxes.keys().map(|n| (n.clone(), m.kernel_ports(n))).collect();
    assert_eq!(kernel, want, "the kernel maps differ from the state ({m:?})");
    for n in m.sandboxes.keys() {
        let policy = c.get(&format!("/v1/workspaces/{WS}/sandboxes/{n}/policy")).json();
        assert_eq!(declared_or_preview_ports(&policy), m.kernel_ports(n), "GET {n}/policy");
    }
    m
}

/// Every file of the state directory parses; no temporary file is left.
fn check_state_dir(dir: &Path) -> usize {
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read the state dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            assert!(!file.ends_with(".tmp"), "a temporary file was left: {}", path.display());
            if file.ends_with(".json") {
                let text = fs::read(&path).expect("read");
                serde_json::from_slice::<Value>(&text).unwrap_or_else(|e| {
                    panic!("{} does not parse ({e}): {:?}", path.display(), String::from_utf8_lossy(&text))
                });
            }
        }
    }
    assert_eq!(fs::read_to_string(dir.join("FORMAT")).expect("FORMAT"), "gateway-state 1\n");
    files
}

struct Figures {
    answered_before_kill: usize,
    acked: usize,
    refused: usize,
    kills: usize,
    in_flight_applied: usize,
    in_flight_absent: usize,
    restart: Duration,
}

/// `mutations` mutations, SIGKILLed during `kills` of them (random ones), verified after each
/// restart and at the end.
fn run(mutations: usize, kills: usize) -> Figures {
    let seed: u64 = std::env::var("GATEWAY_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    eprintln!("state durability: seed {seed} (GATEWAY_SOAK_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    // Made before the gateway, so that they are removed after it (and after its pins).
    let sbs: Vec<Sandbox> = (0..SANDBOXES).map(|_| Sandbox::new()).collect();
    let mut e = Env::new().start();
    let Env { gw, pins: bpffs, .. } = &mut e;
    let mut kill_at: BTreeSet<usize> = BTreeSet::new();
    while kill_at.len() < kills {
        kill_at.insert(1 + rng.below(mutations as u64 - 1) as usize);
    }
    let mut model = Model::default();
    let mut latency = Duration::from_millis(2);
    let mut f = Figures {
        answered_before_kill: 0,
        acked: 0,
        refused: 0,
        kills: 0,
        in_flight_applied: 0,
        in_flight_absent: 0,
        restart: Duration::ZERO,
    };
    for serial in 0..mutations {
        let op = Op::random(&mut rng, serial);
        let (method, path, body) = op.request(&sbs);
        let body = body.map(|b| serde_json::to_vec(&b).expect("json"));
        let client = gw.client();
        let killing = kill_at.contains(&serial);
        // Somewhere within the time a mutation takes (measured so far), so that the kill lands
        // before, during or just after its processing.
        let delay = Duration::from_micros(rng.below(latency.as_micros().max(100) as u64 * 3 / 2));
        let sent = Instant::now();
        let send = thread::spawn(move || {
            client.request(method, &path, &[("content-type", "application/json")], body.as_deref())
        });
        if killing {
            thread::sleep(delay);
            gw.kill();
        }
        let result = send.join().expect("request thread");
        match &result {
            Ok(r) if (200..300).contains(&r.status) => {
                op.apply(&mut model);
                f.acked += 1;
                if killing {
                    f.answered_before_kill += 1;
                } else {
                    latency = (latency * 7 + sent.elapsed()) / 8;
                }
            }
            Ok(r) => {
                assert!(
                    op.refusal_expected(r.status, &model),
                    "{op:?}: unexpected {} {}\nmodel {model:?}\n{}",
                    r.status,
                    r.text(),
                    gw.log()
                );
                f.refused += 1;
            }
            Err(e) => assert!(killing, "{op:?} failed without a kill: {e}\n{}", gw.log()),
        }
        if killing {
            f.kills += 1;
            gw.kill();
            let started = Instant::now();
            gw.spawn();
            f.restart = f.restart.max(started.elapsed());
            check_state_dir(&gw.state_dir());
            let seen = observe(gw, bpffs, &sbs);
            if seen != model {
                assert!(result.is_err(), "an acknowledged mutation is missing after the kill: {op:?}");
                // Only the mutation in flight may be missing... or present without an answer.
                let mut with = model.clone();
                op.apply(&mut with);
                assert_eq!(
                    seen, with,
                    "after the kill during {op:?}: neither the acknowledged state nor it plus the mutation in flight\nacknowledged: {model:?}"
                );
                model = with;
                f.in_flight_applied += 1;
            } else {
                f.in_flight_absent += 1;
            }
        }
    }
    let files = check_state_dir(&gw.state_dir());
    assert_eq!(observe(gw, bpffs, &sbs), model, "the final state");
    // And once more after a clean stop and start.
    gw.stop();
    gw.spawn();
    assert_eq!(observe(gw, bpffs, &sbs), model, "after a clean restart");
    eprintln!(
        "figure: state durability: {mutations} mutations ({} acknowledged, {} refused as predicted), {} SIGKILLs during a mutation (answered before the kill {}, unanswered and applied {}, unanswered and absent {}), mean mutation {latency:?}, slowest restart {:?}, {files} state files all parsed, no temporary file; final: {} sandboxes, {} previews, {} tokens",
        f.acked,
        f.refused,
        f.kills,
        f.answered_before_kill,
        f.in_flight_applied,
        f.in_flight_absent - f.answered_before_kill,
        f.restart,
        model.sandboxes.len(),
        model.previews.len(),
        model.tokens.len()
    );
    f
}

#[test]
fn acknowledged_mutations_survive_sigkill_and_the_kernel_matches_the_state() {
    let f = run(1000, 3);
    assert_eq!(f.kills, 3);
    assert!(f.acked > 500, "too few acknowledged mutations: {}", f.acked);
}

#[test]
#[ignore = "soak: run by cargo xtask soak"]
fn soak_acknowledged_mutations_survive_many_sigkills() {
    for _ in 0..3 {
        let f = run(1000, 15);
        assert_eq!(f.kills, 15);
    }
}
