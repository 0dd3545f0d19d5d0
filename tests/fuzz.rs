//! Property tests: no input makes the CSV reader or the signer panic, and whatever the client
//! signs, the simulator's verifier accepts (and rejects once a byte changes).

use mqtt_provision::api::sign;
use mqtt_provision::client_id::ClientId;
use mqtt_provision::input::{CsvRows, InputSpec};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn csv_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048), no_header in any::<bool>(), group in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        std::fs::write(&path, &bytes).unwrap();
        let spec = InputSpec { column: None, group_id: group.then(|| "GID_fuzz".to_owned()), no_header, certificates: false };
        if let Ok(rows) = CsvRows::open(&path, &spec) {
            for row in rows.take(10_000) {
                let _ = row;
            }
        }
    }

    #[test]
    fn csv_text_with_commas_quotes_and_newlines(text in "[a-zA-Z0-9_@\",\r\n -]{0,400}") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        std::fs::write(&path, format!("client_id\n{text}")).unwrap();
        if let Ok(rows) = CsvRows::open(&path, &InputSpec::default()) {
            for row in rows {
                let _ = row;
            }
        }
    }

    #[test]
    fn client_id_parse_never_panics(s in "\\PC{0,80}") {
        let _ = ClientId::parse(&s);
    }

    #[test]
    fn signatures_are_deterministic_and_sensitive(key in "\\PC{0,40}", value in "\\PC{0,60}", secret in "\\PC{1,40}") {
        let params = [(key.as_str(), value.as_str()), ("InstanceId", "post-cn-x")];
        let a = sign::v1_string_to_sign("POST", params.iter().copied());
        prop_assert_eq!(sign::v1_signature(&secret, &a), sign::v1_signature(&secret, &a));
        let headers = [("host", "h"), ("x-acs-action", "GetDeviceCredential")];
        let (canonical, _) = sign::v3_canonical_request(&sign::V3Parts { method: "POST", path: "/", query: &params, headers: &headers, body_sha256: sign::EMPTY_BODY_SHA256 });
        let s1 = sign::v3_signature(&secret, &sign::v3_string_to_sign(&canonical));
        let changed = format!("{value}x");
        let params2 = [(key.as_str(), changed.as_str()), ("InstanceId", "post-cn-x")];
        let (canonical2, _) = sign::v3_canonical_request(&sign::V3Parts { method: "POST", path: "/", query: &params2, headers: &headers, body_sha256: sign::EMPTY_BODY_SHA256 });
        prop_assert_ne!(s1, sign::v3_signature(&secret, &sign::v3_string_to_sign(&canonical2)));
        let _ = sign::parse_v3_authorization(&value);
    }
}
