//! The credential chain end to end, against the simulator's STS, metadata service and
//! credentials URI: every source, their precedence, and renewal during runs longer than the
//! tokens live.

mod common;
#[path = "common/sim_process.rs"]
mod sim_process;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use mqtt_provision::ledger::{ItemState, Ledger, LedgerLocation};
use mqtt_provision::report::OperationStatus;
use mqtt_provision::run::RunContext;
use mqtt_provision::sim::{
    CREDENTIALS_URI_PATH, DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET, ECS_ROLE_NAME,
    SimConfig, SimHandle,
};
use sim_process::SimProcess;
use tokio_util::sync::CancellationToken;

const ROLE_ARN: &str = "acs:ram::1234567890123456:role/provisioner";
const OIDC_PROVIDER_ARN: &str = "acs:ram::1234567890123456:oidc-provider/ack-rrsa-c1";
const OIDC_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl";

/// Fast limits for runs where pacing is not the point.
const FAST: [&str; 4] = ["--account-qps", "5000", "--ip-qps", "5000"];
/// About 100 calls/s: 1,000 devices take about ten seconds.
const PACED: [&str; 4] = ["--account-qps", "100", "--ip-qps", "100"];

/// A context with `vars` as its whole environment and `home` as its home. The metadata service
/// is off unless a test sets `ALIBABA_CLOUD_ECS_METADATA_DISABLED` (to "" to switch it on), so
/// no test waits on 100.100.100.200.
fn context(vars: &[(&str, String)], home: Option<&Path>) -> RunContext {
    let mut vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    if !vars
        .iter()
        .any(|(k, _)| k == "ALIBABA_CLOUD_ECS_METADATA_DISABLED")
    {
        vars.push(("ALIBABA_CLOUD_ECS_METADATA_DISABLED".into(), "true".into()));
    }
    RunContext {
        env: Box::new(move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())),
        home: home.map(Path::to_path_buf),
        stderr_is_terminal: false,
        stdin_is_terminal: false,
        interrupt: CancellationToken::new(),
        command_line: "mqtt-provision register (credentials test)".into(),
    }
}

fn sts_at(sim: &SimHandle) -> (&'static str, String) {
    ("ALIBABA_CLOUD_STS_ENDPOINT", sim.endpoint())
}

/// A home with `~/.aliyun/config.json` holding `profiles` (JSON objects), the first current.
fn home_with_profiles(profiles: &[serde_json::Value]) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".aliyun")).unwrap();
    let config = serde_json::json!({
        "current": profiles[0]["name"],
        "profiles": profiles,
    });
    std::fs::write(
        home.path().join(".aliyun/config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    home
}

fn ram_role_profile(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "mode": "RamRoleArn",
        "access_key_id": DEFAULT_ACCESS_KEY_ID, "access_key_secret": DEFAULT_ACCESS_KEY_SECRET,
        "ram_role_arn": ROLE_ARN, "ram_session_name": "provisioning", "expired_seconds": 900,
    })
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("oidc-token");
    std::fs::write(&path, format!("{OIDC_TOKEN}\n")).unwrap();
    path
}

async fn status(ledger: &Path) -> OperationStatus {
    let l = Ledger::open_existing(&LedgerLocation::from(ledger))
        .await
        .unwrap();
    OperationStatus::load(&l, "register").await.unwrap()
}

/// Registers `n` devices with `flags`; the exit code and the ledger's status.
async fn register(
    sim: &SimHandle,
    ctx: &RunContext,
    dir: &Path,
    n: usize,
    flags: &[&str],
) -> (i32, OperationStatus) {
    let csv = devices_csv(dir, "creds", n);
    let ledger = dir.join("l.sqlite");
    let run = Run::new(&["register"], &csv, &ledger, sim);
    let code = run.exit(flags, ctx).await;
    (code, status(&ledger).await)
}

/// How often the simulator refused an OnsMqtt call with an expired token.
fn expired_refusals(sim: &SimHandle) -> u64 {
    sim.stats()
        .calls
        .values()
        .filter_map(|codes| codes.get("InvalidSecurityToken.Expired"))
        .sum()
}

