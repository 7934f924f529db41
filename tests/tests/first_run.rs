//! The first five minutes: `gateway serve --dev` needs no configuration file, says where it
//! listens, where its state and development CA are, and prints commands that work as pasted
//! (`curl --cacert … --resolve …`, the metrics over the admin socket).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use gateway_tests::{gateway_process::*, harness::require_root};

const DEV_BPFFS: &str = "/sys/fs/bpf/gateway-dev";

#[test]
fn serve_dev_needs_nothing_and_prints_commands_that_work() {
    require_root();
    let dir = temp_dir("gateway-first-run");
    let state = dir.path().join("state");
    let pins_existed = Path::new(DEV_BPFFS).exists();
    let mut child = gateway_command()
        .args(["serve", "--dev"])
        .env("GATEWAY_STATE_DIR", &state)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gateway serve --dev");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !banner.contains("cargo xtask run --demo") {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        match line {
            Ok(l) => {
                banner.push_str(&l);
                banner.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no banner; got:\n{banner}");
            }
        }
    }
    let ca = state.join("tls/ca.pem");
    for want in [
        "https://127.0.0.1:8443",
        &format!("unix:{}", state.join("admin.sock").display()),
        &ca.display().to_string(),
        DEV_BPFFS,
    ] {
        assert!(banner.contains(want), "{want} missing from the banner:\n{banner}");
    }
    assert!(ca.is_file(), "the CA the banner names exists");

    let run = |line: &str| {
        let out = Command::new("sh").args(["-c", line]).output().expect("sh");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    // The curl line as printed (a token placeholder filled in): TLS verified against the CA,
    // the host resolved by --resolve, and the gateway's JSON answer (no such sandbox yet).
    let curl = banner.lines().map(str::trim).find(|l| l.starts_with("curl --cacert")).expect("a curl line");
    let text = run(&curl.replace("<TOKEN>", "not-a-token"));
    assert!(text.contains("WORKLOAD_NOT_FOUND"), "{curl}\n{text}");
    let metrics = banner.lines().map(str::trim).find(|l| l.starts_with("curl --unix-socket")).expect("a metrics line");
    let text = run(metrics);
    assert!(text.contains("gateway_dataplane_up 1"), "{metrics}\n{text}");
    // The CLI lines name the binary by its path.
    assert!(
        banner.contains(&format!("{} token create acme me", gateway_bin().canonicalize().expect("bin").display())),
        "{banner}"
    );

    // SAFETY: kill(2) of our child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    if !pins_existed {
        let _ = run_gateway(&["dataplane", "teardown", "--bpffs", DEV_BPFFS]);
    }
}
