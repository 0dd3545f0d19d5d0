//! The dialects official clients speak, sent by hand to the simulator: parameters in a form body
//! (V1 and V3), `Format=XML` answers and errors, the body bound. The V1 signatures here are
//! computed in this file from onsmqtt-api.md §2, not with the crate's signing code, so that a
//! simulator that signed the wrong parameter set could not agree with them by construction.

mod common;

use base64::Engine;
use hmac::{Hmac, Mac};
use mqtt_provision::api::sign;
use mqtt_provision::sim::{SimConfig, SimHandle};
use sha1::Sha1;

use common::simulator;

/// onsmqtt-api.md §2 step 2: RFC 3986 unreserved characters stay, every other UTF-8 byte is
/// `%XX` in upper-case hex.
fn rfc3986(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// onsmqtt-api.md §2 steps 1–5 over every parameter given (query and body alike).
fn v1_signature(secret: &str, method: &str, params: &[(&str, &str)]) -> String {
    let mut sorted: Vec<&(&str, &str)> = params.iter().collect();
    sorted.sort();
    let canonical = sorted
        .iter()
        .map(|(k, v)| format!("{}={}", rfc3986(k), rfc3986(v)))
        .collect::<Vec<_>>()
        .join("&");
    let string_to_sign = format!("{method}&%2F&{}", rfc3986(&canonical));
    let mut mac = Hmac::<Sha1>::new_from_slice(format!("{secret}&").as_bytes()).unwrap();
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The common V1 parameters of one call of `action` with `format`.
fn v1_common(sim: &SimHandle, action: &'static str, format: &'static str) -> Vec<(String, String)> {
    [
        ("Action", action.to_owned()),
        ("Version", "2020-04-20".to_owned()),
        ("Format", format.to_owned()),
        ("AccessKeyId", sim.keys[0].id.clone()),
        ("SignatureMethod", "HMAC-SHA1".to_owned()),
        ("SignatureVersion", "1.0".to_owned()),
        ("SignatureNonce", sign::new_nonce()),
        ("Timestamp", sign::timestamp(jiff::Timestamp::now())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn form(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn borrowed(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

struct Answer {
    status: u16,
    content_type: String,
    request_id: String,
    body: String,
}

/// A V1 call: `query` in the URL (plus `Signature`), `body` as a form body if not empty, the
/// signature over `signed` (normally query ∪ body).
async fn send_v1(
    sim: &SimHandle,
    method: &str,
    query: &[(String, String)],
    body: &[(String, String)],
    signed: &[(String, String)],
) -> Answer {
    let signature = v1_signature(sim.keys[0].secret.expose(), method, &borrowed(signed));
    let mut query = query.to_vec();
    query.push(("Signature".into(), signature));
    let url = format!("{}/?{}", sim.endpoint(), form(&query));
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), url);
    if !body.is_empty() {
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(body));
    }
    answer(req.send().await.unwrap()).await
}

async fn answer(r: reqwest::Response) -> Answer {
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, content_type, request_id) = (
        r.status().as_u16(),
        header("content-type"),
        header("x-acs-request-id"),
    );
    Answer {
        status,
        content_type,
        request_id,
        body: r.text().await.unwrap(),
    }
}

fn json(a: &Answer) -> serde_json::Value {
    assert_eq!(
        a.content_type, "application/json;charset=utf-8",
        "{}",
        a.body
    );
    serde_json::from_str(&a.body).unwrap()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn v1_parameters_in_the_body_are_read_and_signed_with_the_query() {
    let sim = simulator(SimConfig::default()).await;
    let inst = sim.instance_id.clone();
    // The legacy core SDK's split: common parameters in the query, the action's in the body;
    // a parameter the rule ignores (as RegionId is) carries the characters the form encoding
    // and the signature's RFC 3986 encoding treat differently.
    let query = v1_common(&sim, "RegisterDeviceCredential", "JSON");
    let body = pairs(&[
        ("ClientId", "GID_test@@@form-1"),
        ("InstanceId", &inst),
        ("RegionId", "cn hangzhou*~/+=&%中"),
    ]);
    let all: Vec<_> = query.iter().chain(&body).cloned().collect();

    // Signed over the query alone, as a server reading only the query would check it: refused.
    let partial = send_v1(&sim, "POST", &query, &body, &query).await;
    assert_eq!(partial.status, 400);
    assert_eq!(json(&partial)["Code"], "SignatureDoesNotMatch");

    let query = v1_common(&sim, "RegisterDeviceCredential", "JSON");
    let all_fresh: Vec<_> = query.iter().chain(&body).cloned().collect();
    assert_ne!(all, all_fresh, "a fresh nonce");
    let ok = send_v1(&sim, "POST", &query, &body, &all_fresh).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let registered = json(&ok);
    assert_eq!(
        registered["DeviceCredential"]["ClientId"],
        "GID_test@@@form-1"
    );

    // pop-core's POST: everything, Action included, in the body; no query at all.
    let everything: Vec<_> = v1_common(&sim, "GetDeviceCredential", "json")
        .into_iter()
        .chain(body.clone())
        .collect();
    let signature = v1_signature(sim.keys[0].secret.expose(), "POST", &borrowed(&everything));
    let mut with_signature = everything.clone();
    with_signature.push(("Signature".into(), signature));
    let got = reqwest::Client::new()
        .post(format!("{}/", sim.endpoint()))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(&with_signature))
        .send()
        .await
        .unwrap();
    let got = answer(got).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        json(&got)["DeviceCredential"]["DeviceAccessKeySecret"],
        registered["DeviceCredential"]["DeviceAccessKeySecret"]
    );

    // The method rule holds whatever carries the parameters.
    let query = v1_common(&sim, "GetDeviceCredential", "JSON");
    let all: Vec<_> = query.iter().chain(&body).cloned().collect();
    let wrong_method = send_v1(&sim, "GET", &query, &body, &all).await;
    assert_eq!(json(&wrong_method)["Code"], "UnsupportedHTTPMethod");
    sim.stop().await;
}

#[tokio::test]
async fn v3_body_parameters_are_covered_by_the_body_hash() {
    let sim = simulator(SimConfig::default()).await;
    let inst = sim.instance_id.clone();
    let host = sim.addr.to_string();
    let send = |body: String, signed_body: String| {
        let date = sign::timestamp(jiff::Timestamp::now());
        let nonce = sign::new_nonce();
        let hash = sign::sha256_hex(signed_body.as_bytes());
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("host", host.as_str()),
            ("x-acs-action", "RegisterDeviceCredential"),
            ("x-acs-content-sha256", hash.as_str()),
            ("x-acs-date", date.as_str()),
            ("x-acs-signature-nonce", nonce.as_str()),
            ("x-acs-version", "2020-04-20"),
        ];
        // The official V3 signers canonicalise the query only (here: empty).
        let (canonical, signed) = sign::v3_canonical_request(&sign::V3Parts {
            method: "POST",
            path: "/",
            query: &[],
            headers: &headers,
            body_sha256: &hash,
        });
        let signature = sign::v3_signature(
            sim.keys[0].secret.expose(),
            &sign::v3_string_to_sign(&canonical),
        );
        let mut req = reqwest::Client::new()
            .post(format!("{}/", sim.endpoint()))
            .header(
                "Authorization",
                sign::v3_authorization(&sim.keys[0].id, &signed, &signature),
            )
            .body(body);
        for (k, v) in headers {
            if k != "host" {
                req = req.header(k, v);
            }
        }
        async move { answer(req.send().await.unwrap()).await }
    };
    let body = form(&pairs(&[
        ("ClientId", "GID_test@@@v3-body"),
        ("InstanceId", &inst),
    ]));
    let ok = send(body.clone(), body.clone()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        json(&ok)["DeviceCredential"]["ClientId"],
        "GID_test@@@v3-body"
    );

    // A body changed after signing no longer matches its hash.
    let tampered = body.replace("v3-body", "v3-evil");
    let refused = send(tampered, body).await;
    assert_eq!(refused.status, 400);
    assert_eq!(json(&refused)["Code"], "IncompleteSignature");
    sim.stop().await;
}

/// A parsed XML element: name, text, children. Enough for the simulator's answers, which have
/// no attributes, comments or mixed content.
#[derive(Debug)]
struct Element {
    name: String,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> &Element {
        self.children
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("<{}> has no <{name}>: {self:?}", self.name))
    }
}