fn assert_all_registered(s: &OperationStatus, n: i64) {
    assert_eq!(s.count(ItemState::Registered), n, "{:?}", s.counts);
    assert!(
        s.errors.is_empty(),
        "no error in the ledger: {:?}",
        s.errors.iter().map(|e| &e.code).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_ram_role_arn_profile_assumes_the_role_and_signs_with_the_role_key() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig::default()).await;
    let home = home_with_profiles(&[ram_role_profile("role")]);
    let ctx = context(&[sts_at(&sim)], Some(home.path()));
    let (code, s) = register(&sim, &ctx, dir.path(), 20, &FAST).await;
    assert_eq!(code, 0);
    assert_all_registered(&s, 20);
    let t = sim.stats().temporary;
    assert_eq!((t.assume_role, t.keys_issued), (1, 1), "{t:?}");
    assert_eq!(
        ledger_credentials(&dir.path().join("l.sqlite"), &ctx).await,
        simulator_credentials(&sim)
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_chainable_ram_role_arn_profile_assumes_each_role_of_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig::default()).await;
    let home = home_with_profiles(&[
        serde_json::json!({
            "name": "chained", "mode": "ChainableRamRoleArn", "source_profile": "hop",
            "ram_role_arn": "acs:ram::1234567890123456:role/second",
        }),
        ram_role_profile("hop"),
    ]);
    let ctx = context(&[sts_at(&sim)], Some(home.path()));
    let (code, s) = register(&sim, &ctx, dir.path(), 10, &FAST).await;
    assert_eq!(code, 0);
    assert_all_registered(&s, 10);
    assert_eq!(
        sim.stats().temporary.assume_role,
        2,
        "the source role, then the role"
    );
    sim.stop().await;
}

#[tokio::test]
async fn oidc_from_the_environment_or_a_profile_calls_assume_role_with_oidc() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig::default()).await;
    let token = token_file(dir.path());
    let env = context(
        &[
            sts_at(&sim),
            ("ALIBABA_CLOUD_ROLE_ARN", ROLE_ARN.into()),
            ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", OIDC_PROVIDER_ARN.into()),
            ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token.display().to_string()),
        ],
        None,
    );
    let (code, s) = register(&sim, &env, dir.path(), 10, &FAST).await;
    assert_eq!(code, 0);
    assert_all_registered(&s, 10);
    let t = sim.stats().temporary;
    assert_eq!((t.assume_role_with_oidc, t.assume_role), (1, 0), "{t:?}");

    let home = home_with_profiles(&[serde_json::json!({
        "name": "rrsa", "mode": "OIDC", "ram_role_arn": ROLE_ARN,
        "oidc_provider_arn": OIDC_PROVIDER_ARN, "oidc_token_file": token.display().to_string(),
    })]);
    let profile = context(&[sts_at(&sim)], Some(home.path()));
    let second = tempfile::tempdir().unwrap();
    let (code, _) = register(&sim, &profile, second.path(), 5, &FAST).await;
    assert_eq!(code, 0);
    assert_eq!(sim.stats().temporary.assume_role_with_oidc, 2);
    sim.stop().await;
}

#[tokio::test]
async fn the_credentials_file_gives_a_role_to_assume() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig::default()).await;
    let ini = dir.path().join("credentials.ini");
    std::fs::write(
        &ini,
        format!(
            "[default]\ntype = access_key\naccess_key_id = nobody\naccess_key_secret = x\n\n\
             [provisioning]\ntype = ram_role_arn   # a RAM user assuming the role\n\
             access_key_id = {DEFAULT_ACCESS_KEY_ID}\naccess_key_secret = {DEFAULT_ACCESS_KEY_SECRET}\n\
             role_arn = {ROLE_ARN}\nrole_session_name = factory\n"
        ),
    )
    .unwrap();
    let ctx = context(
        &[
            sts_at(&sim),
            ("ALIBABA_CLOUD_CREDENTIALS_FILE", ini.display().to_string()),
            ("ALIBABA_CLOUD_PROFILE", "provisioning".into()),
        ],
        None,
    );
    let (code, s) = register(&sim, &ctx, dir.path(), 10, &FAST).await;
    assert_eq!(code, 0);
    assert_all_registered(&s, 10);
    assert_eq!(sim.stats().temporary.assume_role, 1);
    sim.stop().await;
}

