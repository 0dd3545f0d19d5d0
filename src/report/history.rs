//! `show`: one target's history in time order and what it holds now. It names credentials by
//! their DeviceAccessKeyId only: no secret, sealed or plain, is ever read for it.

use serde::Serialize;

use crate::ledger::{DeviceNow, HistoryEvent, Ledger, LedgerError};
use crate::target::Target;
use crate::terminal::escape;

#[derive(Debug, Clone, Serialize)]
pub struct History {
    /// The ClientId, or `DeviceSn<TAB>CaSn` as the ledger keys a certificate.
    pub target: String,
    /// What the device holds now (credential targets only).
    pub now: Option<DeviceNow>,
    pub events: Vec<HistoryEvent>,
}

fn at(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl History {
    pub async fn load(ledger: &Ledger, target: &Target) -> Result<Self, LedgerError> {
        let key = target.key();
        Ok(History {
            now: ledger.device(&key).await?,
            events: ledger.history(&key).await?,
            target: key,
        })
    }

    pub fn render(&self) -> String {
        // The target, codes, messages and file names come from the input and the server.
        let shown = escape(&self.target.replace('\t', " / ")).into_owned();
        let mut out = match &self.now {
            Some(now) => match &now.device_access_key_id {
                Some(key) => format!(
                    "{shown}: holds {key} ({}, from {})\n",
                    now.state, now.operation
                ),
                None => format!(
                    "{shown}: holds no credential ({}, by {})\n",
                    now.state, now.operation
                ),
            },
            None => format!("{shown}\n"),
        };
        for e in &self.events {
            out.push_str(&format!(
                "  {}  {:<15} {:<11} attempts {}",
                at(e.at_ms),
                e.operation,
                e.state,
                e.attempts
            ));
            if let Some(key) = &e.key_id {
                out.push_str(&format!("  {}", escape(key)));
            }
            if let Some(code) = &e.code {
                out.push_str(&format!("  {}", escape(code)));
                if let Some(message) = &e.message {
                    out.push_str(&format!(": {}", escape(message)));
                }
            }
            if let Some(request) = &e.request_id {
                out.push_str(&format!("  RequestId {}", escape(request)));
            }
            if let (Some(file), Some(line)) = (&e.file, e.line) {
                out.push_str(&format!("  ({}:{line})", escape(file)));
            }
            out.push('\n');
        }
        out
    }
}
