//! The states a ledger item can be in.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemState {
    /// Not finished: never sent, interrupted, or halted before its turn.
    Pending,
    /// We created its credential (Register succeeded, or an earlier ambiguous Register of ours
    /// turned out to have worked).
    Registered,
    /// It already had a credential, which was fetched.
    Existing,
    /// Fetched by `fetch`.
    Fetched,
    /// Its secret was rotated by `rotate` (RefreshDeviceCredential).
    Rotated,
    /// Its credential was unregistered by `revoke`.
    Revoked,
    /// Its device certificate was switched off (`cert inactivate`).
    Inactivated,
    /// Its device certificate was switched on (`cert activate`).
    Activated,
    /// The service does not know it (`fetch`: DeviceCredentialNotFound; certificates: FindDeviceBySnError).
    NotFound,
    /// Its input or its parameters were refused.
    Invalid,
    /// Gave up after the retry budget, or an item-level error.
    Failed,
}

impl ItemState {
    pub const ALL: [ItemState; 11] = [
        ItemState::Pending,
        ItemState::Registered,
        ItemState::Existing,
        ItemState::Fetched,
        ItemState::Rotated,
        ItemState::Revoked,
        ItemState::Inactivated,
        ItemState::Activated,
        ItemState::NotFound,
        ItemState::Invalid,
        ItemState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::Registered => "registered",
            ItemState::Existing => "existing",
            ItemState::Fetched => "fetched",
            ItemState::Rotated => "rotated",
            ItemState::Revoked => "revoked",
            ItemState::Inactivated => "inactivated",
            ItemState::Activated => "activated",
            ItemState::NotFound => "not_found",
            ItemState::Invalid => "invalid",
            ItemState::Failed => "failed",
        }
    }

    /// The operation reached its goal for this target (`not_found` is a named outcome, not a
    /// success, and not a failure of the run either).
    pub fn is_success(self) -> bool {
        !matches!(
            self,
            ItemState::Pending | ItemState::NotFound | ItemState::Invalid | ItemState::Failed
        )
    }

    pub fn parse(s: &str) -> Option<ItemState> {
        ItemState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
