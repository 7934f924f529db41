//! The admin credential is secure by default (the real `gateway` binary): the default admin API
//! is a unix socket of mode 0600; a TCP admin listener refuses a missing, well-known or short
//! token and a non-loopback address without `admin.allow_plaintext_remote` (exit 64 from
//! `check-config` and `serve`, naming the key, before anything is bound); `admin.token_file`
//! works and is read again at every reload.
//!
//! Run: `GATEWAY_BIN=/path/to/gateway cargo test -p gateway-tests --test admin_credentials`.

use gateway::telemetry::metrics::sum_samples;
use gateway_tests::gateway_process::{
    AdminAddr, AdminClient, GatewayProcess, TEST_TOKEN, free_port, gateway_command, run_gateway, temp_dir,
};
use std::{
    fs,
    net::TcpStream,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

/// A token a TCP admin listener accepts (64 bytes, as `openssl rand -hex 32` prints).
const FILE_TOKEN: &str = "5f0c1e2d3a4b59687f8e9dacbbcad9e8f7061524334251607f8e9dacbbcad9e8";

/// `check-config` on `text`: exit 64, and a `FILE: KEY: …` line containing `says`.
fn refused(text: &str, key: &str, says: &str) {
    let dir = temp_dir("gateway-admin-cred");
    let file = dir.path().join("gateway.toml");
    fs::write(&file, text).expect("write");
    let f = file.to_str().expect("utf-8");
    let out = run_gateway(&["check-config", "--config", f]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{text}\n{stderr}");
    let prefix = format!("{f}: {key}: ");
    assert!(
        stderr.lines().any(|l| l.starts_with(&prefix) && l.contains(says)),
        "no `{prefix}…{says}…` line for\n{text}\nin:\n{stderr}"
    );
}

fn accepted(text: &str) {
    let dir = temp_dir("gateway-admin-cred");
    let file = dir.path().join("gateway.toml");
    fs::write(&file, text).expect("write");
    let out = run_gateway(&["check-config", "--config", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_config_refuses_every_weak_admin_credential() {
    let tcp = |admin: &str, section: &str| format!("[listen]\nadmin = \"{admin}\"\n[admin]\n{section}\n");
    refused(&tcp("127.0.0.1:9901", "token = \"change-me\""), "admin.token", "\"change-me\" is a published example");
    refused(&tcp("127.0.0.1:9901", "token = \"0123456789abcdef0123456789abcde\""), "admin.token", "is 31 bytes long");
    refused(&tcp("127.0.0.1:9901", ""), "admin.token", "is required with a TCP listen.admin");
    refused(&tcp("127.0.0.1:9901", "token = \"\""), "admin.token", "is required with a TCP listen.admin");
    refused(
        &tcp("0.0.0.0:9901", &format!("token = \"{FILE_TOKEN}\"")),
        "listen.admin",
        "admin.allow_plaintext_remote = true",
    );
    // The issue's configuration: both problems.
    refused(&tcp("0.0.0.0:19999", ""), "listen.admin", "not a loopback address");
    refused(&tcp("0.0.0.0:19999", ""), "admin.token", "is required");

    let dir = temp_dir("gateway-admin-cred-files");
    let missing = dir.path().join("absent");
    let empty = dir.path().join("empty");
    fs::write(&empty, "\n").expect("write");
    let short = dir.path().join("short");
    fs::write(&short, "change-me\n").expect("write");
    let good = dir.path().join("good");
    fs::write(&good, format!("{FILE_TOKEN}\n")).expect("write");
    let file = |p: &Path| format!("token_file = \"{}\"", p.display());
    refused(&tcp("127.0.0.1:9901", &file(&missing)), "admin.token_file", "cannot read");
    refused(&tcp("127.0.0.1:9901", &file(&empty)), "admin.token_file", "is empty");
    refused(&tcp("127.0.0.1:9901", &file(&short)), "admin.token_file", "published example");
    refused(
        &tcp("127.0.0.1:9901", &format!("token = \"{FILE_TOKEN}\"\n{}", file(&good))),
        "admin.token_file",
        "set one of them",
    );

    accepted(&tcp("127.0.0.1:9901", &file(&good)));
    accepted(&tcp("[::1]:9901", &format!("token = \"{FILE_TOKEN}\"")));
    accepted(&tcp("0.0.0.0:9901", &format!("token = \"{FILE_TOKEN}\"\nallow_plaintext_remote = true")));
    accepted(&tcp("unix:/run/gateway/admin.sock", ""));
    accepted("");
}

#[test]
fn serve_refuses_the_issues_configuration_before_binding() {
    let dir = temp_dir("gateway-admin-cred");
    let file = dir.path().join("gateway.toml");
    let port = free_port();
    fs::write(
        &file,
        format!(
            "[listen]\nadmin = \"0.0.0.0:{port}\"\nhttps = \"127.0.0.1:{}\"\n[state]\ndir = \"{}\"\n[dataplane]\nenabled = false\n",
            free_port(),
            dir.path().join("state").display()
        ),
    )
    .expect("write");
    let f = file.to_str().expect("utf-8");
    let out = run_gateway(&["serve", "--config", f]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(&format!("{f}: admin.token: ")), "{stderr}");
    assert!(stderr.contains(&format!("{f}: listen.admin: ")), "{stderr}");
    assert!(!dir.path().join("state").exists(), "nothing was opened");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing was bound");
}

fn reloads(gw: &GatewayProcess, result: &str) -> u64 {
    sum_samples(&gw.anonymous_client().get("/metrics").text(), "gateway_config_reloads_total", &[("result", result)])
}

fn reload(gw: &GatewayProcess, result: &str) {
    let before = reloads(gw, result);
    // SAFETY: kill(2) on the test's own child.
    unsafe {
        libc::kill(gw.pid().expect("running") as libc::pid_t, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(gw, result) <= before {
        assert!(Instant::now() < deadline, "reload {result} not counted; log:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(admin: &AdminAddr, token: &str) -> u16 {
    AdminClient::new(admin.clone(), Some(token.to_string())).get("/v1/sandboxes").status
}

#[test]
fn token_file_authorizes_its_token_only_and_a_reload_reads_it_again() {
    let mut gw = GatewayProcess::start();
    gw.kill();
    let token_file = gw.dir().join("admin.token");
    fs::write(&token_file, format!("{FILE_TOKEN}\n")).expect("write the token file");
    let config = fs::read_to_string(gw.config_path()).expect("config");
    let config =
        config.replace(&format!("token = \"{TEST_TOKEN}\""), &format!("token_file = \"{}\"", token_file.display()));
    assert!(config.contains("token_file"));
    fs::write(gw.config_path(), &config).expect("write");
    gw.spawn();
    let admin = gw.admin().clone();
    assert_eq!(status(&admin, FILE_TOKEN), 200);
    assert_eq!(status(&admin, "change-me"), 401);
    assert_eq!(status(&admin, TEST_TOKEN), 401);
    assert_eq!(gw.anonymous_client().get("/v1/sandboxes").status, 401);

    // The CLI reads the same file through --config.
    let out = run_gateway(&["sandbox", "list", "--config", gw.config_path().to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Rotation: new file content, SIGHUP.
    let rotated = FILE_TOKEN.to_uppercase();
    fs::write(&token_file, &rotated).expect("rotate");
    reload(&gw, "ok");
    assert_eq!(status(&admin, &rotated), 200);
    assert_eq!(status(&admin, FILE_TOKEN), 401, "the old token is refused");

    // A file that is gone: the reload is refused and names the key; the running token serves on.
    fs::remove_file(&token_file).expect("remove");
    reload(&gw, "refused");
    assert!(gw.log().contains("admin.token_file"), "{}", gw.log());
    assert_eq!(status(&admin, &rotated), 200);

    // So is a weak token written into it.
    fs::write(&token_file, "change-me\n").expect("write");
    reload(&gw, "refused");
    assert_eq!(status(&admin, "change-me"), 401);
    assert_eq!(status(&admin, &rotated), 200);
}

#[test]
fn the_default_configuration_serves_the_admin_api_on_a_0600_unix_socket() {
    let out = run_gateway(&["print-default-config"]);
    assert!(out.status.success());
    let default = String::from_utf8(out.stdout).expect("utf-8");
    assert!(default.contains("admin = \"unix:/run/gateway/admin.sock\"\n"), "{default}");
    assert!(!default.contains("change-me\"\n"), "no example token is a value:\n{default}");

    // The defaults, moved only where a test must not collide with a real gateway.
    let dir = temp_dir("gateway-admin-default");
    let socket = dir.path().join("run/gateway/admin.sock");
    let https_port = free_port();
    let text = default
        .replace("admin = \"unix:/run/gateway/admin.sock\"", &format!("admin = \"unix:{}\"", socket.display()))
        .replace("https = \"0.0.0.0:443\"", &format!("https = \"127.0.0.1:{https_port}\""))
        .replace("dir = \"/var/lib/gateway\"", &format!("dir = \"{}\"", dir.path().join("state").display()))
        .replace("enabled = true", "enabled = false");
    let config = dir.path().join("gateway.toml");
    fs::write(&config, &text).expect("write");
    let c = config.to_str().expect("utf-8");
    let out = run_gateway(&["check-config", "--config", c]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let log = fs::File::create(dir.path().join("gateway.log")).expect("log");
    let mut child = gateway_command()
        .args(["serve", "--config", c])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn");
    let show_log = || fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
    let admin = AdminAddr::Unix(socket.clone());
    let anonymous = AdminClient::new(admin, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while anonymous.request("GET", "/live", &[], None).map(|r| r.status).ok() != Some(200) {
        assert!(child.try_wait().expect("wait").is_none(), "exited:\n{}", show_log());
        assert!(Instant::now() < deadline, "no admin socket:\n{}", show_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let meta = fs::metadata(&socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    let parent = fs::metadata(socket.parent().expect("parent")).expect("dir");
    assert_eq!(parent.permissions().mode() & 0o777, 0o700, "directory mode");
    // The documented way: the CLI with --config (file permissions are the credential).
    assert_eq!(anonymous.get("/v1/sandboxes").status, 200);
    let out = run_gateway(&["sandbox", "list", "--config", c]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), show_log());
    let _ = child.kill();
    let _ = child.wait();

    // Without --config, --admin or /etc/gateway/gateway.toml, the CLI looks for the default socket.
    if !Path::new("/etc/gateway/gateway.toml").exists() && !Path::new("/run/gateway/admin.sock").exists() {
        let out = run_gateway(&["sandbox", "list"]);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("unix:/run/gateway/admin.sock"), "{stderr}");
    }
}