#[tokio::test]
async fn the_ecs_ram_role_comes_from_the_metadata_service_with_an_imdsv2_token() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig::default()).await;
    let metadata = ("MQTT_PROVISION_ECS_METADATA_ENDPOINT", sim.endpoint());
    let on = ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", String::new());
    let ctx = context(&[metadata.clone(), on.clone()], None);
    let (code, s) = register(&sim, &ctx, dir.path(), 10, &FAST).await;
    assert_eq!(code, 0);
    assert_all_registered(&s, 10);
    let t = sim.stats().temporary;
    // A token first, then the role's name and its credentials, both read with the token.
    assert_eq!(
        (t.metadata_tokens, t.metadata_v2_reads, t.metadata_v1_reads),
        (1, 2, 0),
        "{t:?}"
    );

    // A named role (ALIBABA_CLOUD_ECS_METADATA) skips asking for the name.
    let named = context(
        &[
            metadata,
            on,
            ("ALIBABA_CLOUD_ECS_METADATA", ECS_ROLE_NAME.into()),
        ],
        None,
    );
    let second = tempfile::tempdir().unwrap();
    let (code, _) = register(&sim, &named, second.path(), 5, &FAST).await;
    assert_eq!(code, 0);
    let t = sim.stats().temporary;
    assert_eq!((t.metadata_tokens, t.metadata_v2_reads), (2, 3), "{t:?}");
    sim.stop().await;
}

#[tokio::test]
async fn without_an_imdsv2_token_the_metadata_service_is_read_with_imdsv1_unless_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig {
        metadata_v1_only: true,
        ..SimConfig::default()
    })
    .await;
    let metadata = ("MQTT_PROVISION_ECS_METADATA_ENDPOINT", sim.endpoint());
    let on = ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", String::new());
    let ctx = context(&[metadata.clone(), on.clone()], None);
    let (code, s) = register(&sim, &ctx, dir.path(), 5, &FAST).await;
    assert_eq!(code, 0);
    assert_all_registered(&s, 5);
    let t = sim.stats().temporary;
    assert_eq!((t.metadata_tokens, t.metadata_v1_reads), (0, 2), "{t:?}");

    let csv = devices_csv(dir.path(), "v2only", 5);
    let run = Run::new(&["register"], &csv, &dir.path().join("v2.sqlite"), &sim);
    let disabled = ("ALIBABA_CLOUD_IMDSV1_DISABLED", "true".to_owned());
    // The chain's own probe failing means "no credentials" (usage) ...
    let probe = context(&[metadata.clone(), on.clone(), disabled.clone()], None);
    assert_eq!(run.exit(&FAST, &probe).await, 2);
    // ... a role the user named that cannot be had halts.
    let role = ("ALIBABA_CLOUD_ECS_METADATA", ECS_ROLE_NAME.to_owned());
    let named = context(&[metadata, on, disabled, role], None);
    assert_eq!(run.exit(&FAST, &named).await, 3);
    assert_eq!(
        sim.stats().temporary.metadata_v1_reads,
        2,
        "no IMDSv1 read when disabled"
    );
    assert_eq!(sim.stats().total_calls, 5);
    sim.stop().await;
}

