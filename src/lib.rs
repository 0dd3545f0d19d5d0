//! mqtt-provision: provisions ApsaraMQ for MQTT device credentials in bulk.
//!
//! Data flows one way: CSV ([`input`]) → ledger ([`ledger`]) → dispatcher with pacing and
//! concurrency ([`pipeline`]) → OnsMqtt API ([`api`]) → outcome → writer → ledger → report
//! ([`report`]). The simulator ([`sim`]) is the same API seen from the server side; it shares the
//! client's types and signing code. [`cli`] turns flags into validated plans; [`run`] executes
//! them and maps every error to a documented exit code.

pub mod api;
pub mod ca;
pub mod cli;
pub mod client_id;
pub mod input;
pub mod ledger;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod run;
pub mod secret;
pub mod sim;
