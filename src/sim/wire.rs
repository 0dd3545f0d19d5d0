//! The dialects a request may arrive in and an answer must leave in: parameters from the query
//! string, a form-encoded body or both (the classic RPC style of older SDKs, onsmqtt-api.md §2
//! "query ∪ form body"), the bound on a body, and `Format=JSON|XML` for the answer (§5: "XML
//! (`<Error>…</Error>`) if `Format=XML`").
//!
//! It only parses and renders: which parameters a signature covers is `auth`'s, what they mean
//! is `business`'s.

use bytes::Bytes;
use hyper::HeaderMap;
use serde_json::Value;

/// The largest body the simulator reads. OnsMqtt requests carry a few short strings; a body
/// beyond this is refused unread (413) rather than buffered. The gateway's own limit is not
/// documented; 1 MiB is our choice (README).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The parameters of a form body, decoded (`+` is a space, `%XX` a byte, as
/// `application/x-www-form-urlencoded` says), in the order they came, repeats kept. A body of any
/// other content type carries no parameters (it is still covered by a V3 body hash).
pub fn form_params(headers: &HeaderMap, body: &[u8]) -> Vec<(String, String)> {
    let is_form = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form || body.is_empty() {
        return Vec::new();
    }
    form_urlencoded::parse(body).into_owned().collect()
}

/// The format an answer is given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// `Format=XML` in any case answers XML; anything else (absent, `json`, `JSON`) JSON.
    pub fn requested(format: Option<&str>) -> Self {
        match format {
            Some(f) if f.eq_ignore_ascii_case("xml") => Format::Xml,
            _ => Format::Json,
        }
    }

    /// The content type the official SDKs look for: tea-openapi parses an error body as XML
    /// only when it is exactly `text/xml;charset=utf-8` (onsmqtt-api.md §5).
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json;charset=utf-8",
            Format::Xml => "text/xml;charset=utf-8",
        }
    }
}

const XML_DECLARATION: &str = "<?xml version='1.0' encoding='UTF-8'?>";

/// A JSON answer rendered as the gateway renders XML: the declaration, one root element, an
/// element per field; an array becomes its field's element repeated, one per item (as POP's XML
/// lists do). Object fields come in key order, which XML readers do not depend on.
pub fn json_to_xml(root: &str, json: &Value) -> Bytes {
    let mut out = String::from(XML_DECLARATION);
    element(&mut out, root, json);
    out.into()
}

fn element(out: &mut String, name: &str, value: &Value) {
    match value {
        Value::Array(items) => {
            for item in items {
                element(out, name, item);
            }
        }
        Value::Object(fields) => {
            out.push_str(&format!("<{name}>"));
            for (k, v) in fields {
                element(out, k, v);
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::Null => out.push_str(&format!("<{name}/>")),
        Value::String(s) => out.push_str(&format!("<{name}>{}</{name}>", escape(s))),
        other => out.push_str(&format!("<{name}>{other}</{name}>")),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_are_read_only_with_the_form_content_type() {
        let mut headers = HeaderMap::new();
        let body = b"ClientId=GID_a%40%40%40b+c&InstanceId=i&InstanceId=j";
        assert!(form_params(&headers, body).is_empty());
        headers.insert(
            "content-type",
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            form_params(&headers, body),
            [
                ("ClientId".to_owned(), "GID_a@@@b c".to_owned()),
                ("InstanceId".to_owned(), "i".to_owned()),
                ("InstanceId".to_owned(), "j".to_owned()),
            ]
        );
    }

    #[test]
    fn xml_nests_objects_repeats_arrays_and_escapes_text() {
        let json = serde_json::json!({
            "RequestId": "r1",
            "List": {"ClientIdList": ["a&b", "<c>"], "Total": "2"},
        });
        assert_eq!(
            json_to_xml("ListResponse", &json),
            "<?xml version='1.0' encoding='UTF-8'?><ListResponse><List><ClientIdList>a&amp;b</ClientIdList>\
             <ClientIdList>&lt;c&gt;</ClientIdList><Total>2</Total></List><RequestId>r1</RequestId></ListResponse>"
        );
        assert_eq!(Format::requested(Some("xMl")), Format::Xml);
        assert_eq!(Format::requested(Some("json")), Format::Json);
        assert_eq!(Format::requested(None), Format::Json);
    }
}
