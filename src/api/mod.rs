//! The OnsMqtt OpenAPI client: signing ([`sign`]), actions and their bodies ([`actions`]),
//! error classes ([`error`]), the AccessKey chain ([`credentials`]), the endpoint
//! ([`endpoint`]), typed calls with each action's parameters ([`request`]), the HTTP client
//! ([`client`]) and the device's MQTT login ([`mqtt`]).
//!
//! It knows nothing of CSV files or ledgers: it sends one call and says what came back.

pub mod actions;
pub mod client;
pub mod clock;
pub mod credentials;
pub mod endpoint;
pub mod error;
pub mod mqtt;
pub mod request;
pub mod sign;

pub use actions::{Action, DeviceCredential};
pub use client::{ClientConfig, OnsMqttClient};
pub use credentials::AccessKey;
pub use endpoint::Endpoint;
pub use error::{ApiError, ErrorClass};
pub use request::Request;
pub use sign::SignatureVersion;
