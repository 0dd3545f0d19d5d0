//! The simulator's rules, seen from the client's side: every action round-trips with both
//! signature versions; wrong secrets, replayed nonces, throttled seconds, IP blocks, faults,
//! duplicate modes, quota and restarts answer as the documents say.

mod common;

use mqtt_provision::api::request;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use mqtt_provision::api::actions::Action;
use mqtt_provision::api::client::{SigningContext, sign_request};
use mqtt_provision::api::{AccessKey, Endpoint, ErrorClass, SignatureVersion};
use mqtt_provision::secret::Secret;
use mqtt_provision::sim::{DupMode, SimConfig};

const CID: &str = "GID_test@@@device-0001";

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[tokio::test]
async fn every_action_round_trips_with_both_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.csv");
    std::fs::write(
        &certs,
        "device_sn,ca_sn,device_name\nSN1,CA1,dev one\nSN2,CA1,dev two\n",
    )
    .unwrap();
    let sim = simulator(SimConfig {
        device_certs: Some(certs),
        ..SimConfig::default()
    })
    .await;
    let inst = sim.instance_id.clone();
    for version in [SignatureVersion::V3, SignatureVersion::V1] {
        let c = client_for(&sim, version, None);
        let cid = format!("GID_test@@@dev-{version:?}");
        let reg = c
            .send(&request::register_device_credential(&inst, &cid))
            .await
            .unwrap()
            .device_credential;
        assert_eq!(reg.client_id, cid);
        assert!(
            reg.device_access_key_id.starts_with("DC.") && reg.device_access_key_id.len() == 25
        );
        let got = c
            .send(&request::get_device_credential(&inst, &cid))
            .await
            .unwrap()
            .device_credential;
        assert_eq!(got, reg);
        let refreshed = c
            .send(&request::refresh_device_credential(&inst, &cid))
            .await
            .unwrap()
            .device_credential;
        assert_eq!(refreshed.device_access_key_id, reg.device_access_key_id);
        assert_ne!(
            refreshed.device_access_key_secret,
            reg.device_access_key_secret
        );
        let page = c
            .send(&request::list_device_credential_client_id(
                &inst, "GID_test", 10, None,
            ))
            .await
            .unwrap();
        assert!(
            page.device_credential_client_id_list
                .client_id_list
                .contains(&cid)
        );
        c.send(&request::unregister_device_credential(&inst, &cid))
            .await
            .unwrap();
        let gone = c
            .send(&request::get_device_credential(&inst, &cid))
            .await
            .unwrap_err();
        assert_eq!(
            (gone.class, gone.code.as_str()),
            (ErrorClass::NotFound, "DeviceCredentialNotFound")
        );
        assert!(gone.request_id.is_some());

        let code = c
            .send(&request::get_register_code(&inst))
            .await
            .unwrap()
            .register_code;
        assert_eq!(
            code,
            c.send(&request::get_register_code(&inst))
                .await
                .unwrap()
                .register_code,
            "stable per instance"
        );
        c.send(&request::inactivate_device_certificate(&inst, "SN1", "CA1"))
            .await
            .unwrap();
        assert_eq!(
            c.send(&request::get_device_certificate(&inst, "SN1", "CA1"))
                .await
                .unwrap()
                .data
                .status,
            "0"
        );
        c.send(&request::active_device_certificate(&inst, "SN1", "CA1"))
            .await
            .unwrap();
        assert_eq!(
            c.send(&request::get_device_certificate(&inst, "SN1", "CA1"))
                .await
                .unwrap()
                .data
                .status,
            "1"
        );
        let list = c
            .send(&request::list_device_certificate(&inst, 1, 1))
            .await
            .unwrap()
            .data;
        assert_eq!((list.total, list.device_certificate_vos.len()), (2, 1));
        let missing = c
            .send(&request::inactivate_device_certificate(&inst, "SN9", "CA1"))
            .await
            .unwrap_err();
        assert_eq!(
            (missing.class, missing.code.as_str()),
            (ErrorClass::NotFound, "FindDeviceBySnError")
        );
        let bad = c
            .send(&request::get_register_code("post-cn-other"))
            .await
            .unwrap_err();
        assert_eq!(
            (bad.class, bad.code.as_str()),
            (ErrorClass::Fatal, "MqttInstanceNotFound")
        );
        let bad = c
            .send(&request::get_device_credential("post-cn-other", CID))
            .await
            .unwrap_err();
        assert_eq!(bad.code, "InstancePermissionCheckFailed");
        let bad = c
            .send(&request::register_device_credential(
                &inst,
                "GID_test@@@bad/id",
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (bad.class, bad.code.as_str()),
            (ErrorClass::InvalidInput, "ParameterCheckFailed")
        );
    }
    sim.stop().await;
}

