//! What a security review broke (issue 16), each through the binary against the simulator:
//! files created fresh and private whatever was there before, the ledger never taken through a
//! link or an alias, never written over by its own export, no proxy or redirect on the way to
//! the endpoint, and no terminal control sequence or spreadsheet formula from untrusted text.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use mqtt_provision::sim::{SimConfig, SimHandle};

const FAST: &[&str] = &["--account-qps", "3000", "--ip-qps", "3000"];
const BIN: &str = env!("CARGO_BIN_EXE_mqtt-provision");

fn fast() -> SimConfig {
    SimConfig {
        account_qps: 5000,
        ip_qps: 5000,
        ..SimConfig::default()
    }
}

/// The binary with `args` in `dir` and `env` added, the simulator's key in its environment, off
/// the test's runtime thread (the in-process simulator keeps serving meanwhile); (exit code,
/// stdout, stderr).
async fn binary_env(
    dir: &Path,
    sim: Option<&SimHandle>,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut c = std::process::Command::new(BIN);
    c.args(args).current_dir(dir).env("HOME", dir);
    for proxy in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        c.env_remove(proxy);
    }
    c.envs(env.iter().copied());
    if let Some(sim) = sim {
        c.env("ALIBABA_CLOUD_ACCESS_KEY_ID", &sim.keys[0].id).env(
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
            sim.keys[0].secret.expose(),
        );
    }
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn binary(dir: &Path, sim: Option<&SimHandle>, args: &[&str]) -> (i32, String, String) {
    binary_env(dir, sim, args, &[]).await
}

