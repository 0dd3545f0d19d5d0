//! The MQTT login a device derives from its credential in the unique-certificate-per-device
//! ("DeviceCredential") mode (shared/reference/onsmqtt-api.md §6).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// `DeviceCredential|<DeviceAccessKeyId>|<InstanceId>`.
pub fn username(device_access_key_id: &str, instance_id: &str) -> String {
    format!("DeviceCredential|{device_access_key_id}|{instance_id}")
}

/// Base64(HMAC-SHA1(key = DeviceAccessKeySecret, message = ClientId)).
pub fn password(device_access_key_secret: &str, client_id: &str) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(device_access_key_secret.as_bytes()).expect("any key");
    mac.update(client_id.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}
