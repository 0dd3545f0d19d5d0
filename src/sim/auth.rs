//! Signature checks of the simulator: the client's signing code run backwards.
//!
//! It recomputes the V3 canonical request (or the V1 string-to-sign) from what arrived and answers
//! with the gateway's codes (onsmqtt-api.md §5): `InvalidAccessKeyId.NotFound` (404),
//! `IncompleteSignature`, `SignatureDoesNotMatch` (with the server's string to sign, as the real
//! gateway does), `MissingSecurityToken`, `InvalidSecurityToken.MismatchWithAccessKey`,
//! `InvalidTimeStamp.Expired` beyond 15 minutes of skew, `InvalidTimeStamp.Format`, and
//! `InvalidSecurityToken.Expired` for an issued STS token past its `Expiration`.

use hyper::HeaderMap;

use super::SimError;
use crate::api::actions::Action;
use crate::api::credentials::AccessKey;
use crate::api::sign;

/// "x-acs-date must be within 15 minutes of the request" (onsmqtt-api.md §1).
pub const MAX_SKEW_SECS: i64 = 15 * 60;

/// A key the simulator accepts, and when it stops being accepted (issued STS keys).
#[derive(Clone)]
pub struct Known {
    pub key: AccessKey,
    pub expires: Option<jiff::Timestamp>,
}

/// Finds the key of an AccessKeyId: the configured ones and those the simulator issued.
pub type Keys<'a> = &'a dyn Fn(&str) -> Option<Known>;

/// What a valid signature established.
pub struct Authenticated {
    pub action: Action,
    pub nonce: String,
}

pub struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The query string's parameters, decoded, repeats kept.
    pub query: &'a [(String, String)],
    /// A form-encoded body's parameters, decoded, repeats kept ([`super::wire::form_params`]).
    pub form: &'a [(String, String)],
    pub headers: &'a HeaderMap,
    pub body_sha256: String,
}

impl Incoming<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }

    /// The value of a parameter: its first occurrence in the query, else in the form body. The
    /// documents do not say which wins when both carry one; the query does here (README).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Every parameter, query first, then form body: what a V1 signature covers.
    fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.query
            .iter()
            .chain(self.form)
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The action the request names (V3 header, V1 parameter); `None` if it names none.
    pub fn action_name(&self) -> Option<&str> {
        if self.header("authorization").is_some() {
            self.header("x-acs-action")
        } else {
            self.param("Action")
        }
    }
}

fn err(status: u16, code: &str, message: impl Into<String>) -> SimError {
    SimError::new(status, code, message)
}

pub fn authenticate(
    keys: Keys<'_>,
    req: &Incoming<'_>,
    now: jiff::Timestamp,
) -> Result<Authenticated, SimError> {
    let action_name = req
        .action_name()
        .ok_or_else(|| err(400, "MissingAction", "Action is mandatory for this action."))?;
    let action = Action::from_name(action_name).ok_or_else(|| {
        err(
            404,
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        )
    })?;
    let dual_method = matches!(
        action,
        Action::InactivateDeviceCertificate
            | Action::ActiveDeviceCertificate
            | Action::ListDeviceCredentialClientId
    );
    if req.method != action.method() && !(dual_method && matches!(req.method, "GET" | "POST")) {
        return Err(err(
            400,
            "UnsupportedHTTPMethod",
            format!("This action does not support the {} method.", req.method),
        ));
    }
    match req.header("authorization") {
        Some(authorization) => authenticate_v3(keys, req, authorization, action, now),
        None if req.param("Signature").is_some() => authenticate_v1(keys, req, action, now),
        None => Err(err(
            400,
            "IncompleteSignature",
            "The request signature does not conform to Aliyun standards: no signature.",
        )),
    }
}

fn key_for(keys: Keys<'_>, id: &str) -> Result<Known, SimError> {
    keys(id).ok_or_else(|| {
        err(
            404,
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        )
    })
}

fn check_timestamp(value: Option<&str>, now: jiff::Timestamp) -> Result<(), SimError> {
    let value = value.ok_or_else(|| {
        err(
            400,
            "MissingTimestamp",
            "Timestamp is mandatory for this action.",
        )
    })?;
    // Exactly `%Y-%m-%dT%H:%M:%SZ`, the only form the SDK sends.
    let stamp = jiff::fmt::strtime::parse("%Y-%m-%dT%H:%M:%SZ", value)
        .and_then(|t| t.to_datetime())
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC))
        .map_err(|_| {
            err(
                400,
                "InvalidTimeStamp.Format",
                "Specified time stamp or date value is not well formatted.",
            )
        })?;
    let skew = (now.as_second() - stamp.timestamp().as_second()).abs();
    if skew > MAX_SKEW_SECS {
        return Err(err(
            400,
            "InvalidTimeStamp.Expired",
            "Specified time stamp or date value is expired.",
        ));
    }
    Ok(())
}

