//! One call, typed: its action, its parameters (named as the official SDK names them,
//! shared/reference/onsmqtt-api.md §4) and the response type it decodes to. Each action's
//! parameters are built here and nowhere else; the pipeline and the single-call commands ask
//! this module for a [`Request`] and hand it to the client or the paced worker.

use std::marker::PhantomData;

use super::actions::*;

/// A call ready to be signed and sent, any number of times (each attempt is signed afresh).
#[derive(Debug, Clone)]
pub struct Request<T> {
    action: Action,
    params: Vec<(&'static str, String)>,
    response: PhantomData<fn() -> T>,
}

impl<T> Request<T> {
    fn new(action: Action, params: Vec<(&'static str, String)>) -> Self {
        Request {
            action,
            params,
            response: PhantomData,
        }
    }

    pub fn action(&self) -> Action {
        self.action
    }

    /// The parameters as the signer takes them.
    pub fn params(&self) -> Vec<(&str, &str)> {
        self.params.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// `ClientId` and `InstanceId`: the parameters of every credential action.
fn credential<T>(action: Action, instance_id: &str, client_id: &str) -> Request<T> {
    Request::new(
        action,
        vec![
            ("ClientId", client_id.to_owned()),
            ("InstanceId", instance_id.to_owned()),
        ],
    )
}

/// `CaSn`, `DeviceSn` and `MqttInstanceId`: the parameters of every device-certificate action.
fn certificate<T>(action: Action, instance_id: &str, device_sn: &str, ca_sn: &str) -> Request<T> {
    Request::new(
        action,
        vec![
            ("CaSn", ca_sn.to_owned()),
            ("DeviceSn", device_sn.to_owned()),
            ("MqttInstanceId", instance_id.to_owned()),
        ],
    )
}

/// Register, Get and Refresh all answer with the device's credential.
pub type CredentialRequest = Request<DeviceCredentialResponse>;

pub fn register_device_credential(instance: &str, client_id: &str) -> CredentialRequest {
    credential(Action::RegisterDeviceCredential, instance, client_id)
}

pub fn get_device_credential(instance: &str, client_id: &str) -> CredentialRequest {
    credential(Action::GetDeviceCredential, instance, client_id)
}

pub fn refresh_device_credential(instance: &str, client_id: &str) -> CredentialRequest {
    credential(Action::RefreshDeviceCredential, instance, client_id)
}

pub fn unregister_device_credential(instance: &str, client_id: &str) -> Request<EmptyResponse> {
    credential(Action::UnRegisterDeviceCredential, instance, client_id)
}

pub fn list_device_credential_client_id(
    instance_id: &str,
    group_id: &str,
    page_size: u32,
    next_token: Option<&str>,
) -> Request<ClientIdListResponse> {
    let mut params = vec![
        ("GroupId", group_id.to_owned()),
        ("InstanceId", instance_id.to_owned()),
        ("PageSize", page_size.to_string()),
    ];
    if let Some(token) = next_token {
        params.push(("NextToken", token.to_owned()));
    }
    Request::new(Action::ListDeviceCredentialClientId, params)
}

pub fn get_register_code(instance_id: &str) -> Request<RegisterCodeResponse> {
    Request::new(
        Action::GetRegisterCode,
        vec![("MqttInstanceId", instance_id.to_owned())],
    )
}

pub fn inactivate_device_certificate(
    instance: &str,
    device_sn: &str,
    ca_sn: &str,
) -> Request<DeviceSnResponse> {
    certificate(
        Action::InactivateDeviceCertificate,
        instance,
        device_sn,
        ca_sn,
    )
}

pub fn active_device_certificate(
    instance: &str,
    device_sn: &str,
    ca_sn: &str,
) -> Request<DeviceSnResponse> {
    certificate(Action::ActiveDeviceCertificate, instance, device_sn, ca_sn)
}

pub fn get_device_certificate(
    instance: &str,
    device_sn: &str,
    ca_sn: &str,
) -> Request<DeviceCertificateResponse> {
    certificate(Action::GetDeviceCertificate, instance, device_sn, ca_sn)
}

pub fn list_device_certificate(
    instance_id: &str,
    page_no: u32,
    page_size: u32,
) -> Request<DeviceCertificateListResponse> {
    Request::new(
        Action::ListDeviceCertificate,
        vec![
            ("MqttInstanceId", instance_id.to_owned()),
            ("PageNo", page_no.to_string()),
            ("PageSize", page_size.to_string()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_the_sdks_names() {
        let r = register_device_credential("post-cn-x", "GID_a@@@b");
        assert_eq!(r.action(), Action::RegisterDeviceCredential);
        assert_eq!(
            r.params(),
            [("ClientId", "GID_a@@@b"), ("InstanceId", "post-cn-x")]
        );
        let c = inactivate_device_certificate("post-cn-x", "SN", "CA");
        assert_eq!(
            c.params(),
            [
                ("CaSn", "CA"),
                ("DeviceSn", "SN"),
                ("MqttInstanceId", "post-cn-x")
            ]
        );
        let l = list_device_credential_client_id("i", "GID_a", 10, Some("20"));
        assert_eq!(l.params().last(), Some(&("NextToken", "20")));
    }
}
