//! mqtt-provision: provisions ApsaraMQ for MQTT device credentials in bulk.
//!
//! Data flows one way:
//!
//! ```text
//! CSV ─▶ input ─▶ ingest ─▶ ledger ─▶ pipeline (pacer, worker, operation) ─▶ api ─▶ service
//!                              ▲                        │
//!                              └──────── writer ◀───────┘   ledger ─▶ report (summary, status, export)
//! ```
//!
//! The map, by concern:
//! - the command edge: [`cli`] (clap types and value parsers), [`plan`] (validated plans),
//!   [`run`] (process context and dispatch), [`commands`] (one module per command family),
//!   [`exit`] (the exit codes, named once), [`access`] (clients or a rehearsal simulator),
//!   [`events`] (the `--json` NDJSON events).
//! - the domain: [`client_id`] (ClientId rules), [`target`] (what a ledger item is about),
//!   [`secret`] (strings that never print themselves), [`ca`] (the CA verification certificate),
//!   [`terminal`] (untrusted text escaped before it reaches a terminal or a plain log).
//! - the data path: [`input`] (CSV rows), [`ingest`] (rows into the ledger), [`ledger`] (the
//!   only source of truth of a run), [`pipeline`] (claims, pacing, calls, outcomes, writer),
//!   [`retry`] (the one backoff policy), [`progress`] (bar or plain lines), [`report`].
//! - the other side: [`api`] (the OnsMqtt client: signing, typed calls, error classes, the
//!   credential chain and its renewal) and [`sim`] (the simulator: the same API from the server
//!   side, sharing the client's types and signing code, with STS, the ECS metadata service and
//!   a credentials URI for the chain).
//!
//! Nothing downstream reaches back upstream: the API client knows nothing of the ledger, the
//! ledger nothing of HTTP, the pipeline nothing of CSV.

pub mod access;
pub mod api;
pub mod budget;
pub mod ca;
pub mod cli;
pub mod client_id;
pub mod commands;
pub mod events;
pub mod exit;
pub mod ingest;
pub mod input;
pub mod ledger;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod report;
pub mod retry;
pub mod run;
pub mod secret;
pub mod sim;
pub mod target;
pub mod terminal;

/// This host's name, as the kernel has it ('' when it cannot be read): a fleet worker's record
/// and the pool of a host's default address name it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}