/// `register` of `n` devices into `ledger` (in `dir`), through the binary; its exit code.
async fn register(dir: &Path, sim: &SimHandle, name: &str, n: usize, ledger: &str) -> i32 {
    let csv = devices_csv(dir, name, n);
    let endpoint = sim.endpoint();
    let mut args = vec![
        "register",
        csv.to_str().unwrap(),
        "--ledger",
        ledger,
        "--instance-id",
        &sim.instance_id,
        "--endpoint",
        &endpoint,
        "--quiet",
    ];
    args.extend_from_slice(FAST);
    let (code, out, err) = binary(dir, Some(sim), &args).await;
    if code != 0 {
        eprintln!("register {ledger}: exit {code}: {out}{err}");
    }
    code
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn side(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Item 1: an export onto an existing world-readable file writes a fresh 0600 file in place of
/// the name (the old mode is not kept); onto a symbolic link, a device or a pipe it is refused
/// (exit 2) and the link's target is untouched (renaming over `/dev/stdout` or `/dev/null`, as
/// root, would break the system).
#[tokio::test]
async fn exports_replace_an_existing_file_and_refuse_a_link() {
    let sim = simulator(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(register(dir.path(), &sim, "files", 5, "l.sqlite").await, 0);

    let open = dir.path().join("credentials.csv");
    std::fs::write(&open, "old\n").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = binary(
        dir.path(),
        None,
        &["export", "--ledger", "l.sqlite", "--out", "credentials.csv"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::symlink_metadata(&open)
            .unwrap()
            .file_type()
            .is_file()
    );
    assert_eq!(mode(&open), 0o600);
    let text = std::fs::read_to_string(&open).unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");

    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "not yours\n").unwrap();
    let link = dir.path().join("link.csv");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    for out in ["link.csv", "/dev/null"] {
        let (code, _, err) = binary(
            dir.path(),
            None,
            &["export", "--ledger", "l.sqlite", "--out", out],
        )
        .await;
        assert_eq!(code, 2, "{out}: {err}");
    }
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "not yours\n");
    assert!(
        std::fs::symlink_metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );

    // `cert list --out` the same way (no certificates: a header only, but a fresh 0600 file).
    let list = dir.path().join("certs.csv");
    std::fs::write(&list, "old\n").unwrap();
    std::fs::set_permissions(&list, std::fs::Permissions::from_mode(0o666)).unwrap();
    let endpoint = sim.endpoint();
    let (code, _, err) = binary(
        dir.path(),
        Some(&sim),
        &[
            "cert",
            "list",
            "--instance-id",
            &sim.instance_id,
            "--endpoint",
            &endpoint,
            "--out",
            list.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode(&list), 0o600);
    assert!(!std::fs::read_to_string(&list).unwrap().contains("old"));
    let (code, _, err) = binary(
        dir.path(),
        Some(&sim),
        &[
            "cert",
            "list",
            "--instance-id",
            &sim.instance_id,
            "--endpoint",
            &endpoint,
            "--out",
            "link.csv",
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "not yours\n");
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".partial")), "{names:?}");
}

/// Item 1: a ledger (and its side files) found world-readable is made 0600 before anything is
/// written; a ledger that is a symbolic link, or not a regular file, is refused (exit 2) and its
/// target is left alone.
#[tokio::test]
async fn a_ledger_is_made_private_and_never_taken_through_a_link() {
    let sim = simulator(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("N.sqlite");
    assert_eq!(register(dir.path(), &sim, "a", 3, "N.sqlite").await, 0);
    for f in [ledger.clone(), side(&ledger, "-wal"), side(&ledger, "-shm")] {
        if !f.exists() {
            std::fs::write(&f, "").unwrap();
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    assert_eq!(register(dir.path(), &sim, "b", 3, "N.sqlite").await, 0);
    for f in [ledger.clone(), side(&ledger, ".lock")] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    for suffix in ["-wal", "-shm"] {
        let f = side(&ledger, suffix);
        if f.exists() {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }

    let link = dir.path().join("alias.sqlite");
    std::os::unix::fs::symlink(&ledger, &link).unwrap();
    let before = std::fs::read(&ledger).unwrap();
    for args in [
        vec!["status", "--ledger", "alias.sqlite"],
        vec!["export", "--ledger", "alias.sqlite", "--out", "x.csv"],
    ] {
        let (code, out, err) = binary(dir.path(), None, &args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("symbolic link"), "{err}");
    }
    assert_eq!(register(dir.path(), &sim, "c", 3, "alias.sqlite").await, 2);
    assert_eq!(
        std::fs::read(&ledger).unwrap(),
        before,
        "the target is untouched"
    );
    assert!(!dir.path().join("x.csv").exists());

    // A directory is not a ledger.
    std::fs::create_dir(dir.path().join("d.sqlite")).unwrap();
    let (code, _, err) = binary(dir.path(), None, &["status", "--ledger", "d.sqlite"]).await;
    assert_eq!(code, 2, "{err}");
}

/// Item 1: a ledger planted by another user is refused, whatever its mode (needs root to plant
/// a file owned by someone else; as another user the test plants nothing and checks nothing).
#[tokio::test]
async fn a_ledger_of_another_user_is_refused() {
    let sim = simulator(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("planted.sqlite");
    assert_eq!(
        register(dir.path(), &sim, "p", 2, "planted.sqlite").await,
        0
    );
    let planted = std::ffi::CString::new(ledger.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; chown has no other precondition.
    if unsafe { libc::chown(planted.as_ptr(), 65534, 65534) } != 0 {
        eprintln!("not root: cannot plant another user's file; skipped");
        return;
    }
    std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [
        vec!["status", "--ledger", "planted.sqlite"],
        vec!["export", "--ledger", "planted.sqlite", "--out", "x.csv"],
    ] {
        let (code, out, err) = binary(dir.path(), None, &args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("belongs to another user"), "{err}");
    }
    assert_eq!(
        register(dir.path(), &sim, "q", 2, "planted.sqlite").await,
        2
    );
    assert_eq!(std::fs::metadata(&ledger).unwrap().uid(), 65534);
}

/// Item 2: `export --out` naming the ledger (directly, through a link, or a side file) is
/// refused and the ledger keeps every secret; `status` and `export` never create a ledger.
#[tokio::test]
async fn an_export_onto_the_ledger_is_refused_and_reading_commands_never_create_one() {
    let sim = simulator(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        register(dir.path(), &sim, "own", 4, "provision.sqlite").await,
        0
    );
    std::os::unix::fs::symlink("provision.sqlite", dir.path().join("to-ledger.csv")).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    for out in [
        "provision.sqlite",
        "./sub/../provision.sqlite",
        "to-ledger.csv",
        "provision.sqlite-wal",
        "provision.sqlite-shm",
    ] {
        let (code, _, err) = binary(
            dir.path(),
            None,
            &["export", "--ledger", "provision.sqlite", "--out", out],
        )
        .await;
        assert_eq!(code, 2, "--out {out}: {err}");
        assert!(err.contains("is the ledger"), "{err}");
    }
    let (code, out, err) = binary(
        dir.path(),
        None,
        &["export", "--ledger", "provision.sqlite"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 5, "every secret is still there: {out}");

    // Missing or empty: an error, exit 2, and no file appears or gains a schema.
    for args in [
        vec!["status", "--ledger", "missing.sqlite"],
        vec!["export", "--ledger", "missing.sqlite"],
        vec![
            "show",
            "--ledger",
            "missing.sqlite",
            "GID_test@@@own-000000",
        ],
    ] {
        let (code, _, err) = binary(dir.path(), None, &args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(!dir.path().join("missing.sqlite").exists(), "{args:?}");
    }
    std::fs::write(dir.path().join("empty.sqlite"), "").unwrap();
    for args in [
        vec!["status", "--ledger", "empty.sqlite"],
        vec!["export", "--ledger", "empty.sqlite"],
    ] {
        let (code, _, err) = binary(dir.path(), None, &args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("empty"), "{err}");
        assert_eq!(
            std::fs::metadata(dir.path().join("empty.sqlite"))
                .unwrap()
                .len(),
            0
        );
    }
}

/// Item 3: a second worker reaching a running worker's ledger through another name (a hard
/// link, a symbolic link) is refused, so a re-issuing server never issues a second credential.
#[tokio::test]
async fn a_second_worker_through_an_alias_of_the_ledger_is_refused() {
    let sim = simulator(SimConfig {
        dup_mode: mqtt_provision::sim::DupMode::Reissue,
        ..fast()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let n = 1500;
    let csv = devices_csv(dir.path(), "alias", n);
    let endpoint = sim.endpoint();
    let args = |ledger: &str| -> Vec<String> {
        [
            "register",
            csv.to_str().unwrap(),
            "--ledger",
            ledger,
            "--instance-id",
            &sim.instance_id,
            "--endpoint",
            &endpoint,
            "--quiet",
            "--account-qps",
            "1000",
            "--ip-qps",
            "1000",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let mut first = std::process::Command::new(BIN);
    first
        .args(args("N.sqlite"))
        .current_dir(dir.path())
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", &sim.keys[0].id)
        .env(
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
            sim.keys[0].secret.expose(),
        );
    let first = tokio::task::spawn_blocking(move || first.output().unwrap());
    let ledger = dir.path().join("N.sqlite");
    let lock = side(&ledger, ".lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !(ledger.exists() && lock.exists()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    std::fs::hard_link(&ledger, dir.path().join("hard.sqlite")).unwrap();
    std::os::unix::fs::symlink("N.sqlite", dir.path().join("soft.sqlite")).unwrap();
    for alias in ["hard.sqlite", "soft.sqlite"] {
        let a = args(alias);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, out, err) = binary(dir.path(), Some(&sim), &a).await;
        assert_eq!(code, 2, "{alias}: {out}{err}");
    }
    let (code, err) = {
        let out = first.await.unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(
        sim.stats().credentials.duplicates.is_empty(),
        "{} devices got a second credential",
        sim.stats().credentials.duplicates.len()
    );
    assert_eq!(sim.stats().credentials.issued_total, n as u64);
    // The first worker saw the hard link appear only after it had opened its ledger: it ran on.
    assert_eq!(code, Some(0), "{err}");
}

/// A port on which nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Item 4: proxy variables never apply to a loopback endpoint: with every one of them pointing
/// at a closed port, a rehearsal and a run against a loopback simulator still succeed.
#[tokio::test]
async fn proxy_variables_never_apply_to_a_loopback_endpoint() {
    let sim = simulator(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = devices_csv(dir.path(), "proxied", 3);
    let proxy = format!("http://127.0.0.1:{}", closed_port());
    let env: Vec<(&str, &str)> = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .into_iter()
        .map(|k| (k, proxy.as_str()))
        .collect();
    let (code, out, err) = binary_env(
        dir.path(),
        None,
        &["register", csv.to_str().unwrap(), "--simulate", "--quiet"],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let endpoint = sim.endpoint();
    let (code, out, err) = binary_env(
        dir.path(),
        Some(&sim),
        &[
            "register",
            csv.to_str().unwrap(),
            "--ledger",
            "real.sqlite",
            "--instance-id",
            &sim.instance_id,
            "--endpoint",
            &endpoint,
            "--quiet",
        ],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(sim.stats().credentials.issued_total, 3);
}

/// A one-shot HTTP server on 127.0.0.1: answers every request with `response`; counts requests.
struct RawServer {
    port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RawServer {
    fn start(response: Vec<u8>) -> RawServer {
        Self::start_on("127.0.0.1", response)
    }

    fn start_on(host: &str, response: Vec<u8>) -> RawServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind((host, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let response = response.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    let _ = stream.read(&mut buf);
                    let _ = stream.write_all(&response);
                });
            }
        });
        RawServer { port, requests }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn client_of(endpoint: &str) -> mqtt_provision::api::OnsMqttClient {
    use mqtt_provision::api::{AccessKey, ClientConfig, Endpoint, OnsMqttClient};
    let mut key = AccessKey::new("LTAI-hardening", "the-secret");
    key.security_token = Some(mqtt_provision::secret::Secret::new("STS-TOKEN-hardening"));
    let mut config = ClientConfig::new(Endpoint::parse(endpoint).unwrap());
    config.read_timeout = std::time::Duration::from_secs(2);
    OnsMqttClient::new(config, key).unwrap()
}

/// Item 5: a redirect is an error naming where it pointed (without the query it may echo); it
/// is not followed, so the signed headers never reach the other host.
#[tokio::test]
async fn a_redirect_is_an_error_and_never_followed() {
    let elsewhere = RawServer::start_on(
        "127.0.0.2",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
    );
    let location = format!("http://127.0.0.2:{}/steal?Signature=abc", elsewhere.port);
    let redirecting = RawServer::start(
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .into_bytes(),
    );
    let client = client_of(&redirecting.endpoint());
    let e = client
        .send(&mqtt_provision::api::request::get_register_code(
            "MQTT_TEST",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, "Redirected", "{e}");
    assert_eq!(e.class, mqtt_provision::api::ErrorClass::Fatal);
    let shown = e.to_string();
    assert!(
        shown.contains(&format!("127.0.0.2:{}/steal", elsewhere.port)),
        "{shown}"
    );
    assert!(!shown.contains("Signature"), "{shown}");
    assert_eq!(elsewhere.requests(), 0, "the redirect was followed");

    // Through the binary: a single call halts (exit 3) and says where it was sent.
    let dir = tempfile::tempdir().unwrap();
    let endpoint = redirecting.endpoint();
    let (code, _, err) = binary_env(
        dir.path(),
        None,
        &[
            "ca",
            "register-code",
            "--instance-id",
            "MQTT_TEST",
            "--endpoint",
            &endpoint,
        ],
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-hardening"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "the-secret"),
        ],
    )
    .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("redirected to"), "{err}");
    assert_eq!(elsewhere.requests(), 0);
}

/// Item 8: an answer's body is read up to 1 MiB and no further, and a server's `Message` is kept
/// to 1 KiB.
#[tokio::test]
async fn answers_and_messages_from_the_server_are_bounded() {
    let huge = vec![b'x'; 8 << 20];
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        huge.len()
    )
    .into_bytes();
    response.extend_from_slice(&huge);
    let big = RawServer::start(response);
    let e = client_of(&big.endpoint())
        .send(&mqtt_provision::api::request::get_register_code(
            "MQTT_TEST",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, "Response.TooLarge", "{e}");

    // Chunked, with no length declared: cut as soon as it crosses the bound.
    let mut chunked =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 << 10).as_bytes());
        chunked.extend_from_slice(&vec![b'y'; 64 << 10]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let streamed = RawServer::start(chunked);
    let e = client_of(&streamed.endpoint())
        .send(&mqtt_provision::api::request::get_register_code(
            "MQTT_TEST",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, "Response.TooLarge", "{e}");

    let message = "m".repeat(100_000);
    let body = format!(r#"{{"Code":"Odd","Message":"{message}","RequestId":"R"}}"#);
    let long = RawServer::start(
        format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    );
    let e = client_of(&long.endpoint())
        .send(&mqtt_provision::api::request::get_register_code(
            "MQTT_TEST",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, "Odd");
    assert!(
        e.message.len() <= 1024 + 4,
        "{} bytes kept",
        e.message.len()
    );
}

/// The bytes a terminal would act on: ESC, BEL, CSI (C1), carriage return.
fn plays_on_a_terminal(text: &str) -> bool {
    text.contains(['\u{1b}', '\u{7}', '\u{9b}', '\r'])
}

/// Item 6: control sequences in the input or in the server's Code, Message and RequestId are
/// shown escaped in the summary, `status`, `HALTED:` and `error:` lines, never played.
#[tokio::test]
async fn control_sequences_from_the_input_or_the_server_never_reach_the_terminal() {
    let sim = simulator(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("evil.csv");
    std::fs::write(
        &csv,
        "client_id\nGID_test@@@ok-1\n\"GID_test@@@\u{1b}]0;pwned\u{7}x\"\n\"GID_test@@@y\r\u{1b}[2K  all registered\"\n\u{9b}31mred\n",
    )
    .unwrap();
    let endpoint = sim.endpoint();
    let run = [
        "register",
        csv.to_str().unwrap(),
        "--ledger",
        "l.sqlite",
        "--instance-id",
        &sim.instance_id,
        "--endpoint",
        &endpoint,
    ];
    let (code, out, err) = binary(dir.path(), Some(&sim), &run).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        !plays_on_a_terminal(&out) && !plays_on_a_terminal(&err),
        "{out:?}{err:?}"
    );
    let (code, out, err) = binary(dir.path(), None, &["status", "--ledger", "l.sqlite"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!plays_on_a_terminal(&out), "{out:?}");

    // The server's words: a fatal code and a message full of sequences halt a run.
    let body = r#"{"Code":"Forbidden\u001b]0;pwned\u0007","Message":"\u001b[2J\r  every device registered","RequestId":"R\u001b[1A"}"#;
    let evil = RawServer::start(
        format!(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    );
    let endpoint = evil.endpoint();
    let good = devices_csv(dir.path(), "good", 2);
    let (code, out, err) = binary(
        dir.path(),
        Some(&sim),
        &[
            "register",
            good.to_str().unwrap(),
            "--ledger",
            "evil.sqlite",
            "--instance-id",
            &sim.instance_id,
            "--endpoint",
            &endpoint,
        ],
    )
    .await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("HALTED") || err.contains("HALTED"),
        "{out}{err}"
    );
    assert!(
        !plays_on_a_terminal(&out) && !plays_on_a_terminal(&err),
        "{out:?}{err:?}"
    );
    let (_, out, err) = binary(dir.path(), None, &["status", "--ledger", "evil.sqlite"]).await;
    assert!(
        !plays_on_a_terminal(&out) && !plays_on_a_terminal(&err),
        "{out:?}{err:?}"
    );
    let (code, out, err) = binary(
        dir.path(),
        Some(&sim),
        &[
            "ca",
            "register-code",
            "--instance-id",
            &sim.instance_id,
            "--endpoint",
            &endpoint,
        ],
    )
    .await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("error: GetRegisterCode: Forbidden\\u{1b}"),
        "{err}"
    );
    assert!(
        !plays_on_a_terminal(&out) && !plays_on_a_terminal(&err),
        "{out:?}{err:?}"
    );
}

/// `command` (`register`, `rotate` …) of the devices in `csv` into `ledger`, through the binary.
async fn bulk(dir: &Path, sim: &SimHandle, command: &str, csv: &Path, ledger: &str) -> i32 {
    let endpoint = sim.endpoint();
    let mut args = vec![
        command,
        csv.to_str().unwrap(),
        "--ledger",
        ledger,
        "--instance-id",
        &sim.instance_id,
        "--endpoint",
        &endpoint,
        "--quiet",
    ];
    args.extend_from_slice(FAST);
    let (code, out, err) = binary(dir, Some(sim), &args).await;
    if code != 0 {
        eprintln!("{command} {ledger}: exit {code}: {out}{err}");
    }
    code
}

/// Item 10: after a clean exit the ledger file alone is the whole ledger (its log is folded in),
/// and a ledger nobody may write can still be inspected.
#[tokio::test]
async fn a_ledger_after_a_clean_exit_is_whole_in_its_file_and_readable_read_only() {
    let sim = simulator(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("provision.sqlite");
    assert_eq!(
        register(dir.path(), &sim, "whole", 20, "provision.sqlite").await,
        0
    );
    let wal = side(&ledger, "-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "the log was folded into the file at exit"
    );
    let backup = tempfile::tempdir().unwrap();
    std::fs::copy(&ledger, backup.path().join("copy.sqlite")).unwrap();
    let (code, out, err) =
        binary(backup.path(), None, &["export", "--ledger", "copy.sqlite"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().count(),
        21,
        "the copy alone holds every credential"
    );

    // Read-only: a file its owner may not write, in a directory nobody may write.
    let ro = backup.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::copy(&ledger, ro.join("l.sqlite")).unwrap();
    let before = std::fs::read(ro.join("l.sqlite")).unwrap();
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        // Root writes whatever the mode says: the inspection runs as nobody, who owns the copy.
        for p in [backup.path(), &ro, &ro.join("l.sqlite")] {
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        }
    }
    std::fs::set_permissions(ro.join("l.sqlite"), std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let inspect = |args: &[&str]| {
        let mut c = std::process::Command::new(BIN);
        c.args(args).current_dir(backup.path());
        if as_root {
            std::os::unix::process::CommandExt::uid(&mut c, 65534);
            std::os::unix::process::CommandExt::gid(&mut c, 65534);
        }
        async move {
            let out = tokio::task::spawn_blocking(move || c.output().unwrap())
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, out, err) = inspect(&["status", "--ledger", "ro/l.sqlite"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("20 targets: registered 20"), "{out}");
    let (code, out, err) = inspect(&["export", "--ledger", "ro/l.sqlite"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.lines().count(), 21, "{out}");
    assert!(err.contains("read-only"), "{err}");
    assert_eq!(std::fs::read(ro.join("l.sqlite")).unwrap(), before);
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Item 10: secrets cleared from the ledger (`ledger purge` after a rotation) are not left
/// readable anywhere in its file. (`purge` rewrites the file, so this held before `secure_delete`
/// too; `secure_delete` covers the secrets cleared without a rewrite, such as an exported
/// rotation's previous secret, which no command can show apart from its copy in the history.)
#[tokio::test]
async fn cleared_secrets_do_not_linger_in_the_ledger_file() {
    let sim = simulator(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = devices_csv(dir.path(), "purged", 30);
    assert_eq!(
        bulk(dir.path(), &sim, "register", &csv, "l.sqlite").await,
        0
    );
    let first = simulator_credentials(&sim);
    assert_eq!(first.len(), 30);
    assert_eq!(bulk(dir.path(), &sim, "rotate", &csv, "l.sqlite").await, 0);
    let (code, _, err) = binary(
        dir.path(),
        None,
        &["ledger", "purge", "--ledger", "l.sqlite"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let mut bytes = std::fs::read(dir.path().join("l.sqlite")).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("l.sqlite-wal")) {
        bytes.extend(wal);
    }
    let lingering = first
        .values()
        .filter(|(_, secret)| bytes.windows(secret.len()).any(|w| w == secret.as_bytes()))
        .count();
    assert_eq!(
        lingering, 0,
        "{lingering} of 30 replaced secrets are still in the file"
    );
    let now = simulator_credentials(&sim);
    let kept = now
        .values()
        .filter(|(_, secret)| bytes.windows(secret.len()).any(|w| w == secret.as_bytes()))
        .count();
    assert_eq!(kept, 30, "the current secrets are kept");
}

/// Item 7: `export --failures` as CSV (read by people in a spreadsheet) never holds a cell a
/// spreadsheet would evaluate; the JSON export keeps the values as they were.
#[tokio::test]
async fn a_failures_csv_holds_no_formula() {
    let sim = simulator(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("formulas.csv");
    std::fs::write(
        &csv,
        "client_id\nGID_test@@@fine-1\n\"=HYPERLINK(\"\"http://evil.example/\"\",\"\"click\"\")\"\n\"+cmd|' /C calc'!A0\"\n@SUM(1+1)\n-2+3\n\"\t=1\"\n",
    )
    .unwrap();
    assert_eq!(
        bulk(dir.path(), &sim, "register", &csv, "l.sqlite").await,
        1
    );
    let (code, _, err) = binary(
        dir.path(),
        None,
        &[
            "export",
            "--failures",
            "--ledger",
            "l.sqlite",
            "--out",
            "failures.csv",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(dir.path().join("failures.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut rows = 0;
    for record in reader.records() {
        let record = record.unwrap();
        rows += 1;
        for cell in record.iter() {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "a formula cell: {cell:?} in {text}"
            );
        }
    }
    assert_eq!(rows, 5, "{text}");
    assert!(text.contains("'=HYPERLINK"), "{text}");
    let (code, json, err) = binary(
        dir.path(),
        None,
        &[
            "export",
            "--failures",
            "--ledger",
            "l.sqlite",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        json.contains("\"=HYPERLINK("),
        "JSON keeps the value: {json}"
    );
}

/// This machine's address on its network, if it has one (no packet is sent: a UDP socket only
/// learns which source address a route would use).
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

async fn get_status(url: String) -> u16 {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client.get(url).send().await.unwrap().status().as_u16()
}

/// Item 9: `/__sim/*` (the registry, every secret in it) is served to loopback clients only,
/// and `simulate` warns when it listens beyond loopback.
#[tokio::test]
async fn the_simulators_introspection_is_for_loopback_clients_only() {
    let Some(own) = non_loopback_address() else {
        eprintln!("no non-loopback address on this machine; skipped");
        return;
    };
    let sim = simulator(SimConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..fast()
    })
    .await;
    let port = sim.addr.port();
    for path in ["/__sim/credentials", "/__sim/stats"] {
        assert_eq!(
            get_status(format!("http://{own}:{port}{path}")).await,
            403,
            "{path}"
        );
        assert_eq!(
            get_status(format!("http://127.0.0.1:{port}{path}")).await,
            200,
            "{path}"
        );
    }

    let mut child = std::process::Command::new(BIN)
        .args(["simulate", "--listen", "0.0.0.0:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(line.contains("simulator listening"), "{line}");
    assert!(
        err.contains("warning: the simulator listens on 0.0.0.0"),
        "{err}"
    );
}

/// Item 9: a connection that sends nothing, or half a header, is closed after the header
/// timeout; past the connection cap, a new client waits for a slot and is then served.
#[tokio::test]
async fn the_simulator_closes_silent_connections_and_caps_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let timeout = std::time::Duration::from_millis(600);
    let sim = simulator(SimConfig {
        header_timeout: timeout,
        max_connections: 4,
        ..fast()
    })
    .await;
    let started = std::time::Instant::now();
    let mut silent = Vec::new();
    for i in 0..4 {
        let mut c = tokio::net::TcpStream::connect(sim.addr).await.unwrap();
        if i % 2 == 1 {
            c.write_all(b"GET /__sim/stats HTTP/1.1\r\nhost: x\r\n")
                .await
                .unwrap();
        }
        silent.push(c);
    }
    // A fifth client, past the cap: served once a silent one was closed.
    let url = format!("http://{}/__sim/stats", sim.addr);
    let stats = tokio::spawn(async move { (get_status(url).await, started.elapsed()) });
    for mut c in silent {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the silent connection was closed");
        assert!(
            matches!(read, Ok(0) | Err(_)) || buf.starts_with(b"HTTP/1.1 408"),
            "closed without an answer, or with 408: {read:?}"
        );
    }
    let (status, served_after) = stats.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        served_after >= timeout.mul_f64(0.8),
        "the fifth waited for a slot: served after {served_after:?}"
    );
    assert!(
        served_after < std::time::Duration::from_secs(5),
        "{served_after:?}"
    );
}

/// A server that accepts connections and never answers.
fn hanging_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    port
}

/// Item 8: the single-call commands honour the first Ctrl-C: exit 130 at once, even while a
/// call hangs.
#[tokio::test]
async fn single_calls_stop_on_the_first_interrupt() {
    let endpoint = format!("http://127.0.0.1:{}", hanging_server());
    let dir = tempfile::tempdir().unwrap();
    for command in [
        &["ca", "register-code"][..],
        &["cert", "list", "--out", "certs.csv"][..],
    ] {
        let mut child = std::process::Command::new(BIN)
            .args(command)
            .args(["--instance-id", "MQTT_TEST", "--endpoint", &endpoint])
            .current_dir(dir.path())
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-hardening")
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "the-secret")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "{command:?} still waits"
        );
        let sent = std::time::Instant::now();
        // SAFETY: a child of this process, still running.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(130), "{command:?}");
        assert!(
            sent.elapsed() < std::time::Duration::from_secs(2),
            "{command:?}"
        );
        assert!(
            !dir.path().join("certs.csv").exists(),
            "no half list in place"
        );
    }
}

/// Item 11: an endpoint with a user name and password, a path or a query is refused before
/// anything is written (no ledger, so no run history keeps it) and the password is not
/// repeated; a progress interval too small to pace anything is refused, not a panic.
#[tokio::test]
async fn endpoints_with_userinfo_and_absurd_intervals_are_refused() {
    let sim = simulator(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = devices_csv(dir.path(), "small", 2);
    let port = sim.addr.port();
    for endpoint in [
        format!("http://user:hunter2@127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}/path"),
        format!("http://127.0.0.1:{port}/?Action=x"),
    ] {
        let (code, out, err) = binary(
            dir.path(),
            Some(&sim),
            &[
                "register",
                csv.to_str().unwrap(),
                "--ledger",
                "l.sqlite",
                "--instance-id",
                &sim.instance_id,
                "--endpoint",
                &endpoint,
            ],
        )
        .await;
        assert_eq!(code, 2, "{endpoint}: {out}{err}");
        assert!(
            !err.contains("hunter2") && !out.contains("hunter2"),
            "{err}"
        );
        assert!(err.contains("--endpoint"), "{err}");
        assert!(!dir.path().join("l.sqlite").exists(), "{endpoint}");
    }
    let (code, _, err) = binary_env(
        dir.path(),
        Some(&sim),
        &["ca", "register-code", "--instance-id", &sim.instance_id],
        &[(
            "MQTT_PROVISION_ENDPOINT",
            &format!("http://u:hunter2@127.0.0.1:{port}"),
        )],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let endpoint = sim.endpoint();
    let (code, _, err) = binary(
        dir.path(),
        Some(&sim),
        &[
            "register",
            csv.to_str().unwrap(),
            "--ledger",
            "l.sqlite",
            "--instance-id",
            &sim.instance_id,
            "--endpoint",
            &endpoint,
            "--json",
            "--progress-interval",
            "1e-10",
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// An empty file given to a run (`touch provision.sqlite`) is still a ledger to be: the run
/// gives it its schema; only the reading commands refuse it.
#[tokio::test]
async fn a_run_gives_an_empty_file_its_schema() {
    let sim = simulator(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("touched.sqlite"), "").unwrap();
    assert_eq!(
        register(dir.path(), &sim, "touched", 2, "touched.sqlite").await,
        0
    );
    let (code, out, err) =
        binary(dir.path(), None, &["status", "--ledger", "touched.sqlite"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 targets: registered 2"), "{out}");
}

/// Item 1, the simulator's files: its journal (a rehearsal's `rehearsal.sqlite.simulator`, every
/// simulated secret) is made 0600 and never taken through a link; `--dump-credentials` onto a
/// link is refused (exit 3), leaving its target alone.
#[tokio::test]
async fn the_simulators_secret_files_are_private_and_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let csv = devices_csv(dir.path(), "rehearsed", 2);
    let rehearse = ["register", csv.to_str().unwrap(), "--simulate", "--quiet"];
    assert_eq!(binary(dir.path(), None, &rehearse).await.0, 0);
    let journal = dir.path().join("rehearsal.sqlite.simulator");
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o644)).unwrap();
    let more = devices_csv(dir.path(), "more", 2);
    let again = ["register", more.to_str().unwrap(), "--simulate", "--quiet"];
    let (code, out, err) = binary(dir.path(), None, &again).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(mode(&journal), 0o600);

    let elsewhere = dir.path().join("elsewhere");
    std::fs::rename(&journal, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &journal).unwrap();
    let before = std::fs::read(&elsewhere).unwrap();
    let third = devices_csv(dir.path(), "third", 1);
    let (code, out, err) = binary(
        dir.path(),
        None,
        &["register", third.to_str().unwrap(), "--simulate", "--quiet"],
    )
    .await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&elsewhere).unwrap(), before);

    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "not yours\n").unwrap();
    let link = dir.path().join("dump.csv");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--dump-credentials",
            "dump.csv",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    // The signal handler is a task of its own: give it a moment to be in place.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // SAFETY: a child of this process, still running.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "the dump was refused: {status:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "not yours\n");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// Item 10's choice, guarded: a ledger at rest is a single file in rollback-journal mode; a run
/// turning WAL back on while a reader holds it (a `status` at that moment) waits for the reader
/// (SQLite's busy timeout) instead of failing.
#[tokio::test]
async fn a_run_starting_while_the_ledger_is_being_read_waits_for_the_reader() {
    use sqlx::Connection as _;
    let sim = simulator(fast()).await;
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(register(dir.path(), &sim, "first", 3, "l.sqlite").await, 0);
    let ledger = dir.path().join("l.sqlite");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&ledger)
        .read_only(true);
    let (held, holding) = tokio::sync::oneshot::channel();
    let release = tokio::spawn(async move {
        let mut reader = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
            .fetch_one(&mut reader)
            .await
            .unwrap();
        held.send(n).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
        reader.close().await.unwrap();
    });
    assert_eq!(holding.await.unwrap(), 3, "the reader holds the ledger");
    assert_eq!(register(dir.path(), &sim, "second", 3, "l.sqlite").await, 0);
    release.await.unwrap();
    assert_eq!(sim.stats().credentials.issued_total, 6);
}

/// Item 4, the other half: the service itself is still reached through `HTTPS_PROXY` (a host
/// under `.invalid`, so nothing leaves the machine: the proxy refuses the tunnel).
#[tokio::test]
async fn https_proxy_still_applies_to_the_service() {
    let proxy = RawServer::start(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let proxy_url = proxy.endpoint();
    let csv = devices_csv(dir.path(), "proxied", 1);
    let (code, _, err) = binary_env(
        dir.path(),
        None,
        &[
            "register",
            csv.to_str().unwrap(),
            "--instance-id",
            "MQTT_TEST",
            "--endpoint",
            "https://onsmqtt.example.invalid",
            "--max-attempts",
            "1",
            "--quiet",
        ],
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-hardening"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "the-secret"),
            ("HTTPS_PROXY", proxy_url.as_str()),
        ],
    )
    .await;
    assert_ne!(code, 0, "{err}");
    assert!(
        proxy.requests() >= 1,
        "the call went through HTTPS_PROXY: {err}"
    );
}
