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
    /// The service does not know it (`fetch`: DeviceCredentialNotFound; certificates: FindDeviceBySnError).
    NotFound,
    /// Its input or its parameters were refused.
    Invalid,
    /// Gave up after the retry budget, or an item-level error.
    Failed,
}

impl ItemState {
    pub const ALL: [ItemState; 7] = [
        ItemState::Pending,
        ItemState::Registered,
        ItemState::Existing,
        ItemState::Fetched,
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
            ItemState::NotFound => "not_found",
            ItemState::Invalid => "invalid",
            ItemState::Failed => "failed",
        }
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