#[tokio::test]
async fn the_chain_keeps_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig::default()).await;
    let token = token_file(dir.path());
    let oidc = [
        sts_at(&sim),
        ("ALIBABA_CLOUD_ROLE_ARN", ROLE_ARN.to_owned()),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", OIDC_PROVIDER_ARN.into()),
        ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token.display().to_string()),
    ];
    let home = home_with_profiles(&[ram_role_profile("role")]);
    let mut n = 0;
    let mut run = async |vars: &[(&str, String)], home: Option<&Path>| {
        n += 1;
        let run_dir = dir.path().join(format!("run{n}"));
        std::fs::create_dir(&run_dir).unwrap();
        let (code, _) = register(&sim, &context(vars, home), &run_dir, 2, &FAST).await;
        assert_eq!(code, 0, "run {n}");
        sim.stats().temporary
    };
    // 1. The environment's key beats the OIDC role and the profile: no STS call.
    let mut vars = oidc.to_vec();
    vars.push(("ALIBABA_CLOUD_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY_ID.into()));
    vars.push((
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        DEFAULT_ACCESS_KEY_SECRET.into(),
    ));
    let t = run(&vars, Some(home.path())).await;
    assert_eq!((t.assume_role_with_oidc, t.assume_role), (0, 0), "{t:?}");
    // 2. The OIDC role of the environment beats the CLI profile.
    let t = run(&oidc, Some(home.path())).await;
    assert_eq!((t.assume_role_with_oidc, t.assume_role), (1, 0), "{t:?}");
    // 3. Then the CLI profile.
    let t = run(&[sts_at(&sim)], Some(home.path())).await;
    assert_eq!(t.assume_role, 1, "{t:?}");
    // --profile names the profile and passes over the environment's key.
    let profile_dir = dir.path().join("flag");
    std::fs::create_dir(&profile_dir).unwrap();
    let (code, _) = register(
        &sim,
        &context(&vars, Some(home.path())),
        &profile_dir,
        2,
        &[&FAST[..], &["--profile", "role"]].concat(),
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(sim.stats().temporary.assume_role, 2);
    // 4. The metadata service comes before the credentials URI.
    let uri = (
        "ALIBABA_CLOUD_CREDENTIALS_URI",
        format!("{}{CREDENTIALS_URI_PATH}", sim.endpoint()),
    );
    let metadata = ("MQTT_PROVISION_ECS_METADATA_ENDPOINT", sim.endpoint());
    let on = ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", String::new());
    let t = run(&[uri.clone(), metadata.clone(), on], None).await;
    assert_eq!((t.metadata_tokens, t.credentials_uri), (1, 0), "{t:?}");
    // 5. A metadata service that does not answer is passed over for the URI.
    let closed = (
        "MQTT_PROVISION_ECS_METADATA_ENDPOINT",
        "http://127.0.0.1:9".to_owned(),
    );
    let on = ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", String::new());
    let t = run(&[uri.clone(), closed, on], None).await;
    assert_eq!((t.metadata_tokens, t.credentials_uri), (1, 1), "{t:?}");
    // 6. ALIBABA_CLOUD_ECS_METADATA_DISABLED skips it altogether.
    let t = run(&[uri], None).await;
    assert_eq!((t.metadata_tokens, t.credentials_uri), (1, 2), "{t:?}");
    sim.stop().await;
}

#[tokio::test]
async fn a_role_sts_refuses_halts_before_any_call_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig::default()).await;
    let mut profile = ram_role_profile("role");
    profile["access_key_secret"] = "not-the-secret".into();
    let home = home_with_profiles(&[profile]);
    let ctx = context(&[sts_at(&sim)], Some(home.path()));
    let csv = devices_csv(dir.path(), "refused", 5);
    let run = Run::new(&["register"], &csv, &dir.path().join("l.sqlite"), &sim);
    assert_eq!(run.exit(&FAST, &ctx).await, 3);
    assert_eq!(sim.stats().total_calls, 0, "no OnsMqtt call was sent");
    // An unsupported mode is a usage error, named.
    let home = home_with_profiles(&[serde_json::json!({"name": "sso", "mode": "CloudSSO"})]);
    let ctx = context(&[], Some(home.path()));
    assert_eq!(run.exit(&FAST, &ctx).await, 2);
    sim.stop().await;
}

