//! `Target`: what one ledger item is about — a device's [`ClientId`] for the credential
//! operations, or a device certificate `{device_sn, ca_sn}` for the certificate operations.
//!
//! Input produces targets, the ledger stores them under a key, the pipeline calls the API for
//! them; all three speak this type, so none reaches into another to learn what a target is.
//! The ledger key is the ClientId itself, or `<DeviceSn>\t<CaSn>` (neither part may hold a
//! control character, so the tab cannot be ambiguous); it is the ledger's stored format and
//! never changes.

use std::fmt;

use crate::api::actions::MAX_CA_SN_BYTES;
use crate::client_id::ClientId;

/// A device certificate, as the certificate APIs name one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertificateId {
    pub device_sn: String,
    pub ca_sn: String,
}

impl CertificateId {
    /// Checked before any call is spent: both parts present, CaSn within the API's limit.
    pub fn new(device_sn: &str, ca_sn: &str) -> Result<Self, String> {
        if device_sn.is_empty() {
            return Err("device_sn is empty".into());
        }
        if ca_sn.is_empty() {
            return Err("ca_sn is empty".into());
        }
        if ca_sn.len() > MAX_CA_SN_BYTES {
            return Err(format!(
                "ca_sn has {} bytes; at most {MAX_CA_SN_BYTES} are allowed",
                ca_sn.len()
            ));
        }
        if device_sn.chars().chain(ca_sn.chars()).any(char::is_control) {
            return Err("device_sn and ca_sn must not contain control characters".into());
        }
        Ok(CertificateId {
            device_sn: device_sn.to_owned(),
            ca_sn: ca_sn.to_owned(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Device(ClientId),
    Certificate(CertificateId),
}

impl Target {
    /// The key the ledger stores the target under.
    pub fn key(&self) -> String {
        match self {
            Target::Device(id) => id.as_str().to_owned(),
            Target::Certificate(c) => format!("{}\t{}", c.device_sn, c.ca_sn),
        }
    }

    /// The target a ledger key stands for. Keys were validated when they were stored, so this
    /// does not validate them again.
    pub fn from_key(key: &str) -> Target {
        match key.split_once('\t') {
            Some((device_sn, ca_sn)) => Target::Certificate(CertificateId {
                device_sn: device_sn.to_owned(),
                ca_sn: ca_sn.to_owned(),
            }),
            None => Target::Device(ClientId::from_stored(key)),
        }
    }

    /// The ClientId of a device target.
    pub fn client_id(&self) -> Option<&ClientId> {
        match self {
            Target::Device(id) => Some(id),
            Target::Certificate(_) => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Device(id) => f.write_str(id.as_str()),
            Target::Certificate(c) => write!(f, "{} (CA {})", c.device_sn, c.ca_sn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_keep_the_stored_format() {
        let device = Target::Device(ClientId::parse("GID_test@@@a").unwrap());
        assert_eq!(device.key(), "GID_test@@@a");
        assert_eq!(Target::from_key(&device.key()), device);
        let cert = Target::Certificate(CertificateId::new("sn-1", "ca-1").unwrap());
        assert_eq!(cert.key(), "sn-1\tca-1");
        assert_eq!(Target::from_key(&cert.key()), cert);
    }

    #[test]
    fn certificate_ids_are_checked_before_any_call() {
        assert!(CertificateId::new("", "ca").is_err());
        assert!(CertificateId::new("sn", "").is_err());
        assert!(CertificateId::new("sn", &"c".repeat(MAX_CA_SN_BYTES)).is_ok());
        let long = CertificateId::new("sn", &"c".repeat(MAX_CA_SN_BYTES + 1)).unwrap_err();
        assert!(long.contains("129 bytes"), "{long}");
        assert!(CertificateId::new("s\tn", "ca").is_err());
    }
}