fn check_token(known: &Known, sent: Option<&str>, now: jiff::Timestamp) -> Result<(), SimError> {
    let key = &known.key;
    match (&key.security_token, sent) {
        (None, None) => Ok(()),
        (Some(want), Some(got))
            if sign::constant_time_eq(want.expose(), got)
                && known.expires.is_some_and(|at| now >= at) =>
        {
            Err(err(
                400,
                "InvalidSecurityToken.Expired",
                "Specified SecurityToken is expired.",
            ))
        }
        (Some(_), None) => Err(err(
            400,
            "MissingSecurityToken",
            "SecurityToken is mandatory for this action.",
        )),
        (Some(want), Some(got)) if sign::constant_time_eq(want.expose(), got) => Ok(()),
        _ => Err(err(
            400,
            "InvalidSecurityToken.MismatchWithAccessKey",
            "The security token you provided does not match the access key.",
        )),
    }
}

fn authenticate_v3(
    keys: Keys<'_>,
    req: &Incoming<'_>,
    authorization: &str,
    action: Action,
    now: jiff::Timestamp,
) -> Result<Authenticated, SimError> {
    let incomplete = |what: &str| {
        err(
            400,
            "IncompleteSignature",
            format!("The request signature does not conform to Aliyun standards: {what}."),
        )
    };
    let auth = sign::parse_v3_authorization(authorization)
        .ok_or_else(|| incomplete("malformed Authorization header"))?;
    let known = key_for(keys, auth.access_key_id)?;
    let key = &known.key;
    for required in [
        "host",
        "x-acs-action",
        "x-acs-version",
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-content-sha256",
    ] {
        if !auth.signed_headers.contains(&required) {
            return Err(incomplete(&format!("header {required} must be signed")));
        }
    }
    if req.header("x-acs-content-sha256") != Some(req.body_sha256.as_str()) {
        return Err(incomplete("x-acs-content-sha256 does not match the body"));
    }
    let mut signed: Vec<(&str, &str)> = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let values = req.headers.get_all(*name);
        let mut any = false;
        for v in values {
            signed.push((
                name,
                v.to_str()
                    .map_err(|_| incomplete("a signed header is not text"))?,
            ));
            any = true;
        }
        if !any {
            return Err(incomplete(&format!("signed header {name} is missing")));
        }
    }
    // Only the query string is canonicalised, as the official V3 signers do: body parameters are
    // covered by `x-acs-content-sha256`, checked above, and read as parameters after this.
    let query: Vec<(&str, &str)> = req
        .query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (canonical, _) = sign::v3_canonical_request(&sign::V3Parts {
        method: req.method,
        path: req.path,
        query: &query,
        headers: &signed,
        body_sha256: &req.body_sha256,
    });
    let string_to_sign = sign::v3_string_to_sign(&canonical);
    let expected = sign::v3_signature(key.secret.expose(), &string_to_sign);
    if !sign::constant_time_eq(&expected, auth.signature) {
        return Err(err(
            400,
            "SignatureDoesNotMatch",
            format!(
                "Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"
            ),
        ));
    }
    check_timestamp(req.header("x-acs-date"), now)?;
    let token = req.header("x-acs-security-token");
    if token.is_some() && !auth.signed_headers.contains(&"x-acs-security-token") {
        return Err(incomplete("header x-acs-security-token must be signed"));
    }
    check_token(&known, token, now)?;
    let nonce = req
        .header("x-acs-signature-nonce")
        .unwrap_or_default()
        .to_owned();
    Ok(Authenticated { action, nonce })
}

fn authenticate_v1(
    keys: Keys<'_>,
    req: &Incoming<'_>,
    action: Action,
    now: jiff::Timestamp,
) -> Result<Authenticated, SimError> {
    verify_v1(keys, req, now)?;
    let nonce = req.param("SignatureNonce").ok_or_else(|| {
        err(
            400,
            "MissingSignatureNonce",
            "SignatureNonce is mandatory for this action.",
        )
    })?;
    Ok(Authenticated {
        action,
        nonce: nonce.to_owned(),
    })
}

/// A V1 (RPC HMAC-SHA1) signature, its timestamp and its token: what OnsMqtt and STS
/// `AssumeRole` both check. Returns the key that signed.
pub fn verify_v1(
    keys: Keys<'_>,
    req: &Incoming<'_>,
    now: jiff::Timestamp,
) -> Result<Known, SimError> {
    let id = req.param("AccessKeyId").ok_or_else(|| {
        err(
            400,
            "MissingAccessKeyId",
            "AccessKeyId is mandatory for this action.",
        )
    })?;
    let known = key_for(keys, id)?;
    if req.param("SignatureMethod") != Some("HMAC-SHA1")
        || req.param("SignatureVersion") != Some("1.0")
    {
        return Err(err(
            400,
            "IncompleteSignature",
            "The request signature does not conform to Aliyun standards: SignatureMethod must be HMAC-SHA1 and SignatureVersion 1.0.",
        ));
    }
    // Query and form parameters together, repeats included (onsmqtt-api.md §2 step 1).
    let string_to_sign = sign::v1_string_to_sign(req.method, req.params());
    let expected = sign::v1_signature(known.key.secret.expose(), &string_to_sign);
    if !sign::constant_time_eq(&expected, req.param("Signature").unwrap_or_default()) {
        return Err(err(
            400,
            "SignatureDoesNotMatch",
            format!(
                "Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"
            ),
        ));
    }
    check_timestamp(req.param("Timestamp"), now)?;
    check_token(&known, req.param("SecurityToken"), now)?;
    Ok(known)
}
