//! Helpers shared by the integration tests: an in-process simulator and clients pointed at it.
#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Duration;

use mqtt_provision::api::{AccessKey, ClientConfig, Endpoint, OnsMqttClient, SignatureVersion};
use mqtt_provision::sim::{self, SimConfig, SimHandle};

pub async fn simulator(config: SimConfig) -> SimHandle {
    sim::start(config).await.expect("simulator starts")
}

pub fn client_for(
    sim: &SimHandle,
    version: SignatureVersion,
    source: Option<IpAddr>,
) -> OnsMqttClient {
    client_with_key(sim, sim.keys[0].clone(), version, source)
}

pub fn client_with_key(
    sim: &SimHandle,
    key: AccessKey,
    version: SignatureVersion,
    source: Option<IpAddr>,
) -> OnsMqttClient {
    let mut config = ClientConfig::new(Endpoint::parse(&sim.endpoint()).unwrap());
    config.signature = version;
    config.source_address = source;
    config.read_timeout = Duration::from_millis(800);
    config.connect_timeout = Duration::from_millis(800);
    OnsMqttClient::new(config, key).unwrap()
}