fn parse_xml(doc: &str) -> Element {
    let rest = doc
        .strip_prefix("<?xml version='1.0' encoding='UTF-8'?>")
        .expect("XML declaration");
    let (element, rest) = parse_element(rest);
    assert!(rest.trim().is_empty(), "trailing content: {rest}");
    element
}

fn parse_element(s: &str) -> (Element, &str) {
    let s = s.strip_prefix('<').expect("an element starts with <");
    let end = s.find('>').unwrap();
    let (tag, mut rest) = (&s[..end], &s[end + 1..]);
    if let Some(name) = tag.strip_suffix('/') {
        let empty = Element {
            name: name.to_owned(),
            text: String::new(),
            children: Vec::new(),
        };
        return (empty, rest);
    }
    let mut element = Element {
        name: tag.to_owned(),
        text: String::new(),
        children: Vec::new(),
    };
    loop {
        if let Some(after) = rest.strip_prefix(&format!("</{tag}>")) {
            return (element, after);
        }
        if rest.starts_with('<') {
            let (child, after) = parse_element(rest);
            element.children.push(child);
            rest = after;
        } else {
            let end = rest.find('<').expect("unclosed element");
            element.text.push_str(
                &rest[..end]
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&apos;", "'")
                    .replace("&amp;", "&"),
            );
            rest = &rest[end..];
        }
    }
}

