//! The business rule of each action, applied to a call the gate admitted and no fault replaced:
//! the parameters it requires (`Missing{Name}` when absent), the checks the service makes before
//! the registry is touched, the registry change, and the JSON body of the answer. One function
//! per family of actions: credentials, ClientId listing, register code, certificates,
//! certificate listing.
//!
//! It never sees flow control, signatures or faults (settled before a call gets here), nor HTTP:
//! it returns the body of a success or the [`SimError`] to answer.

use bytes::Bytes;
use rand::rngs::StdRng;
use serde::Serialize;

use super::auth::Incoming;
use super::registry::{self, BusinessResult, Registry, StoredCredential};
use super::{DupMode, SimConfig, SimError};
use crate::api::actions::*;
use crate::api::sign;
use crate::client_id::ClientId;

/// What the simulated account holds and how its service behaves.
pub struct Rules {
    instances: Vec<String>,
    dup_mode: DupMode,
    quota: Option<usize>,
}

impl Rules {
    pub fn new(config: &SimConfig) -> Self {
        Rules {
            instances: config.instance_ids(),
            dup_mode: config.dup_mode,
            quota: config.quota,
        }
    }

    /// The instances of the account.
    pub fn instances(&self) -> &[String] {
        &self.instances
    }

    fn has_instance(&self, instance: &str) -> bool {
        self.instances.iter().any(|i| i == instance)
    }

    /// The credential APIs refuse an unknown instance as a permission failure...
    fn credential_instance(&self, instance: &str) -> Result<(), SimError> {
        self.has_instance(instance).then_some(()).ok_or_else(|| {
            SimError::new(
                400,
                "InstancePermissionCheckFailed",
                format!(
                    "Instance permission check failed: {instance} is not an instance of this account."
                ),
            )
        })
    }

    /// ...the certificate APIs as not found, with a 500.
    fn certificate_instance(&self, instance: &str) -> Result<(), SimError> {
        self.has_instance(instance).then_some(()).ok_or_else(|| {
            SimError::new(
                500,
                "MqttInstanceNotFound",
                format!("The MQTT instance {instance} is not found."),
            )
        })
    }
}

/// One admitted call and everything its rule may read or change.
pub struct Call<'a, 'r> {
    pub rules: &'a Rules,
    pub registry: &'a mut Registry,
    /// Draws the values of new credentials.
    pub rng: &'a mut StdRng,
    pub req: &'a Incoming<'r>,
    pub request_id: &'a str,
}

