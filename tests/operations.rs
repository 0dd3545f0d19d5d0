//! The other bulk operations on the same pipeline: fetch, rotate, revoke, cert inactivate and
//! activate. Each is driven through its success path, its named not-found outcome, throttling, a
//! fatal error and resume; then revoke's confirmation and the CA commands. Every test with a
//! ledger runs on a SQLite ledger, or with `MQTT_PROVISION_TEST_LEDGER=postgres` on a PostgreSQL
//! one (tests/common/ledgers.rs); the CA and `cert list` tests keep no ledger.

mod common;

use mqtt_provision::api::request;

use common::ledgers::TestLedger;
use common::*;
use mqtt_provision::api::SignatureVersion;
use mqtt_provision::ledger::Ledger;
use mqtt_provision::report::OperationStatus;
use mqtt_provision::sim::{SimConfig, SimHandle};

#[derive(Clone, Copy)]
struct Case {
    operation: &'static str,
    command: &'static [&'static str],
    certificates: bool,
    done: &'static str,
}

const CASES: [Case; 5] = [
    Case {
        operation: "fetch",
        command: &["fetch"],
        certificates: false,
        done: "fetched",
    },
    Case {
        operation: "rotate",
        command: &["rotate"],
        certificates: false,
        done: "rotated",
    },
    Case {
        operation: "revoke",
        command: &["revoke", "--yes"],
        certificates: false,
        done: "revoked",
    },
    Case {
        operation: "cert-inactivate",
        command: &["cert", "inactivate"],
        certificates: true,
        done: "inactivated",
    },
    Case {
        operation: "cert-activate",
        command: &["cert", "activate"],
        certificates: true,
        done: "activated",
    },
];

