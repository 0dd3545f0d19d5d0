//! The ten OnsMqtt 2020-04-20 actions: names, HTTP methods, parameters and response bodies.
//!
//! Methods and parameter names are the official SDK's (shared/reference/onsmqtt-api.md §1, §4):
//! every parameter travels in the query string and the body is empty. The response structs are
//! shared with the simulator, which serialises exactly what the client deserialises.

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// API version of every action.
pub const VERSION: &str = "2020-04-20";

/// The CaSn limit of the certificate APIs (shared/reference/onsmqtt-api.md §4).
pub const MAX_CA_SN_BYTES: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    RegisterDeviceCredential,
    GetDeviceCredential,
    UnRegisterDeviceCredential,
    RefreshDeviceCredential,
    ListDeviceCredentialClientId,
    GetRegisterCode,
    InactivateDeviceCertificate,
    ActiveDeviceCertificate,
    GetDeviceCertificate,
    ListDeviceCertificate,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::RegisterDeviceCredential,
        Action::GetDeviceCredential,
        Action::UnRegisterDeviceCredential,
        Action::RefreshDeviceCredential,
        Action::ListDeviceCredentialClientId,
        Action::GetRegisterCode,
        Action::InactivateDeviceCertificate,
        Action::ActiveDeviceCertificate,
        Action::GetDeviceCertificate,
        Action::ListDeviceCertificate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::RegisterDeviceCredential => "RegisterDeviceCredential",
            Action::GetDeviceCredential => "GetDeviceCredential",
            Action::UnRegisterDeviceCredential => "UnRegisterDeviceCredential",
            Action::RefreshDeviceCredential => "RefreshDeviceCredential",
            Action::ListDeviceCredentialClientId => "ListDeviceCredentialClientId",
            Action::GetRegisterCode => "GetRegisterCode",
            Action::InactivateDeviceCertificate => "InactivateDeviceCertificate",
            Action::ActiveDeviceCertificate => "ActiveDeviceCertificate",
            Action::GetDeviceCertificate => "GetDeviceCertificate",
            Action::ListDeviceCertificate => "ListDeviceCertificate",
        }
    }

    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The method the official SDK uses (onsmqtt-api.md §1).
    pub fn method(self) -> &'static str {
        match self {
            Action::GetRegisterCode
            | Action::GetDeviceCertificate
            | Action::ListDeviceCertificate => "GET",
            _ => "POST",
        }
    }

    /// The index of this action in [`Action::ALL`], for per-action arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A device's access credential, as Register, Get and Refresh return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceCredential {
    pub client_id: String,
    pub instance_id: String,
    pub device_access_key_id: String,
    pub device_access_key_secret: Secret,
    pub create_time: i64,
    pub update_time: i64,
}

/// `{RequestId, DeviceCredential}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceCredentialResponse {
    pub request_id: String,
    pub device_credential: DeviceCredential,
}

/// `{RequestId}`: UnRegisterDeviceCredential.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EmptyResponse {
    pub request_id: String,
}

/// ListDeviceCredentialClientId's page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClientIdPage {
    pub client_id_list: Vec<String>,
    #[serde(default)]
    pub next_token: Option<String>,
    pub page_no: String,
    pub page_size: String,
    pub total: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClientIdListResponse {
    pub request_id: String,
    pub device_credential_client_id_list: ClientIdPage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegisterCodeResponse {
    pub request_id: String,
    pub register_code: String,
}

/// Inactivate/ActiveDeviceCertificate: `{RequestId, DeviceSn}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceSnResponse {
    pub request_id: String,
    pub device_sn: String,
}

/// A device certificate; `Status` is "0" inactive, "1" active; times are ms as strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceCertificate {
    pub ca_sn: String,
    pub device_content: String,
    pub device_name: String,
    pub device_sn: String,
    pub status: String,
    pub valid_begin: String,
    pub valid_end: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceCertificateResponse {
    pub request_id: String,
    pub data: DeviceCertificate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceCertificatePage {
    #[serde(rename = "DeviceCertificateVOS")]
    pub device_certificate_vos: Vec<DeviceCertificate>,
    pub page_no: i64,
    pub page_size: i64,
    pub total: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceCertificateListResponse {
    pub request_id: String,
    pub data: DeviceCertificatePage,
}

/// The error body every failure carries (onsmqtt-api.md §5).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ErrorBody {
    #[serde(rename = "RequestId", alias = "requestId", default)]
    pub request_id: Option<String>,
    #[serde(rename = "HostId", default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    #[serde(rename = "Code", alias = "code", default)]
    pub code: Option<String>,
    #[serde(rename = "Message", alias = "message", default)]
    pub message: Option<String>,
    #[serde(rename = "Recommend", default, skip_serializing_if = "Option::is_none")]
    pub recommend: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_methods_match_the_sdk() {
        for a in Action::ALL {
            assert_eq!(Action::from_name(a.name()), Some(a));
            assert_eq!(Action::ALL[a.index()], a);
        }
        assert_eq!(Action::RegisterDeviceCredential.method(), "POST");
        assert_eq!(Action::InactivateDeviceCertificate.method(), "POST");
        assert_eq!(Action::GetRegisterCode.method(), "GET");
        assert_eq!(Action::ListDeviceCertificate.method(), "GET");
        assert_eq!(Action::from_name("RevokeDeviceCredential"), None);
    }

    #[test]
    fn credential_debug_hides_the_secret() {
        let c = DeviceCredential {
            client_id: "GID_test@@@1".into(),
            instance_id: "i".into(),
            device_access_key_id: "DC.id".into(),
            device_access_key_secret: Secret::new("DC.topsecret"),
            create_time: 1,
            update_time: 1,
        };
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