impl<'a> Call<'a, '_> {
    /// Applies `action`'s rule; the body of the answer, or the error to answer.
    pub fn apply(mut self, action: Action) -> Result<Bytes, SimError> {
        match action {
            Action::RegisterDeviceCredential
            | Action::GetDeviceCredential
            | Action::RefreshDeviceCredential
            | Action::UnRegisterDeviceCredential => self.credential(action),
            Action::ListDeviceCredentialClientId => self.client_ids(),
            Action::GetRegisterCode => self.register_code(),
            Action::InactivateDeviceCertificate
            | Action::ActiveDeviceCertificate
            | Action::GetDeviceCertificate => self.certificate(action),
            Action::ListDeviceCertificate => self.certificate_list(),
        }
    }

    /// A required parameter: present and not empty, else `Missing{name}`.
    fn param(&self, name: &str) -> Result<&'a str, SimError> {
        self.req
            .param(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                SimError::new(
                    400,
                    &format!("Missing{name}"),
                    format!("{name} is mandatory for this action."),
                )
            })
    }

    fn request_id(&self) -> String {
        self.request_id.to_owned()
    }

    /// Register, Get, Refresh and UnRegisterDeviceCredential.
    fn credential(&mut self, action: Action) -> Result<Bytes, SimError> {
        let client_id = self.param("ClientId")?;
        let instance = self.param("InstanceId")?;
        self.rules.credential_instance(instance)?;
        if let Err(e) = ClientId::parse(client_id) {
            return Err(SimError::new(
                400,
                "ParameterCheckFailed",
                format!("Parameter check failed: ClientId {e}"),
            ));
        }
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let registry = &mut *self.registry;
        let credential = match action {
            Action::RegisterDeviceCredential => registry.register(
                instance,
                client_id,
                self.rules.dup_mode,
                self.rules.quota,
                now_ms,
                self.rng,
            ),
            Action::GetDeviceCredential => registry
                .get(instance, client_id)
                .cloned()
                .ok_or_else(registry::not_found),
            Action::RefreshDeviceCredential => {
                registry.refresh(instance, client_id, now_ms, self.rng)
            }
            _ => {
                refused(registry.unregister(instance, client_id))?;
                return json(&EmptyResponse {
                    request_id: self.request_id(),
                });
            }
        };
        let c = refused(credential)?;
        json(&DeviceCredentialResponse {
            request_id: self.request_id(),
            device_credential: to_wire(instance, client_id, &c),
        })
    }

    /// ListDeviceCredentialClientId: pages by `NextToken` (an offset) or, without one, `PageNo`.
    fn client_ids(&self) -> Result<Bytes, SimError> {
        let group = self.param("GroupId")?;
        let instance = self.param("InstanceId")?;
        self.rules.credential_instance(instance)?;
        let size = page_size(self.param("PageSize")?)?;
        let offset = match self.req.param("NextToken").filter(|t| !t.is_empty()) {
            Some(t) => t.parse::<usize>().map_err(|_| {
                SimError::new(400, "InvalidParameter.NextToken", "NextToken is not valid.")
            })?,
            None => {
                (self
                    .req
                    .param("PageNo")
                    .and_then(|p| p.parse::<usize>().ok())
                    .unwrap_or(1)
                    .max(1)
                    - 1)
                    * size
            }
        };
        let (ids, total) = self.registry.list_client_ids(instance, group, offset, size);
        let next = offset + ids.len();
        json(&ClientIdListResponse {
            request_id: self.request_id(),
            device_credential_client_id_list: ClientIdPage {
                client_id_list: ids,
                next_token: (next < total).then(|| next.to_string()),
                page_no: (offset / size + 1).to_string(),
                page_size: size.to_string(),
                total: total.to_string(),
            },
        })
    }

    fn register_code(&self) -> Result<Bytes, SimError> {
        let instance = self.param("MqttInstanceId")?;
        self.rules.certificate_instance(instance)?;
        // Stable per instance, as the console shows one code per instance.
        let code =
            sign::sha256_hex(format!("register-code:{instance}").as_bytes())[..32].to_owned();
        json(&RegisterCodeResponse {
            request_id: self.request_id(),
            register_code: code,
        })
    }

    /// Inactivate, Active and GetDeviceCertificate.
    fn certificate(&mut self, action: Action) -> Result<Bytes, SimError> {
        let instance = self.param("MqttInstanceId")?;
        let device_sn = self.param("DeviceSn")?;
        let ca_sn = self.param("CaSn")?;
        self.rules.certificate_instance(instance)?;
        if ca_sn.len() > MAX_CA_SN_BYTES {
            return Err(SimError::new(
                400,
                "ParameterFieldCheckFailed",
                format!("CaSn exceeds {MAX_CA_SN_BYTES} bytes."),
            ));
        }
        if action == Action::GetDeviceCertificate {
            let data = refused(
                self.registry
                    .certificate(instance, ca_sn, device_sn)
                    .cloned(),
            )?;
            return json(&DeviceCertificateResponse {
                request_id: self.request_id(),
                data,
            });
        }
        refused(self.registry.set_certificate_status(
            instance,
            ca_sn,
            device_sn,
            action == Action::ActiveDeviceCertificate,
        ))?;
        json(&DeviceSnResponse {
            request_id: self.request_id(),
            device_sn: device_sn.to_owned(),
        })
    }

    /// ListDeviceCertificate: pages by `PageNo` from 1.
    fn certificate_list(&self) -> Result<Bytes, SimError> {
        let instance = self.param("MqttInstanceId")?;
        self.rules.certificate_instance(instance)?;
        let page_no = self
            .param("PageNo")?
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                SimError::new(
                    400,
                    "ParameterFieldCheckFailed",
                    "PageNo must be a positive integer.",
                )
            })?;
        let size = page_size(self.param("PageSize")?)?;
        let (list, total) = self.registry.list_certificates(instance, page_no, size);
        json(&DeviceCertificateListResponse {
            request_id: self.request_id(),
            data: DeviceCertificatePage {
                device_certificate_vos: list,
                page_no: page_no as i64,
                page_size: size as i64,
                total: total as i64,
            },
        })
    }
}

fn json(body: &impl Serialize) -> Result<Bytes, SimError> {
    Ok(Bytes::from(
        serde_json::to_vec(body).expect("responses serialise"),
    ))
}

/// A registry refusal as the service answers it: 400, but 500 for `FindDeviceBySnError`.
fn refused<T>(r: BusinessResult<T>) -> Result<T, SimError> {
    r.map_err(|(code, message)| {
        let status = if code == "FindDeviceBySnError" {
            500
        } else {
            400
        };
        SimError::new(status, code, message)
    })
}

fn page_size(raw: &str) -> Result<usize, SimError> {
    raw.parse::<usize>()
        .ok()
        .filter(|n| (1..=100).contains(n))
        .ok_or_else(|| {
            SimError::new(
                400,
                "ParameterFieldCheckFailed",
                "PageSize must be between 1 and 100.",
            )
        })
}

fn to_wire(instance: &str, client_id: &str, c: &StoredCredential) -> DeviceCredential {
    DeviceCredential {
        client_id: client_id.to_owned(),
        instance_id: instance.to_owned(),
        device_access_key_id: c.device_access_key_id.clone(),
        device_access_key_secret: c.device_access_key_secret.clone(),
        create_time: c.create_time,
        update_time: c.update_time,
    }
}
