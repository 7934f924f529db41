//! A real etcd cluster for tests (Debian's `etcd-server`): `n` members on 127.0.0.1 with free
//! ports, each with its own data directory, a cluster token unique to the test, and
//! `etcdctl` (Debian's `etcd-client`) to inspect it. Members can be stopped and started again;
//! every member is killed and every directory removed on drop, also when the test fails.

use crate::gateway_process::{TempDir, free_port, temp_dir};
use std::{
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// How long a member or the cluster gets to answer after a start or a change.
const READY_WITHIN: Duration = Duration::from_secs(20);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Child>,
}

/// The cluster; members are numbered 0…n-1.
pub struct EtcdCluster {
    dir: TempDir,
    token: String,
    members: Vec<Member>,
    /// Addresses the members also listen on for clients (besides 127.0.0.1).
    extra: Vec<std::net::Ipv4Addr>,
    /// Client TLS: the directory of `ca.pem`, `localhost.pem` and `localhost.key` (made with
    /// `gateway fleet ca` / `gateway fleet cert localhost`); clients need a certificate too.
    tls: Option<std::path::PathBuf>,
    /// `user:password` etcdctl authenticates with (once authentication is enabled).
    user: Option<String>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader and accepts a write.
    pub fn start(n: usize) -> EtcdCluster {
        Self::start_on(n, &[])
    }

    /// [`EtcdCluster::start`] with the members' client ports also open on `extra` (addresses
    /// of this namespace that gateways in other namespaces reach: [`EtcdCluster::endpoints_via`]).
    pub fn start_on(n: usize, extra: &[std::net::Ipv4Addr]) -> EtcdCluster {
        Self::start_with(n, extra, None)
    }

    /// [`EtcdCluster::start`] serving clients over mutual TLS with the certificates in `pki`
    /// (see the `tls` field): endpoints are `https://localhost:PORT`.
    pub fn start_tls(n: usize, pki: &std::path::Path) -> EtcdCluster {
        Self::start_with(n, &[], Some(pki.to_path_buf()))
    }

    fn start_with(n: usize, extra: &[std::net::Ipv4Addr], tls: Option<std::path::PathBuf>) -> EtcdCluster {
        let dir = temp_dir("gateway-etcd");
        let token = format!("gw-test-{}-{}", std::process::id(), free_port());
        let members = (0..n)
            .map(|i| Member { name: format!("m{i}"), client_port: free_port(), peer_port: free_port(), process: None })
            .collect();
        let mut cluster = EtcdCluster { dir, token, members, extra: extra.to_vec(), tls, user: None };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_writable(&(0..n).collect::<Vec<_>>());
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name))).expect("etcd log file");
        let err = log.try_clone().expect("etcd log file");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let listen: Vec<String> = std::iter::once(client.clone())
            .chain(self.extra.iter().map(|ip| format!("http://{ip}:{}", m.client_port)))
            .collect();
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &listen.join(","), "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new", "--experimental-watch-progress-notify-interval", "1s"])
            .args(self.tls.iter().flat_map(|pki| {
                [
                    "--cert-file".to_string(),
                    pki.join("localhost.pem").display().to_string(),
                    "--key-file".to_string(),
                    pki.join("localhost.key").display().to_string(),
                    "--trusted-ca-file".to_string(),
                    pki.join("ca.pem").display().to_string(),
                    "--client-cert-auth".to_string(),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd (cargo xtask setup installs etcd-server): {e}"));
        self.members[i].process = Some(child);
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The client URLs of every member at `ip` (one of the `extra` addresses).
    pub fn endpoints_via(&self, ip: std::net::Ipv4Addr) -> Vec<String> {
        self.members.iter().map(|m| format!("http://{ip}:{}", m.client_port)).collect()
    }

    /// Member `i`'s client endpoint.
    pub fn endpoint(&self, i: usize) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.members[i].client_port),
            None => format!("http://127.0.0.1:{}", self.members[i].client_port),
        }
    }

    /// Runs etcdctl as `user:password` from now on (after `auth enable`).
    pub fn set_user(&mut self, user: &str) {
        self.user = Some(user.to_string());
    }

    /// Runs `etcdctl` (API v3) against member `i` with a short command timeout.
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> Output {
        let mut tls = Vec::new();
        if let Some(pki) = &self.tls {
            for (flag, file) in [("--cacert", "ca.pem"), ("--cert", "localhost.pem"), ("--key", "localhost.key")] {
                tls.push(format!("{flag}={}", pki.join(file).display()));
            }
        }
        if let Some(user) = &self.user {
            tls.push(format!("--user={user}"));
        }
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint(i), "--command-timeout", "2s", "--dial-timeout", "1s"])
            .args(&tls)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run etcdctl (cargo xtask setup installs etcd-client): {e}"))
    }

    /// The value of `key` read through member `i` (linearizable), `None` when absent.
    pub fn get(&self, i: usize, key: &str) -> Option<String> {
        let out = self.etcdctl(i, &["get", "--print-value-only", key]);
        assert!(out.status.success(), "etcdctl get {key} via m{i}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
        (!text.is_empty()).then_some(text)
    }

    /// Puts `key` through member `i`; whether it was committed.
    pub fn try_put(&self, i: usize, key: &str, value: &str) -> bool {
        self.etcdctl(i, &["put", key, value]).status.success()
    }

    /// The member that is the leader, as seen by the running members.
    pub fn leader(&self) -> Option<usize> {
        let statuses: Vec<Option<(u64, u64)>> = (0..self.members.len()).map(|i| self.status(i)).collect();
        let leader = statuses.iter().flatten().map(|&(_, leader)| leader).next()?;
        statuses.iter().position(|s| s.is_some_and(|(id, _)| id == leader))
    }

    /// Member `i`'s own id and the leader it knows, from `etcdctl endpoint status`.
    fn status(&self, i: usize) -> Option<(u64, u64)> {
        self.members[i].process.as_ref()?;
        let out = self.etcdctl(i, &["endpoint", "status", "-w", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let status = &v.as_array()?.first()?["Status"];
        let id = status["header"]["member_id"].as_u64()?;
        let leader = status["leader"].as_u64()?;
        (leader != 0).then_some((id, leader))
    }

    /// The cluster's current revision, as member `i` answers.
    pub fn revision(&self, i: usize) -> i64 {
        let out = self.etcdctl(i, &["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v[0]["Status"]["header"]["revision"].as_i64().unwrap_or_else(|| panic!("no revision in {v}"))
    }

    /// Compacts the history up to `revision`: a watch from before it cannot resume.
    pub fn compact(&self, i: usize, revision: i64) {
        let out = self.etcdctl(i, &["compact", &revision.to_string(), "--physical"]);
        assert!(out.status.success(), "etcdctl compact: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Kills member `i` (SIGKILL: no goodbye to its peers).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Starts member `i` again on its data directory (it rejoins the cluster).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_writable(&[i]);
    }

    /// Waits until a write through each of `members` is committed, or panics with the logs.
    pub fn wait_writable(&self, members: &[usize]) {
        let deadline = Instant::now() + READY_WITHIN;
        for &i in members {
            while !self.try_put(i, "/gateway-test/ready", &i.to_string()) {
                if Instant::now() > deadline {
                    panic!("etcd member m{i} accepts no write within {READY_WITHIN:?}:\n{}", self.logs());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!("--- {} ---\n{}", m.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