/// A run of several token lifetimes: the key is renewed ahead of expiry, in the background, a
/// bounded number of times, and no expired token reaches the service or the ledger.
async fn run_of_several_lifetimes(ttl: f64, devices: usize, flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig {
        sts_ttl: Some(ttl),
        ..SimConfig::default()
    })
    .await;
    let home = home_with_profiles(&[ram_role_profile("role")]);
    let ctx = context(&[sts_at(&sim)], Some(home.path()));
    let started = Instant::now();
    let (code, s) = register(&sim, &ctx, dir.path(), devices, flags).await;
    let elapsed = started.elapsed();
    assert_eq!(code, 0);
    assert_all_registered(&s, devices as i64);
    let t = sim.stats().temporary;
    let lifetimes = elapsed.as_secs_f64() / ttl;
    eprintln!(
        "run of {:.1} s ({lifetimes:.1} token lifetimes of {ttl} s): {} AssumeRole calls, \
         {} expired refusals, {} OnsMqtt calls",
        elapsed.as_secs_f64(),
        t.assume_role,
        expired_refusals(&sim),
        sim.stats().total_calls
    );
    assert!(lifetimes >= 2.5, "the run outlives the token: {elapsed:?}");
    // The Expiration is on a whole second, so a key lives between ttl - 1 and ttl seconds and
    // is renewed after two thirds of that: never more often than every (ttl - 1) * 2/3 s.
    let shortest = (ttl - 1.0) * 2.0 / 3.0;
    let most = (elapsed.as_secs_f64() / shortest).ceil() as u64 + 1;
    let least = (elapsed.as_secs_f64() / ttl).floor() as u64;
    assert!(
        t.assume_role >= least && t.assume_role <= most,
        "renewals bounded: {} AssumeRole in {elapsed:?} (expected {least}..={most})",
        t.assume_role
    );
    assert_eq!(
        expired_refusals(&sim),
        0,
        "renewed before expiry, never after"
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_run_of_several_token_lifetimes_renews_ahead_of_expiry() {
    run_of_several_lifetimes(3.0, 1000, &PACED).await;
}

/// The long form: a minute at 300 calls/s with 5-second tokens.
#[tokio::test]
#[ignore = "takes a minute"]
async fn a_minute_of_five_second_tokens_renews_ahead_of_expiry() {
    run_of_several_lifetimes(5.0, 18_000, &["--account-qps", "300", "--ip-qps", "300"]).await;
}

#[tokio::test]
async fn the_credentials_uri_source_survives_tokens_that_expire_mid_run() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig {
        sts_ttl: Some(2.0),
        ..SimConfig::default()
    })
    .await;
    let ctx = context(
        &[(
            "ALIBABA_CLOUD_CREDENTIALS_URI",
            format!("{}{CREDENTIALS_URI_PATH}", sim.endpoint()),
        )],
        None,
    );
    let (code, s) = register(&sim, &ctx, dir.path(), 500, &PACED).await;
    assert_eq!(code, 0);
    assert_all_registered(&s, 500);
    let t = sim.stats().temporary;
    eprintln!(
        "credentials URI, 2-s tokens: {} fetches, {} expired refusals, {} OnsMqtt calls",
        t.credentials_uri,
        expired_refusals(&sim),
        sim.stats().total_calls
    );
    assert!(t.credentials_uri >= 3, "{t:?}");
    assert_eq!(expired_refusals(&sim), 0);
    sim.stop().await;
}