#[tokio::test]
async fn wrong_secret_unknown_key_and_sts_tokens_are_refused() {
    let sts = AccessKey {
        id: "STSID".into(),
        secret: Secret::new("sts-secret"),
        security_token: Some(Secret::new("TOKEN-1")),
    };
    let sim = simulator(SimConfig {
        access_keys: vec![AccessKey::new("AKID", "right"), sts.clone()],
        ..SimConfig::default()
    })
    .await;
    for version in [SignatureVersion::V3, SignatureVersion::V1] {
        let wrong = client_with_key(&sim, AccessKey::new("AKID", "wrong"), version, None);
        let e = wrong
            .send(&request::get_register_code(&sim.instance_id))
            .await
            .unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str(), e.status),
            (ErrorClass::Fatal, "SignatureDoesNotMatch", Some(400))
        );
        assert!(
            e.message.contains("server string to sign is:"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("wrong") && !e.message.contains("right"));
        let unknown = client_with_key(&sim, AccessKey::new("NOPE", "x"), version, None);
        let e = unknown
            .send(&request::get_register_code(&sim.instance_id))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.status),
            ("InvalidAccessKeyId.NotFound", Some(404))
        );
        let good_sts = client_with_key(&sim, sts.clone(), version, None);
        good_sts
            .send(&request::get_register_code(&sim.instance_id))
            .await
            .unwrap();
        let no_token = client_with_key(&sim, AccessKey::new("STSID", "sts-secret"), version, None);
        assert_eq!(
            no_token
                .send(&request::get_register_code(&sim.instance_id))
                .await
                .unwrap_err()
                .code,
            "MissingSecurityToken"
        );
        let mut other = sts.clone();
        other.security_token = Some(Secret::new("TOKEN-2"));
        let mismatched = client_with_key(&sim, other, version, None);
        assert_eq!(
            mismatched
                .send(&request::get_register_code(&sim.instance_id))
                .await
                .unwrap_err()
                .code,
            "InvalidSecurityToken.MismatchWithAccessKey"
        );
    }
    sim.stop().await;
}

/// Sends a pre-signed request as is, so a test can replay a nonce or skew the clock.
async fn send_raw(
    sim: &mqtt_provision::sim::SimHandle,
    timestamp: &str,
    nonce: &str,
) -> (u16, String) {
    let endpoint = Endpoint::parse(&sim.endpoint()).unwrap();
    let req = sign_request(
        &SigningContext {
            key: &sim.keys[0],
            version: SignatureVersion::V3,
            endpoint: &endpoint,
            user_agent: "test",
            timestamp: timestamp.into(),
            nonce: nonce.into(),
        },
        Action::GetRegisterCode,
        &[("MqttInstanceId", &sim.instance_id)],
    );
    let mut b = reqwest::Client::new().get(&req.url);
    for (k, v) in &req.headers {
        b = b.header(*k, v);
    }
    let r = b.send().await.unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    (
        status,
        body["Code"].as_str().unwrap_or("Success").to_owned(),
    )
}

