//! `cargo xtask run --demo`, non-interactively: start it, run every command it prints (as a
//! user would paste them), check what each shows, then Ctrl-C (SIGINT) it and check that
//! everything it created is gone.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use gateway_tests::{gateway_process::gateway_bin, harness::require_root};

/// The xtask binary: `$XTASK_BIN` (set by `cargo xtask test`), else built here.
fn xtask_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("XTASK_BIN") {
        return PathBuf::from(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "xtask"])
        .current_dir(&root)
        .status()
        .expect("cargo build -p xtask");
    assert!(status.success(), "cannot build xtask");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    target.join("debug/xtask")
}

struct Interrupt(Child);
impl Drop for Interrupt {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our child; SIGINT is what Ctrl-C sends.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A printed command and the comment line above it.
struct Printed {
    what: String,
    command: String,
}

fn run_shell(command: &str) -> (Option<i32>, String) {
    let out = Command::new("sh").args(["-c", command]).stdin(Stdio::null()).output().expect("sh");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// Starts `cargo xtask run {flag}` with the gateway under test and reads its output up to the
/// line `{name}: ready`: the running xtask (Ctrl-C on drop; its later output still read, so
/// that it can print while it cleans up), the commands it printed (with the comment line above
/// each), and everything it printed.
fn start_until_ready(flag: &str, name: &str) -> ((Interrupt, mpsc::Receiver<String>), Vec<Printed>, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = Command::new(xtask_bin())
        .args(["run", flag, "--gateway-bin"])
        .arg(gateway_bin())
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start xtask run {flag}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let running = Interrupt(child);
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = format!("{name}: ready");
    let mut printed = Vec::new();
    let mut transcript = String::new();
    let mut comment = String::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no `{ready}`; output so far:\n{transcript}"));
        transcript.push_str(&line);
        transcript.push('\n');
        if line == ready {
            break;
        }
        if let Some(c) = line.strip_prefix("# ") {
            comment = c.to_string();
        } else if let Some(cmd) = line.strip_prefix("  $ ") {
            printed.push(Printed { what: comment.clone(), command: cmd.to_string() });
        }
    }
    ((running, rx), printed, transcript)
}

#[test]
fn the_demo_prints_commands_that_work_and_ctrl_c_removes_everything() {
    require_root();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (demo, printed, transcript) = start_until_ready("--demo", "demo");
    assert!(printed.len() >= 8, "too few commands:\n{transcript}");

    let expect = |p: &Printed, ok: bool, needle: &str| {
        let (code, text) = run_shell(&p.command);
        assert!(
            (code == Some(0)) == ok && text.contains(needle),
            "{}\n$ {}\nexit {code:?}, want {} and {needle:?} in:\n{text}",
            p.what,
            p.command,
            if ok { "success" } else { "failure" }
        );
    };
    for p in &printed {
        let w = p.what.as_str();
        if w.contains("/port/3000") {
            expect(p, true, "hello from the demo app on port 3000");
        } else if w.contains("sandbox API") {
            expect(p, true, "\"service\":\"sandbox-api\"");
        } else if w.contains("Without a token") {
            expect(p, true, "AUTHENTICATION_REQUIRED");
        } else if w.contains("public preview") || w.contains("private preview") {
            expect(p, true, "hello from the demo app on port 3000");
        } else if w.contains("WebSocket") {
            // curl keeps the upgraded connection open until --max-time: exit 28.
            let (_, text) = run_shell(&p.command);
            assert!(
                text.contains("101 Switching Protocols") && text.contains("welcome to the demo app"),
                "{}\n$ {}\n{text}",
                p.what,
                p.command
            );
        } else if w.contains("Raw TCP") {
            expect(p, true, "you said: hello");
            let (_, text) = run_shell(&p.command);
            assert!(text.contains("demo app, raw TCP on port 7000"), "the app spoke first: {text}");
        } else if w.contains("kernel enforces") {
            expect(p, true, "3000");
        } else if w.contains("dropped by the kernel") {
            expect(p, false, "timed out");
        } else if w.contains("admin API on its unix socket") {
            expect(p, true, "\"name\":\"demo\"");
        } else if w.contains("Metrics") {
            expect(p, true, "gateway_dataplane_verdicts_total{hook=\"sandbox_in\"");
        } else {
            panic!("a printed command the test does not know: {}\n$ {}", p.what, p.command);
        }
    }

    drop(demo);
    assert!(!Path::new("/run/netns/gw-demo").exists(), "the demo namespace is gone");
    assert!(!Path::new("/sys/fs/bpf/gateway-demo").exists(), "the demo pins are gone");
    assert!(!root.join(".gateway-demo").exists(), "the demo directory is gone");
}

/// `cargo xtask run --fleet`, non-interactively: three gateways on one etcd, every sandbox
/// requested through every gateway (the table it prints), every printed command run as pasted;
/// Ctrl-C removes everything.
#[test]
fn the_fleet_serves_every_sandbox_through_every_gateway_and_ctrl_c_removes_everything() {
    require_root();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (fleet, printed, transcript) = start_until_ready("--fleet", "fleet");
    for host in ["host-a", "host-b", "host-c"] {
        let row = transcript
            .lines()
            .find(|l| l.trim_start().starts_with(host))
            .unwrap_or_else(|| panic!("no row for {host}:\n{transcript}"));
        assert_eq!(row.split_whitespace().skip(1).collect::<Vec<_>>(), ["200", "200", "200"], "{transcript}");
    }
    let mut revoked = false;
    for p in &printed {
        let (code, text) = run_shell(&p.command);
        let w = p.what.as_str();
        if w.contains("revoked") {
            assert!(code == Some(0) && text.contains("AUTHENTICATION_FAILED"), "{w}\n$ {}\n{text}", p.command);
            revoked = true;
        } else if w.contains("forwarded") {
            assert!(!revoked, "the commands are run in the printed order");
            assert!(
                code == Some(0) && text.contains("hello from the demo app on port 3000"),
                "{w}\n$ {}\n{text}",
                p.command
            );
        } else if w.contains("as etcd holds it") {
            assert!(code == Some(0) && text.contains("/gateway-demo/hosts/host-c"), "{w}\n$ {}\n{text}", p.command);
        } else {
            panic!("a printed command the test does not know: {w}\n$ {}", p.command);
        }
    }
    assert!(revoked, "{transcript}");
    drop(fleet);
    for ns in ["gwf-host-a", "gwf-sbx-c"] {
        assert!(!Path::new("/run/netns").join(ns).exists(), "{ns} is gone");
    }
    assert!(!Path::new("/sys/fs/bpf/gateway-fleet-a").exists(), "the pins are gone");
    assert!(!root.join(".gateway-fleet").exists(), "the fleet's directory is gone");
}
