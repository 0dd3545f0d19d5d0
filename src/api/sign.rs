//! Request signing, shared by the client (which signs) and the simulator (which verifies).
//!
//! Two schemes, both pinned by the official SDK's known-answer vectors in
//! `shared/reference/test-vectors.json`:
//! * V3 `ACS3-HMAC-SHA256` (the SDK default): a canonical request hashed with SHA-256, signed with
//!   HMAC-SHA256 keyed by the AccessKey secret, carried in the `Authorization` header.
//! * V1 RPC `HMAC-SHA1` (`SignatureVersion=1.0`): the sorted query string, encoded twice, signed
//!   with HMAC-SHA1 keyed by `secret + "&"`, carried in the `Signature` query parameter.
//!
//! This module only computes strings and digests; it never sends, logs or stores anything.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The V3 algorithm name, first word of the `Authorization` header.
pub const V3_ALGORITHM: &str = "ACS3-HMAC-SHA256";

/// SHA-256 of the empty body: every OnsMqtt request has one (all parameters go in the query).
pub const EMPTY_BODY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Which signature scheme a client uses (`--signature`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SignatureVersion {
    /// ACS3-HMAC-SHA256, the official SDKs' default.
    #[default]
    V3,
    /// RPC HMAC-SHA1 (`SignatureVersion=1.0`), deprecated by Alibaba Cloud but still accepted.
    V1,
}

/// RFC 3986 percent-encoding as Alibaba Cloud canonicalises it: `A-Z a-z 0-9 - _ . ~` stay,
/// every other UTF-8 byte becomes `%XX` in upper-case hex (so space is `%20`, `*` is `%2A`).
pub fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
    out
}

/// `k1=v1&k2=v2…`, sorted by key (then value) in byte order, both sides percent-encoded.
/// The same canonical form serves V1 (before its second encoding) and V3.
pub fn canonical_query<'a, I>(params: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut pairs: Vec<(&str, &str)> = params.into_iter().collect();
    pairs.sort_unstable();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&percent_encode(k));
        out.push('=');
        out.push_str(&percent_encode(v));
    }
    out
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The parts of a request that a V3 signature covers.
pub struct V3Parts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Decoded query parameters.
    pub query: &'a [(&'a str, &'a str)],
    /// Headers to sign: names lower-case, any order.
    pub headers: &'a [(&'a str, &'a str)],
    pub body_sha256: &'a str,
}

/// The V3 canonical request and its signed-headers list.
pub fn v3_canonical_request(parts: &V3Parts<'_>) -> (String, String) {
    let mut headers: Vec<(&str, &str)> =
        parts.headers.iter().map(|(k, v)| (*k, v.trim())).collect();
    headers.sort_unstable();
    let mut canonical_headers = String::new();
    let mut signed = String::new();
    let mut i = 0;
    while i < headers.len() {
        // Several values of one name: sorted (already) and joined with ','.
        let name = headers[i].0;
        let mut values = vec![headers[i].1];
        while i + 1 < headers.len() && headers[i + 1].0 == name {
            i += 1;
            values.push(headers[i].1);
        }
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(&values.join(","));
        canonical_headers.push('\n');
        if !signed.is_empty() {
            signed.push(';');
        }
        signed.push_str(name);
        i += 1;
    }
    let request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        parts.method,
        parts.path,
        canonical_query(parts.query.iter().copied()),
        canonical_headers,
        signed,
        parts.body_sha256
    );
    (request, signed)
}

/// `ACS3-HMAC-SHA256\n<hex sha256 of the canonical request>`.
pub fn v3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "{V3_ALGORITHM}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Lower-case hex HMAC-SHA256 keyed by the secret itself (no `&`).
pub fn v3_signature(secret: &str, string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(string_to_sign.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The `Authorization` header value.
pub fn v3_authorization(access_key_id: &str, signed_headers: &str, signature: &str) -> String {
    format!(
        "{V3_ALGORITHM} Credential={access_key_id},SignedHeaders={signed_headers},Signature={signature}"
    )
}

/// The fields of a V3 `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub struct V3Authorization<'a> {
    pub access_key_id: &'a str,
    pub signed_headers: Vec<&'a str>,
    pub signature: &'a str,
}

/// Parses `ACS3-HMAC-SHA256 Credential=…,SignedHeaders=…,Signature=…`; `None` if malformed.
pub fn parse_v3_authorization(value: &str) -> Option<V3Authorization<'_>> {
    let rest = value.strip_prefix(V3_ALGORITHM)?.trim_start();
    let (mut id, mut headers, mut sig) = (None, None, None);
    for field in rest.split(',') {
        let (k, v) = field.trim().split_once('=')?;
        match k {
            "Credential" => id = Some(v),
            "SignedHeaders" => headers = Some(v),
            "Signature" => sig = Some(v),
            _ => {}
        }
    }
    Some(V3Authorization {
        access_key_id: id.filter(|s| !s.is_empty())?,
        signed_headers: headers?.split(';').filter(|s| !s.is_empty()).collect(),
        signature: sig.filter(|s| !s.is_empty())?,
    })
}

/// V1 StringToSign: `METHOD&%2F&percentEncode(canonical query)` over every parameter but
/// `Signature`.
pub fn v1_string_to_sign<'a, I>(method: &str, params: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let canonical = canonical_query(params.into_iter().filter(|(k, _)| *k != "Signature"));
    format!("{method}&%2F&{}", percent_encode(&canonical))
}

/// Base64 HMAC-SHA1 keyed by `secret + "&"`.
pub fn v1_signature(secret: &str, string_to_sign: &str) -> String {
    let key = format!("{secret}&");
    let mut mac = Hmac::<Sha1>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Constant-time comparison, so the simulator does not leak how much of a signature matched.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh nonce: 32 lower-case hex characters, as the SDK sends.
pub fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// `%Y-%m-%dT%H:%M:%SZ` in UTC, the only timestamp form both schemes accept.
pub fn timestamp(now: jiff::Timestamp) -> String {
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_follows_rfc3986() {
        assert_eq!(
            percent_encode("a b*c~d/e+f=g&h@"),
            "a%20b%2Ac~d%2Fe%2Bf%3Dg%26h%40"
        );
        assert_eq!(percent_encode("中"), "%E4%B8%AD");
    }

    #[test]
    fn authorization_round_trips() {
        let h = v3_authorization("id", "host;x-acs-date", "abc");
        let p = parse_v3_authorization(&h).unwrap();
        assert_eq!(p.access_key_id, "id");
        assert_eq!(p.signed_headers, vec!["host", "x-acs-date"]);
        assert_eq!(p.signature, "abc");
        assert!(parse_v3_authorization("Bearer x").is_none());
        assert!(parse_v3_authorization("ACS3-HMAC-SHA256 Credential=,Signature=x").is_none());
    }
}