#[tokio::test]
async fn format_xml_answers_successes_and_errors_in_xml() {
    let sim = simulator(SimConfig::default()).await;
    let inst = sim.instance_id.clone();
    let body = pairs(&[("ClientId", "GID_test@@@xml-1"), ("InstanceId", &inst)]);
    // `Format` in the body, lower-case, as a caller of the legacy SDK may put it.
    let xml_body: Vec<_> = body
        .iter()
        .cloned()
        .chain(pairs(&[("Format", "xml")]))
        .collect();
    let mut query = v1_common(&sim, "RegisterDeviceCredential", "JSON");
    query.retain(|(k, _)| k != "Format");
    let all: Vec<_> = query.iter().chain(&xml_body).cloned().collect();
    let ok = send_v1(&sim, "POST", &query, &xml_body, &all).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.content_type, "text/xml;charset=utf-8");
    let root = parse_xml(&ok.body);
    assert_eq!(root.name, "RegisterDeviceCredentialResponse");
    assert_eq!(root.child("RequestId").text, ok.request_id);
    let credential = root.child("DeviceCredential");
    assert_eq!(credential.child("ClientId").text, "GID_test@@@xml-1");
    assert_eq!(credential.child("InstanceId").text, inst);
    assert!(
        credential
            .child("DeviceAccessKeyId")
            .text
            .starts_with("DC.")
    );

    // The same Register again, `Format=XML` in the query: the documented duplicate, as <Error>.
    let query = v1_common(&sim, "RegisterDeviceCredential", "XML");
    let all: Vec<_> = query.iter().chain(&body).cloned().collect();
    let dup = send_v1(&sim, "POST", &query, &body, &all).await;
    assert_eq!(dup.status, 400);
    assert_eq!(dup.content_type, "text/xml;charset=utf-8");
    let error = parse_xml(&dup.body);
    assert_eq!(error.name, "Error");
    assert_eq!(error.child("Code").text, "DeviceCredentialExsit");
    assert_eq!(error.child("RequestId").text, dup.request_id);
    assert_eq!(error.child("HostId").text, sim.addr.to_string());
    assert!(!error.child("Message").text.is_empty());
    assert!(
        error
            .child("Recommend")
            .text
            .contains("q=DeviceCredentialExsit&product=OnsMqtt")
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_refused_unread() {
    let sim = simulator(SimConfig::default()).await;
    let limit = 1 << 20;
    let over = reqwest::Client::new()
        .post(format!("{}/?Format=XML", sim.endpoint()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("ClientId={}", "a".repeat(limit)))
        .send()
        .await
        .unwrap();
    let over = answer(over).await;
    assert_eq!(over.status, 413);
    assert_eq!(
        parse_xml(&over.body).child("Code").text,
        "RequestEntityTooLarge"
    );

    // At the limit the body is read: the call then fails on what it lacks, not on its size.
    let at = reqwest::Client::new()
        .post(format!("{}/", sim.endpoint()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "ClientId={}",
            "a".repeat(limit - "ClientId=".len())
        ))
        .send()
        .await
        .unwrap();
    let at = answer(at).await;
    assert_eq!(json(&at)["Code"], "MissingAction");
    sim.stop().await;
}

#[tokio::test]
async fn a_streamed_body_is_cut_off_at_one_mebibyte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = simulator(SimConfig::default()).await;
    let mut stream = tokio::net::TcpStream::connect(sim.addr).await.unwrap();
    // No content-length: chunked, so the bound can only be noticed while reading.
    let head = format!(
        "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        sim.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..17 {
        // 17 × 64 KiB = 1 MiB + 64 KiB. The server may answer and stop reading before the end.
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 413"),
        "{}",
        &response[..response.len().min(300)]
    );
    assert!(response.contains("\"Code\":\"RequestEntityTooLarge\""));
    sim.stop().await;
}
