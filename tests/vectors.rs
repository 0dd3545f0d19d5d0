//! Known-answer vectors produced by the official SDK (shared/reference/test-vectors.json).

use mqtt_provision::api::actions::Action;
use mqtt_provision::api::client::{SigningContext, sign_request};
use mqtt_provision::api::credentials::AccessKey;
use mqtt_provision::api::endpoint::Endpoint;
use mqtt_provision::api::{mqtt, sign};
use mqtt_provision::secret::Secret;
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/test-vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vector file")).unwrap()
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn v1_vectors() {
    let all = vectors();
    let list = all["v1_rpc_hmac_sha1"].as_array().unwrap();
    assert_eq!(list.len(), 6);
    for v in list {
        let params = pairs(&v["params_excluding_Signature"]);
        let borrowed = params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        assert_eq!(
            sign::canonical_query(borrowed.clone()),
            v["canonicalized_query_string"],
            "{}",
            v["name"]
        );
        let sts = sign::v1_string_to_sign(v["method"].as_str().unwrap(), borrowed);
        assert_eq!(sts, v["string_to_sign"], "{}", v["name"]);
        let sig = sign::v1_signature(v["access_key_secret"].as_str().unwrap(), &sts);
        assert_eq!(sig, v["signature"], "{}", v["name"]);
        assert_eq!(
            sign::percent_encode(&sig),
            v["signature_url_encoded"],
            "{}",
            v["name"]
        );
    }
}

#[test]
fn v3_vectors() {
    let all = vectors();
    let list = all["v3_acs3_hmac_sha256"].as_array().unwrap();
    assert_eq!(list.len(), 6);
    for v in list {
        let query = pairs(&v["query"]);
        let headers = pairs(&v["headers_signed"]);
        let q: Vec<(&str, &str)> = query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let body_hash = sign::sha256_hex(v["body_utf8"].as_str().unwrap().as_bytes());
        assert_eq!(body_hash, v["x-acs-content-sha256"], "{}", v["name"]);
        let (canonical, signed) = sign::v3_canonical_request(&sign::V3Parts {
            method: v["method"].as_str().unwrap(),
            path: v["path"].as_str().unwrap(),
            query: &q,
            headers: &h,
            body_sha256: &body_hash,
        });
        assert_eq!(canonical, v["canonical_request"], "{}", v["name"]);
        assert_eq!(signed, v["signed_headers"], "{}", v["name"]);
        let sts = sign::v3_string_to_sign(&canonical);
        assert_eq!(sts, v["string_to_sign"], "{}", v["name"]);
        let sig = sign::v3_signature(v["access_key_secret"].as_str().unwrap(), &sts);
        assert_eq!(sig, v["signature"], "{}", v["name"]);
        assert_eq!(
            sign::v3_authorization(v["access_key_id"].as_str().unwrap(), &signed, &sig),
            v["authorization"]
        );
    }
}

/// The client's whole request — URL, headers, signature — equals what the official SDK put on the
/// wire, once timestamp, nonce and user-agent are pinned to the capture's.
#[test]
fn client_requests_match_the_sdk_wire_captures() {
    let all = vectors();
    let captures = all["wire_captures_from_onsmqtt_client"].as_array().unwrap();
    assert_eq!(captures.len(), 5);
    for w in captures {
        let headers = w["headers"].as_object().unwrap();
        let action = Action::from_name(headers["x-acs-action"].as_str().unwrap()).unwrap();
        let mut key = AccessKey::new("testid", "testsecret");
        if let Some(token) = w["config"]["security_token"].as_str() {
            key.security_token = Some(Secret::new(token));
        }
        let version = if w["config"]["signature_algorithm"] == "v2" {
            sign::SignatureVersion::V1
        } else {
            sign::SignatureVersion::V3
        };
        let endpoint = Endpoint::parse(w["endpoint"].as_str().unwrap()).unwrap();
        // The captured URL's query, decoded, is the call's parameters.
        let url = reqwest::Url::parse(w["url"].as_str().unwrap()).unwrap();
        let api_params: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| ["ClientId", "InstanceId", "MqttInstanceId"].contains(&k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let params: Vec<(&str, &str)> = api_params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let req = sign_request(
            &SigningContext {
                key: &key,
                version,
                endpoint: &endpoint,
                user_agent: headers["user-agent"].as_str().unwrap(),
                timestamp: "2024-01-01T00:00:00Z".into(),
                nonce: "0123456789abcdef0123456789abcdef".into(),
            },
            action,
            &params,
        );
        assert_eq!(req.method, w["method"], "{}", w["label"]);
        for (name, value) in headers {
            let ours = req
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str());
            assert_eq!(ours, value.as_str(), "{} header {name}", w["label"]);
        }
        assert_eq!(
            req.headers.len(),
            headers.len(),
            "{}: same header set",
            w["label"]
        );
        // Same decoded query (the SDK's wire encoding uses '+', ours RFC 3986; both decode alike).
        let ours = reqwest::Url::parse(&req.url).unwrap();
        let mut a: Vec<_> = ours.query_pairs().collect();
        let mut b: Vec<_> = url.query_pairs().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{}", w["label"]);
    }
}

#[test]
fn mqtt_login_vectors() {
    let all = vectors();
    let list = all["mqtt_device_credential_connect"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    for v in list {
        let s = |k: &str| v[k].as_str().unwrap();
        assert_eq!(
            mqtt::username(s("DeviceAccessKeyId"), s("InstanceId")),
            s("mqtt_username")
        );
        assert_eq!(
            mqtt::password(s("DeviceAccessKeySecret"), s("ClientId")),
            s("mqtt_password")
        );
    }
}
