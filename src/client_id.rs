//! `ClientId`: the MQTT client identifier a device credential is bound to, validated once.
//!
//! Rules (shared/reference/onsmqtt-api.md §7): `<GroupID>@@@<DeviceID>`; the GroupID starts with
//! `GID_` or `GID-` and has 7–64 characters; only letters, digits, `-` and `_` besides the
//! separator; at most 64 characters in all. Every command validates here before a call is spent,
//! and the simulator applies the same rules to answer `ParameterCheckFailed`.

use std::fmt;

/// Longest ClientId the broker accepts.
pub const MAX_LEN: usize = 64;
const SEPARATOR: &str = "@@@";

/// A ClientId that passed every rule.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

/// Why a ClientId was refused; each rule has its own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdError {
    #[error("ClientId is empty")]
    Empty,
    #[error("ClientId has {0} characters; at most 64 are allowed")]
    TooLong(usize),
    #[error("ClientId has no '@@@' separator between the group and the device")]
    NoSeparator,
    #[error("group '{0}' must start with 'GID_' or 'GID-'")]
    GroupPrefix(String),
    #[error("group '{0}' has {1} characters; a group has 7 to 64")]
    GroupLength(String, usize),
    #[error("device part after '@@@' is empty")]
    EmptyDevice,
    #[error("character {0:?} at position {1} is not allowed (only letters, digits, '-' and '_')")]
    IllegalCharacter(char, usize),
}

impl ClientId {
    pub fn parse(raw: &str) -> Result<Self, ClientIdError> {
        if raw.is_empty() {
            return Err(ClientIdError::Empty);
        }
        let chars = raw.chars().count();
        if chars > MAX_LEN {
            return Err(ClientIdError::TooLong(chars));
        }
        let Some((group, device)) = raw.split_once(SEPARATOR) else {
            return Err(ClientIdError::NoSeparator);
        };
        if !(group.starts_with("GID_") || group.starts_with("GID-")) {
            return Err(ClientIdError::GroupPrefix(group.to_owned()));
        }
        let group_len = group.chars().count();
        if !(7..=64).contains(&group_len) {
            return Err(ClientIdError::GroupLength(group.to_owned(), group_len));
        }
        if device.is_empty() {
            return Err(ClientIdError::EmptyDevice);
        }
        let device_start = group.len() + SEPARATOR.len();
        for (pos, c) in raw.char_indices() {
            let in_separator = pos >= group.len() && pos < device_start;
            if !(in_separator || c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(ClientIdError::IllegalCharacter(c, pos + 1));
            }
        }
        Ok(ClientId(raw.to_owned()))
    }

    /// A ClientId read back from where it was stored after [`ClientId::parse`] accepted it.
    pub(crate) fn from_stored(raw: &str) -> Self {
        ClientId(raw.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `GID_x@@@<device>`, validated.
    pub fn compose(group_id: &str, device_id: &str) -> Result<Self, ClientIdError> {
        Self::parse(&format!("{group_id}{SEPARATOR}{device_id}"))
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_has_its_own_error() {
        let cases: &[(&str, Result<(), ClientIdError>)] = &[
            ("GID_test@@@device-0001", Ok(())),
            ("GID-abc@@@a_b", Ok(())),
            ("", Err(ClientIdError::Empty)),
            (
                &format!("GID_test@@@{}", "x".repeat(54)),
                Err(ClientIdError::TooLong(65)),
            ),
            ("GID_testdevice", Err(ClientIdError::NoSeparator)),
            (
                "gid_test@@@d",
                Err(ClientIdError::GroupPrefix("gid_test".into())),
            ),
            (
                "GID_ab@@@d",
                Err(ClientIdError::GroupLength("GID_ab".into(), 6)),
            ),
            ("GID_test@@@", Err(ClientIdError::EmptyDevice)),
            (
                "GID_test@@@dev/1",
                Err(ClientIdError::IllegalCharacter('/', 15)),
            ),
            (
                "GID_te st@@@d",
                Err(ClientIdError::IllegalCharacter(' ', 7)),
            ),
            (
                "GID_test@@@a@@@b",
                Err(ClientIdError::IllegalCharacter('@', 13)),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(&ClientId::parse(raw).map(|_| ()), want, "{raw}");
        }
        let exactly_64 = format!("GID_test@@@{}", "x".repeat(53));
        assert!(ClientId::parse(&exactly_64).is_ok());
    }
}