/// A simulator holding `n` targets for the case, and a CSV naming them plus one unknown target.
async fn setup(
    case: Case,
    n: usize,
    dir: &std::path::Path,
    config: SimConfig,
) -> (SimHandle, std::path::PathBuf) {
    let csv = dir.join(format!("{}.csv", case.operation));
    if case.certificates {
        let seeds = dir.join("seed-certs.csv");
        let mut seed = String::from("device_sn,ca_sn,device_name\n");
        let mut input = String::from("device_sn,ca_sn\n");
        for i in 0..n {
            seed.push_str(&format!("SN-{i:05},CA-1,device {i}\n"));
            input.push_str(&format!("SN-{i:05},CA-1\n"));
        }
        input.push_str("SN-missing,CA-1\n");
        std::fs::write(&seeds, seed).unwrap();
        std::fs::write(&csv, input).unwrap();
        let sim = simulator(SimConfig {
            device_certs: Some(seeds),
            ..config
        })
        .await;
        return (sim, csv);
    }
    let sim = simulator(config).await;
    let client = client_for(&sim, SignatureVersion::V3, None);
    let mut input = String::from("client_id\n");
    for i in 0..n {
        let cid = format!("GID_test@@@op-{i:05}");
        // The test's own setup waits out a strict server, as any client must.
        while let Err(e) = client
            .send(&request::register_device_credential(&sim.instance_id, &cid))
            .await
        {
            assert!(
                matches!(e.class, mqtt_provision::api::ErrorClass::Throttled { .. }),
                "{e}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        input.push_str(&format!("{cid}\n"));
    }
    input.push_str("GID_test@@@missing\n");
    std::fs::write(&csv, input).unwrap();
    (sim, csv)
}

async fn counts(ledger: &TestLedger, operation: &str) -> std::collections::BTreeMap<String, i64> {
    let l = Ledger::open_existing(&ledger.location()).await.unwrap();
    OperationStatus::load(&l, operation).await.unwrap().counts
}

fn fast() -> SimConfig {
    SimConfig {
        account_qps: 5000,
        ip_qps: 5000,
        ..SimConfig::default()
    }
}
const FAST: [&str; 4] = ["--account-qps", "5000", "--ip-qps", "5000"];

#[tokio::test]
async fn each_operation_succeeds_and_names_its_not_found() {
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        let (sim, csv) = setup(case, 30, dir.path(), fast()).await;
        let before = simulator_credentials(&sim);
        let ctx = context_for(&sim);
        let ledger = TestLedger::new(dir.path());
        let run = Run::new(case.command, &csv, &ledger, &sim);
        let code = run.exit(&FAST, &ctx).await;
        assert_eq!(
            code, 0,
            "{}: not_found is a named outcome, not a failure",
            case.operation
        );
        let c = counts(&ledger, case.operation).await;
        assert_eq!(c.get(case.done), Some(&30), "{}: {c:?}", case.operation);
        assert_eq!(c.get("not_found"), Some(&1), "{}: {c:?}", case.operation);
        let client = client_for(&sim, SignatureVersion::V3, None);
        match case.operation {
            "fetch" => assert_eq!(fetched(&ledger, &ctx, "fetch").await, before),
            "rotate" => {
                let after = simulator_credentials(&sim);
                let ours = fetched(&ledger, &ctx, "rotate").await;
                assert_eq!(ours, after, "the ledger holds the new secrets");
                for (cid, (id, secret)) in &before {
                    assert_eq!(&after[cid].0, id, "the AccessKeyId stays");
                    assert_ne!(&after[cid].1, secret, "the secret changed");
                }
            }
            "revoke" => assert_eq!(sim.stats().credentials.live, 0),
            "cert-inactivate" | "cert-activate" => {
                let want = if case.operation == "cert-activate" {
                    "1"
                } else {
                    "0"
                };
                let got = client
                    .send(&request::get_device_certificate(
                        &sim.instance_id,
                        "SN-00007",
                        "CA-1",
                    ))
                    .await
                    .unwrap()
                    .data
                    .status;
                assert_eq!(got, want);
            }
            _ => unreachable!(),
        }
        sim.stop().await;
    }
}

/// Credentials of one operation's rows, through `export --operation`.
async fn fetched(
    ledger: &TestLedger,
    ctx: &mqtt_provision::run::RunContext,
    operation: &str,
) -> std::collections::HashMap<String, (String, String)> {
    let out = ledger.with_extension(&format!("{operation}.csv"));
    let args = [
        "export",
        "--operation",
        operation,
        "--ledger",
        ledger.arg(),
        "--out",
        out.to_str().unwrap(),
    ];
    assert_eq!(run_cli(&args, ctx).await, 0);
    credentials_from_csv(
        &std::fs::read_to_string(&out).unwrap(),
        "client_id",
        "device_access_key_id",
        "device_access_key_secret",
    )
}

#[tokio::test]
async fn each_operation_rides_out_throttling() {
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        // The server admits 20 calls/s per API; the worker believes 500.
        let (sim, csv) = setup(
            case,
            40,
            dir.path(),
            SimConfig {
                account_qps: 20,
                ip_qps: 5000,
                ..SimConfig::default()
            },
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // setup's calls leave the window
        let ctx = context_for(&sim);
        let ledger = TestLedger::new(dir.path());
        let run = Run::new(case.command, &csv, &ledger, &sim);
        let code = run.exit(&["--ip-qps", "5000"], &ctx).await;
        assert_eq!(code, 0, "{}", case.operation);
        assert!(
            sim.stats().throttled > 0,
            "{}: the server throttled",
            case.operation
        );
        assert_eq!(
            counts(&ledger, case.operation).await.get(case.done),
            Some(&40),
            "{}",
            case.operation
        );
        sim.stop().await;
    }
}

#[tokio::test]
async fn each_operation_halts_on_a_fatal_error() {
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        let (sim, csv) = setup(case, 10, dir.path(), fast()).await;
        let mut ctx = context_for(&sim);
        ctx.env = Box::new(|k| match k {
            "ALIBABA_CLOUD_ACCESS_KEY_ID" => Some("LTAI5tSimulatorRehearsal".into()),
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET" => Some("wrong".into()),
            _ => None,
        });
        let ledger = TestLedger::new(dir.path());
        let run = Run::new(case.command, &csv, &ledger, &sim);
        let code = run.exit(&["--concurrency", "1"], &ctx).await;
        assert_eq!(code, 3, "{}", case.operation);
        assert_eq!(
            counts(&ledger, case.operation).await.get("pending"),
            Some(&11),
            "{}",
            case.operation
        );
        sim.stop().await;
    }
}

#[tokio::test]
async fn each_operation_resumes_after_an_interrupt() {
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        let (sim, csv) = setup(
            case,
            300,
            dir.path(),
            SimConfig {
                latency: "fixed:20".parse().unwrap(),
                ..fast()
            },
        )
        .await;
        let ctx = context_for(&sim);
        let ledger = TestLedger::new(dir.path());
        let run = Run::new(case.command, &csv, &ledger, &sim);
        let a = run.args(&["--account-qps", "400", "--ip-qps", "400"]);
        let interrupt = ctx.interrupt.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            interrupt.cancel();
        });
        assert_eq!(run_cli(&a, &ctx).await, 130, "{}", case.operation);
        let partial = counts(&ledger, case.operation).await;
        assert!(
            partial.get("pending").copied().unwrap_or(0) > 0,
            "{}: {partial:?}",
            case.operation
        );
        assert_eq!(
            run_cli(&a, &context_for(&sim)).await,
            0,
            "{}",
            case.operation
        );
        let done = counts(&ledger, case.operation).await;
        assert_eq!(
            done.get(case.done),
            Some(&300),
            "{}: {done:?}",
            case.operation
        );
        assert_eq!(done.get("pending"), None, "{}", case.operation);
        sim.stop().await;
    }
}