/// The service calls a token expired before its time: the call is renewed and retried once,
/// and counts as no failure.
#[tokio::test]
async fn a_token_refused_as_expired_is_renewed_once_and_the_call_retried() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig::default()).await;
    let home = home_with_profiles(&[ram_role_profile("role")]);
    let ctx = context(&[sts_at(&sim)], Some(home.path()));
    let (result, expired) = tokio::join!(register(&sim, &ctx, dir.path(), 300, &PACED), async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        sim.expire_temporary_keys()
    });
    let (code, s) = result;
    assert_eq!(expired, 1, "the one key issued so far");
    assert_eq!(code, 0);
    assert_all_registered(&s, 300);
    eprintln!(
        "expired mid-run: {} calls refused as expired, each sent again; {} OnsMqtt calls",
        expired_refusals(&sim),
        sim.stats().total_calls
    );
    assert!(expired_refusals(&sim) >= 1, "the service refused the key");
    assert_eq!(
        sim.stats().temporary.assume_role,
        2,
        "the calls refused together share one renewal"
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_renewal_that_fails_halts_the_run_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig {
        sts_ttl: Some(2.0),
        ..SimConfig::default()
    })
    .await;
    let home = home_with_profiles(&[ram_role_profile("role")]);
    let ctx = context(&[sts_at(&sim)], Some(home.path()));
    let started = Instant::now();
    let ((code, s), ()) = tokio::join!(register(&sim, &ctx, dir.path(), 1000, &PACED), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sim.refuse_issuing(true)
    });
    assert_eq!(code, 3, "halted");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let registered = s.count(ItemState::Registered);
    assert!(registered > 0 && registered < 1000, "{:?}", s.counts);
    assert_eq!(
        expired_refusals(&sim),
        0,
        "it stops before signing with an expired key"
    );
    sim.stop().await;
}

/// The whole process at debug level, renewing role keys and OIDC tokens: no issued secret or
/// token, no base secret, no OIDC token appears in what it prints.
#[test]
fn no_secret_of_any_source_reaches_the_output_even_at_debug_level() {
    const BIN: &str = env!("CARGO_BIN_EXE_mqtt-provision");
    let dir = tempfile::tempdir().unwrap();
    let key = format!("{DEFAULT_ACCESS_KEY_ID}:{DEFAULT_ACCESS_KEY_SECRET}");
    let sim = SimProcess::start(BIN, 0, "post-cn-secrets01", &key, &["--sts-ttl", "1.5"]);
    let home = home_with_profiles(&[ram_role_profile("role")]);
    let token = token_file(dir.path());
    let run = |name: &str, oidc: bool| {
        let csv = devices_csv(dir.path(), name, 250);
        let mut command = std::process::Command::new(BIN);
        command
            .args(["register", csv.to_str().unwrap(), "--ledger"])
            .arg(dir.path().join(format!("{name}.sqlite")))
            .args([
                "--instance-id",
                "post-cn-secrets01",
                "--endpoint",
                &sim.endpoint(),
            ])
            .args(PACED)
            .env_clear()
            .env("HOME", home.path())
            .env("RUST_LOG", "debug")
            .env("ALIBABA_CLOUD_STS_ENDPOINT", sim.endpoint())
            .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true");
        if oidc {
            command
                .env("ALIBABA_CLOUD_ROLE_ARN", ROLE_ARN)
                .env("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", OIDC_PROVIDER_ARN)
                .env("ALIBABA_CLOUD_OIDC_TOKEN_FILE", &token);
        }
        let out = command.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{text}");
        text
    };
    for (name, oidc) in [("role", false), ("oidc", true)] {
        let text = run(name, oidc);
        assert!(
            text.contains("credentials renewed"),
            "{name}: renewed mid-run: {text}"
        );
        // Every issued token starts with CAIS, every issued secret is 40 characters after a
        // key id the output may show; none of the secrets may appear.
        assert!(!text.contains("CAIS"), "{name}: a security token leaked");
        assert!(
            !text.contains(DEFAULT_ACCESS_KEY_SECRET),
            "{name}: the base secret leaked"
        );
        assert!(!text.contains(OIDC_TOKEN), "{name}: the OIDC token leaked");
        assert!(
            !text.contains("c2lnbmF0dXJl"),
            "{name}: part of the OIDC token leaked"
        );
    }
    let stats = sim.stats();
    assert!(stats["temporary"]["assume_role"].as_u64().unwrap() >= 2);
    assert!(
        stats["temporary"]["assume_role_with_oidc"]
            .as_u64()
            .unwrap()
            >= 2
    );
}