#[tokio::test]
async fn replayed_nonce_and_skewed_clock_are_refused() {
    let sim = simulator(SimConfig::default()).await;
    let now = mqtt_provision::api::sign::timestamp(jiff::Timestamp::now());
    assert_eq!(
        send_raw(&sim, &now, "nonce-1").await,
        (200, "Success".into())
    );
    assert_eq!(
        send_raw(&sim, &now, "nonce-1").await,
        (400, "SignatureNonceUsed".into())
    );
    let old = mqtt_provision::api::sign::timestamp(
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(16 * 60),
    );
    assert_eq!(
        send_raw(&sim, &old, "nonce-2").await,
        (400, "InvalidTimeStamp.Expired".into())
    );
    let fine = mqtt_provision::api::sign::timestamp(
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(14 * 60),
    );
    assert_eq!(
        send_raw(&sim, &fine, "nonce-3").await,
        (200, "Success".into())
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_second_over_the_account_limit_is_throttled_and_changes_nothing() {
    let sim = simulator(SimConfig {
        account_qps: 5,
        retry_after_ms: Some(250),
        ..SimConfig::default()
    })
    .await;
    let c = client_for(&sim, SignatureVersion::V3, None);
    let mut outcomes = Vec::new();
    for i in 0..8 {
        outcomes.push(
            c.send(&request::register_device_credential(
                &sim.instance_id,
                &format!("GID_test@@@t{i}"),
            ))
            .await,
        );
    }
    let ok = outcomes.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 5);
    let throttled = outcomes
        .iter()
        .filter_map(|r| r.as_ref().err())
        .collect::<Vec<_>>();
    assert!(throttled.iter().all(|e| e.code == "Throttling.User"
        && e.class
            == ErrorClass::Throttled {
                retry_after_ms: Some(250)
            }));
    // Another API has its own window.
    c.send(&request::get_register_code(&sim.instance_id))
        .await
        .unwrap();
    let stats = sim.stats();
    assert_eq!(stats.throttled, 3);
    assert_eq!(stats.credentials.live, 5, "throttled calls are not applied");
    assert_eq!(
        stats.max_window.per_api_admitted["RegisterDeviceCredential"],
        5
    );
    assert_eq!(
        stats.max_window.per_api_arrivals["RegisterDeviceCredential"],
        8
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.send(&request::register_device_credential(
        &sim.instance_id,
        "GID_test@@@after",
    ))
    .await
    .unwrap();
    sim.stop().await;
}

#[tokio::test]
async fn an_ip_over_its_limit_is_blocked_until_the_block_expires() {
    let sim = simulator(SimConfig {
        ip_qps: 4,
        ip_block_secs: 0.6,
        ..SimConfig::default()
    })
    .await;
    let blocked = client_for(&sim, SignatureVersion::V3, ip("127.0.0.2"));
    let other = client_for(&sim, SignatureVersion::V3, ip("127.0.0.3"));
    for _ in 0..4 {
        blocked
            .send(&request::get_register_code(&sim.instance_id))
            .await
            .unwrap();
    }
    let e = blocked
        .send(&request::get_register_code(&sim.instance_id))
        .await
        .unwrap_err();
    assert_eq!((e.status, e.class), (Some(403), ErrorClass::SourceBlocked));
    let started = Instant::now();
    // Still blocked, even at a gentle pace; the other address is unaffected.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        blocked
            .send(&request::get_register_code(&sim.instance_id))
            .await
            .unwrap_err()
            .class,
        ErrorClass::SourceBlocked
    );
    other
        .send(&request::get_register_code(&sim.instance_id))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700).saturating_sub(started.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    blocked
        .send(&request::get_register_code(&sim.instance_id))
        .await
        .unwrap();
    let stats = sim.stats();
    assert_eq!(stats.blocked_ips, vec!["127.0.0.2".to_owned()]);
    assert_eq!(stats.max_window.per_ip_arrivals["127.0.0.3"], 1);
    sim.stop().await;
}

/// The overload model refuses a share that grows with the offered rate, and nothing below its
/// capacity: unlike a random fault, the refusals follow the pace.
#[tokio::test]
async fn the_overload_model_refuses_only_past_its_capacity() {
    let sim = simulator(SimConfig {
        capacity_qps: Some(100.0),
        account_qps: 5000,
        ip_qps: 5000,
        ..SimConfig::default()
    })
    .await;
    let c = client_for(&sim, SignatureVersion::V3, None);
    // 400 calls as fast as 32 connections go: far past 100 calls/s.
    let mut set = tokio::task::JoinSet::new();
    for t in 0..32 {
        let (c, inst) = (c.clone(), sim.instance_id.clone());
        set.spawn(async move {
            let mut outcomes = Vec::new();
            for i in (t..400).step_by(32) {
                let cid = format!("GID_test@@@o{i}");
                outcomes.push(
                    c.send(&request::register_device_credential(&inst, &cid))
                        .await,
                );
            }
            outcomes
        });
    }
    let mut admitted = 0;
    let mut refused = 0;
    while let Some(outcomes) = set.join_next().await {
        for r in outcomes.unwrap() {
            match r {
                Ok(_) => admitted += 1,
                Err(e) => {
                    assert_eq!(e.code, "SystemOverFlow");
                    assert_eq!(e.status, Some(500));
                    assert!(matches!(e.class, ErrorClass::Throttled { .. }));
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(admitted + refused, 400);
    assert!(admitted >= 100, "the capacity is served: {admitted}");
    assert!(
        refused >= 50,
        "a burst of 400 is refused in part: {refused}"
    );
    let stats = sim.stats();
    assert_eq!(stats.overloaded, refused);
    assert_eq!(
        stats.credentials.live as u64, admitted,
        "refused calls are not applied"
    );
    // A second later, 20 calls at 40/s: below the capacity, none refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..20 {
        let cid = format!("GID_test@@@slow{i}");
        c.send(&request::register_device_credential(&sim.instance_id, &cid))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(sim.stats().overloaded, refused);
    sim.stop().await;
}

#[tokio::test]
async fn each_fault_kind_reaches_the_client_as_its_class() {
    type Check = fn(&mqtt_provision::api::ApiError) -> bool;
    let cases: Vec<(SimConfig, Check, bool)> = vec![
        (
            SimConfig {
                fault_internal_error: 1.0,
                ..SimConfig::default()
            },
            |e| e.code == "InternalError" && e.class == ErrorClass::Transient,
            false,
        ),
        (
            SimConfig {
                fault_system_overflow: 1.0,
                ..SimConfig::default()
            },
            |e| e.code == "SystemOverFlow" && matches!(e.class, ErrorClass::Throttled { .. }),
            false,
        ),
        (
            SimConfig {
                fault_unavailable: 1.0,
                ..SimConfig::default()
            },
            |e| e.status == Some(503) && matches!(e.class, ErrorClass::Throttled { .. }),
            false,
        ),
        (
            SimConfig {
                fault_drop_before: 1.0,
                ..SimConfig::default()
            },
            |e| e.ambiguous && e.status.is_none(),
            false,
        ),
        (
            SimConfig {
                fault_drop_after: 1.0,
                ..SimConfig::default()
            },
            |e| e.ambiguous && e.status.is_none(),
            true,
        ),
        (
            SimConfig {
                fault_slow: 1.0,
                slow_ms: 2000,
                ..SimConfig::default()
            },
            |e| e.ambiguous && e.code == "Transport.Timeout",
            true,
        ),
    ];
    for (config, check, applied) in cases {
        let sim = simulator(config).await;
        let c = client_for(&sim, SignatureVersion::V3, None);
        let e = c
            .send(&request::register_device_credential(&sim.instance_id, CID))
            .await
            .unwrap_err();
        assert!(check(&e), "{e:?}");
        assert_eq!(sim.stats().credentials.live, usize::from(applied), "{e:?}");
        sim.stop().await;
    }
}

#[tokio::test]
async fn duplicate_modes_and_quota() {
    let sim = simulator(SimConfig {
        quota: Some(2),
        ..SimConfig::default()
    })
    .await;
    let c = client_for(&sim, SignatureVersion::V3, None);
    c.send(&request::register_device_credential(
        &sim.instance_id,
        "GID_test@@@a",
    ))
    .await
    .unwrap();
    let e = c
        .send(&request::register_device_credential(
            &sim.instance_id,
            "GID_test@@@a",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::AlreadyExists, "DeviceCredentialExsit")
    );
    c.send(&request::register_device_credential(
        &sim.instance_id,
        "GID_test@@@b",
    ))
    .await
    .unwrap();
    let e = c
        .send(&request::register_device_credential(
            &sim.instance_id,
            "GID_test@@@c",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::QuotaFull, "DeviceCredentialNumExceed")
    );
    sim.stop().await;

    let sim = simulator(SimConfig {
        dup_mode: DupMode::Reissue,
        ..SimConfig::default()
    })
    .await;
    let c = client_for(&sim, SignatureVersion::V3, None);
    let first = c
        .send(&request::register_device_credential(
            &sim.instance_id,
            "GID_test@@@a",
        ))
        .await
        .unwrap()
        .device_credential;
    let second = c
        .send(&request::register_device_credential(
            &sim.instance_id,
            "GID_test@@@a",
        ))
        .await
        .unwrap()
        .device_credential;
    assert_ne!(
        first.device_access_key_id, second.device_access_key_id,
        "the latest call wins"
    );
    assert_eq!(
        c.send(&request::get_device_credential(
            &sim.instance_id,
            "GID_test@@@a"
        ))
        .await
        .unwrap()
        .device_credential,
        second
    );
    assert_eq!(
        sim.stats().credentials.duplicates,
        vec!["GID_test@@@a".to_owned()]
    );
    sim.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sim-state.jsonl");
    let sim = simulator(SimConfig {
        journal: Some(state.clone()),
        ..SimConfig::default()
    })
    .await;
    let c = client_for(&sim, SignatureVersion::V3, None);
    let cred = c
        .send(&request::register_device_credential(&sim.instance_id, CID))
        .await
        .unwrap()
        .device_credential;
    sim.stop().await;
    let sim = simulator(SimConfig {
        journal: Some(state.clone()),
        ..SimConfig::default()
    })
    .await;
    let c = client_for(&sim, SignatureVersion::V3, None);
    assert_eq!(
        c.send(&request::get_device_credential(&sim.instance_id, CID))
            .await
            .unwrap()
            .device_credential,
        cred
    );
    assert_eq!(
        c.send(&request::register_device_credential(&sim.instance_id, CID))
            .await
            .unwrap_err()
            .code,
        "DeviceCredentialExsit"
    );
    assert!(sim.credentials_csv().contains(&cred.device_access_key_id));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    sim.stop().await;
}