#[tokio::test]
async fn revoke_refuses_without_confirmation_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, csv) = setup(CASES[2], 5, dir.path(), fast()).await;
    let calls = sim.stats().total_calls;
    let ctx = context_for(&sim);
    let ledger = TestLedger::new(dir.path());
    let e = sim.endpoint();
    let mut a = vec![
        "revoke",
        csv.to_str().unwrap(),
        "--ledger",
        ledger.arg(),
        "--instance-id",
        &sim.instance_id,
        "--endpoint",
        &e,
    ];
    assert_eq!(run_cli(&a, &ctx).await, 2);
    assert_eq!(sim.stats().total_calls, calls, "nothing sent");
    assert_eq!(sim.stats().credentials.live, 5);
    a.push("--yes");
    assert_eq!(run_cli(&a, &ctx).await, 0);
    assert_eq!(sim.stats().credentials.live, 0);
    sim.stop().await;
}

#[tokio::test]
async fn rotate_keeps_the_previous_secret_until_exported() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, csv) = setup(CASES[1], 3, dir.path(), fast()).await;
    let ctx = context_for(&sim);
    let ledger = TestLedger::new(dir.path());
    let run = Run::new(CASES[1].command, &csv, &ledger, &sim);
    assert_eq!(run.exit(&FAST, &ctx).await, 0);
    let kept = |l: TestLedger| async move {
        let l = Ledger::open_existing(&l.location()).await.unwrap();
        let rows = l.export_page("rotate", &["rotated"], 0, 100).await.unwrap();
        rows.iter().filter(|r| r.previous_secret.is_some()).count()
    };
    assert_eq!(kept(ledger.clone()).await, 3);
    fetched(&ledger, &ctx, "rotate").await;
    assert_eq!(kept(ledger.clone()).await, 0, "dropped once exported");
    sim.stop().await;
}

#[tokio::test]
async fn ca_verification_certificate_carries_the_code_and_verifies_against_the_ca() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Factory CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let (ca_pem, key_pem) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&key_pem, ca_key.serialize_pem()).unwrap();
    let out = dir.path().join("verification.pem");

    let sim = simulator(SimConfig::default()).await;
    let ctx = context_for(&sim);
    let e = sim.endpoint();
    let base = [
        "--instance-id",
        sim.instance_id.as_str(),
        "--endpoint",
        e.as_str(),
    ];
    let mut a = vec![
        "ca",
        "verification-cert",
        "--ca-cert",
        ca_pem.to_str().unwrap(),
        "--ca-key",
        key_pem.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend(base);
    assert_eq!(run_cli(&a, &ctx).await, 0);
    let code = client_for(&sim, SignatureVersion::V3, None)
        .send(&request::get_register_code(&sim.instance_id))
        .await
        .unwrap()
        .register_code;

    let pem_text = std::fs::read_to_string(&out).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(cn, code, "CN is the registration code");
    let ca_pem_text = std::fs::read_to_string(&ca_pem).unwrap();
    let (_, ca_parsed) = x509_parser::pem::parse_x509_pem(ca_pem_text.as_bytes()).unwrap();
    let ca_cert = ca_parsed.parse_x509().unwrap();
    cert.verify_signature(Some(ca_cert.public_key()))
        .expect("signed by the CA");
    assert_eq!(cert.issuer(), ca_cert.subject());
    // A key that is not the CA's is refused before any call.
    let other = dir.path().join("other.key");
    std::fs::write(&other, "not a key").unwrap();
    let calls = sim.stats().total_calls;
    let mut bad = vec![
        "ca",
        "verification-cert",
        "--ca-cert",
        ca_pem.to_str().unwrap(),
        "--ca-key",
        other.to_str().unwrap(),
    ];
    bad.extend(base);
    assert_eq!(run_cli(&bad, &ctx).await, 2);
    assert_eq!(sim.stats().total_calls, calls);
    // A real key, but not the one the CA certificate was made with: the console would reject
    // what it signs, so it is refused too, and no file is written.
    std::fs::write(&other, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    std::fs::remove_file(&out).unwrap();
    let mut mismatched = bad.clone();
    mismatched.extend(["--out", out.to_str().unwrap()]);
    assert_eq!(run_cli(&mismatched, &ctx).await, 2);
    assert_eq!(sim.stats().total_calls, calls);
    assert!(!out.exists(), "no certificate was written");
    sim.stop().await;
}

#[tokio::test]
async fn cert_list_pages_through_every_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _) = setup(CASES[3], 250, dir.path(), fast()).await;
    let ctx = context_for(&sim);
    let e = sim.endpoint();
    let out = dir.path().join("certs.csv");
    let a = [
        "cert",
        "list",
        "--instance-id",
        sim.instance_id.as_str(),
        "--endpoint",
        e.as_str(),
        "--out",
        out.to_str().unwrap(),
    ];
    assert_eq!(run_cli(&a, &ctx).await, 0);
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        text.lines().count(),
        251,
        "header + 250 certificates over 3 pages"
    );
    assert!(text.contains("SN-00249,CA-1,device 249,active"));
    assert_eq!(sim.stats().successes("ListDeviceCertificate"), 3);
    sim.stop().await;
}
