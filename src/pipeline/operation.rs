//! Operations: what one target needs done, call by call. The pipeline is generic over them.
//!
//! An operation provides: its ledger name; whether its calls change something that a repeat
//! could make worse (then the claim records `maybe_applied` before sending, and a resumed target
//! is reconciled first); the first action it sends for a target (so the dispatcher can pace it);
//! and `execute`, which turns one target into one [`OutcomeRecord`] with paced calls. Retries,
//! throttling, halts and the ledger are the pipeline's; an operation only decides what its
//! answers mean.

use crate::api::actions::{Action, DeviceCredentialResponse, DeviceSnResponse, EmptyResponse};
use crate::api::{ApiError, DeviceCredential, ErrorClass};
use crate::input::split_certificate_target;
use crate::ledger::{ItemState, OutcomeRecord, WorkItem};
use crate::secret::Secret;

use super::{CallError, Worker};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// RegisterDeviceCredential, never causing a second credential for a device.
    Register {
        /// GetDeviceCredential before the first Register (devices may already be live).
        check_existing: bool,
    },
    /// GetDeviceCredential: credentials of devices registered elsewhere, or a lost export.
    Fetch,
    /// GetDeviceCredential (the secret being replaced), then RefreshDeviceCredential.
    Rotate,
    /// UnRegisterDeviceCredential.
    Revoke,
    /// InactivateDeviceCertificate.
    CertInactivate,
    /// ActiveDeviceCertificate.
    CertActivate,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Register { .. } => "register",
            Operation::Fetch => "fetch",
            Operation::Rotate => "rotate",
            Operation::Revoke => "revoke",
            Operation::CertInactivate => "cert-inactivate",
            Operation::CertActivate => "cert-activate",
        }
    }

    /// The operation a ledger name stands for (`register` without `--check-existing`).
    pub fn from_name(name: &str) -> Option<Operation> {
        [
            Operation::Register {
                check_existing: false,
            },
            Operation::Fetch,
            Operation::Rotate,
            Operation::Revoke,
            Operation::CertInactivate,
            Operation::CertActivate,
        ]
        .into_iter()
        .find(|o| o.name() == name)
    }

    /// Targets are device certificates (`device_sn, ca_sn`) rather than ClientIds.
    pub fn targets_certificates(self) -> bool {
        matches!(self, Operation::CertInactivate | Operation::CertActivate)
    }

    /// Whether a repeated call could do harm, so a possibly-sent call must be reconciled before
    /// it is sent again. Register could issue a second credential; Revoke is reconciled by its
    /// own not-found answer. Fetch reads; Rotate twice only rotates twice (the last secret is
    /// the one stored); certificate status changes are idempotent.
    pub fn marks_effect(self) -> bool {
        matches!(self, Operation::Register { .. } | Operation::Revoke)
    }

    /// The states a successful target ends in, which `export` writes by default.
    pub fn success_states(self) -> &'static [ItemState] {
        match self {
            Operation::Register { .. } => &[ItemState::Registered, ItemState::Existing],
            Operation::Fetch => &[ItemState::Fetched],
            Operation::Rotate => &[ItemState::Rotated],
            Operation::Revoke => &[ItemState::Revoked],
            Operation::CertInactivate => &[ItemState::Inactivated],
            Operation::CertActivate => &[ItemState::Activated],
        }
    }

    pub fn first_action(self, item: &WorkItem) -> Action {
        match self {
            Operation::Register { check_existing } if check_existing || item.maybe_applied => {
                Action::GetDeviceCredential
            }
            Operation::Register { .. } => Action::RegisterDeviceCredential,
            Operation::Fetch | Operation::Rotate => Action::GetDeviceCredential,
            Operation::Revoke => Action::UnRegisterDeviceCredential,
            Operation::CertInactivate => Action::InactivateDeviceCertificate,
            Operation::CertActivate => Action::ActiveDeviceCertificate,
        }
    }

    pub async fn execute(
        self,
        worker: &Worker,
        item: WorkItem,
        grant: Option<usize>,
    ) -> OutcomeRecord {
        match self {
            Operation::Register { check_existing } => {
                register(worker, item, grant, check_existing).await
            }
            Operation::Fetch => fetch(worker, item, grant).await,
            Operation::Rotate => rotate(worker, item, grant).await,
            Operation::Revoke => revoke(worker, item, grant).await,
            Operation::CertInactivate | Operation::CertActivate => {
                certificate(self, worker, item, grant).await
            }
        }
    }
}

/// The bookkeeping of one target while it is worked on.
pub(crate) struct Attempt {
    pub target: String,
    pub attempts: i64,
    pub failures: u32,
    pub maybe_applied: bool,
    pub grant: Option<usize>,
    pub last_error: Option<ApiError>,
    pub previous_secret: Option<Secret>,
}

impl Attempt {
    fn new(item: &WorkItem, grant: Option<usize>) -> Self {
        Attempt {
            target: item.target.clone(),
            attempts: 0,
            failures: 0,
            maybe_applied: item.maybe_applied,
            grant,
            last_error: None,
            previous_secret: None,
        }
    }

    pub fn outcome(
        &self,
        state: ItemState,
        credential: Option<&DeviceCredential>,
    ) -> OutcomeRecord {
        let error = if state.is_success() {
            None
        } else {
            self.last_error.as_ref()
        };
        OutcomeRecord {
            target: self.target.clone(),
            state,
            attempts_added: self.attempts,
            maybe_applied: self.maybe_applied,
            code: error.map(|e| e.code.clone()),
            message: error.map(|e| e.message.clone()),
            request_id: error.and_then(|e| e.request_id.clone()),
            credential: credential.map(|c| {
                (
                    c.device_access_key_id.clone(),
                    c.device_access_key_secret.clone(),
                )
            }),
            previous_secret: self.previous_secret.clone(),
        }
    }
}

/// What to do after an error that is not the operation's own business.
enum Next {
    /// Try again (the backoff has been slept).
    Retry,
    /// Finish the target in this state.
    Finish(ItemState),
}

/// The shared handling of errors: retries with backoff within the budget, halts on run-fatal
/// classes, finishes the target on item-level ones.
async fn common_error(worker: &Worker, a: &mut Attempt, e: CallError) -> Next {
    let e = match e {
        CallError::Stopped => return Next::Finish(ItemState::Pending),
        CallError::Api(e) => e,
    };
    let class = e.class;
    a.last_error = Some(e.clone());
    match class {
        ErrorClass::QuotaFull | ErrorClass::Fatal => {
            worker.halt_on(e);
            Next::Finish(ItemState::Pending)
        }
        ErrorClass::InvalidInput => Next::Finish(ItemState::Invalid),
        ErrorClass::NotFound => Next::Finish(ItemState::NotFound),
        ErrorClass::ItemFailure | ErrorClass::AlreadyExists => Next::Finish(ItemState::Failed),
        _ => {
            a.failures += 1;
            if a.failures >= worker.max_attempts() {
                return Next::Finish(ItemState::Failed);
            }
            if worker.backoff(a.failures).await {
                Next::Retry
            } else {
                Next::Finish(ItemState::Pending)
            }
        }
    }
}

/// `ClientId` and `InstanceId`, the parameters of every credential action.
fn credential_params<'a>(worker: &'a Worker, client_id: &'a str) -> [(&'static str, &'a str); 2] {
    [
        ("ClientId", client_id),
        ("InstanceId", worker.instance_id()),
    ]
}

async fn get_credential(
    worker: &Worker,
    a: &mut Attempt,
    target: &str,
) -> Result<DeviceCredentialResponse, CallError> {
    worker
        .call(
            a,
            Action::GetDeviceCredential,
            &credential_params(worker, target),
        )
        .await
}

async fn register(
    worker: &Worker,
    item: WorkItem,
    grant: Option<usize>,
    check_existing: bool,
) -> OutcomeRecord {
    let mut a = Attempt::new(&item, grant);
    // An earlier Register of ours may have worked: ask before ever sending another.
    let mut reconcile = check_existing || item.maybe_applied;
    let mut ours = item.maybe_applied;
    loop {
        if reconcile {
            match get_credential(worker, &mut a, &item.target).await {
                Ok(found) => {
                    a.maybe_applied = false;
                    let state = if ours {
                        ItemState::Registered
                    } else {
                        ItemState::Existing
                    };
                    return a.outcome(state, Some(&found.device_credential));
                }
                Err(CallError::Api(e)) if e.class == ErrorClass::NotFound => {
                    // Nothing was created: Register is safe.
                    reconcile = false;
                    a.maybe_applied = false;
                    ours = false;
                }
                Err(e) => match common_error(worker, &mut a, e).await {
                    Next::Retry => continue,
                    Next::Finish(state) => return a.outcome(state, None),
                },
            }
        }
        if worker.stopping() {
            return a.outcome(ItemState::Pending, None);
        }
        a.maybe_applied = true;
        let sent = worker
            .call::<DeviceCredentialResponse>(
                &mut a,
                Action::RegisterDeviceCredential,
                &credential_params(worker, &item.target),
            )
            .await;
        match sent {
            Ok(created) => {
                a.maybe_applied = false;
                return a.outcome(ItemState::Registered, Some(&created.device_credential));
            }
            Err(CallError::Api(e)) if e.class == ErrorClass::AlreadyExists => {
                a.maybe_applied = false;
                a.last_error = Some(e);
                // Fetch it next; it is ours if an earlier call of ours may have created it.
                reconcile = true;
            }
            Err(CallError::Api(e)) if e.may_have_applied() => {
                // Keep maybe_applied: whatever happens next, the next call is a Get.
                ours = true;
                reconcile = true;
                if let Next::Finish(state) = common_error(worker, &mut a, CallError::Api(e)).await {
                    return a.outcome(state, None);
                }
            }
            Err(e) => {
                // Not sent, throttled away, or refused: nothing was created.
                a.maybe_applied = ours;
                if let Next::Finish(state) = common_error(worker, &mut a, e).await {
                    return a.outcome(state, None);
                }
            }
        }
    }
}

/// Calls until the call succeeds or the shared error handling finishes the target.
async fn until_done<T: serde::de::DeserializeOwned>(
    worker: &Worker,
    a: &mut Attempt,
    action: Action,
    params: &[(&str, &str)],
) -> Result<T, ItemState> {
    loop {
        match worker.call::<T>(a, action, params).await {
            Ok(v) => return Ok(v),
            Err(e) => match common_error(worker, a, e).await {
                Next::Retry => continue,
                Next::Finish(state) => return Err(state),
            },
        }
    }
}

async fn fetch(worker: &Worker, item: WorkItem, grant: Option<usize>) -> OutcomeRecord {
    let mut a = Attempt::new(&item, grant);
    match until_done::<DeviceCredentialResponse>(
        worker,
        &mut a,
        Action::GetDeviceCredential,
        &credential_params(worker, &item.target),
    )
    .await
    {
        Ok(found) => a.outcome(ItemState::Fetched, Some(&found.device_credential)),
        Err(state) => a.outcome(state, None),
    }
}

async fn rotate(worker: &Worker, item: WorkItem, grant: Option<usize>) -> OutcomeRecord {
    let mut a = Attempt::new(&item, grant);
    let params = credential_params(worker, &item.target);
    // The secret being replaced, kept in the ledger until the new one has been exported.
    match until_done::<DeviceCredentialResponse>(
        worker,
        &mut a,
        Action::GetDeviceCredential,
        &params,
    )
    .await
    {
        Ok(current) => a.previous_secret = Some(current.device_credential.device_access_key_secret),
        Err(state) => return a.outcome(state, None),
    }
    // A Refresh whose answer was lost may or may not have rotated; rotating again is harmless,
    // and the secret stored is the one the last answer carried.
    match until_done::<DeviceCredentialResponse>(
        worker,
        &mut a,
        Action::RefreshDeviceCredential,
        &params,
    )
    .await
    {
        Ok(new) => a.outcome(ItemState::Rotated, Some(&new.device_credential)),
        Err(state) => a.outcome(state, None),
    }
}

async fn revoke(worker: &Worker, item: WorkItem, grant: Option<usize>) -> OutcomeRecord {
    let mut a = Attempt::new(&item, grant);
    // An earlier UnRegister of ours that may have worked shows up as "not found": that is ours.
    let mut ours = item.maybe_applied;
    loop {
        a.maybe_applied = true;
        let sent = worker
            .call::<EmptyResponse>(
                &mut a,
                Action::UnRegisterDeviceCredential,
                &credential_params(worker, &item.target),
            )
            .await;
        match sent {
            Ok(_) => {
                a.maybe_applied = false;
                return a.outcome(ItemState::Revoked, None);
            }
            Err(CallError::Api(e)) if e.class == ErrorClass::NotFound && ours => {
                a.maybe_applied = false;
                return a.outcome(ItemState::Revoked, None);
            }
            Err(e) => {
                if let CallError::Api(api) = &e {
                    ours |= api.may_have_applied();
                }
                a.maybe_applied = ours;
                if let Next::Finish(state) = common_error(worker, &mut a, e).await {
                    return a.outcome(state, None);
                }
            }
        }
    }
}

async fn certificate(
    operation: Operation,
    worker: &Worker,
    item: WorkItem,
    grant: Option<usize>,
) -> OutcomeRecord {
    let mut a = Attempt::new(&item, grant);
    let (device_sn, ca_sn) = split_certificate_target(&item.target);
    let (action, done) = match operation {
        Operation::CertActivate => (Action::ActiveDeviceCertificate, ItemState::Activated),
        _ => (Action::InactivateDeviceCertificate, ItemState::Inactivated),
    };
    let params = [
        ("CaSn", ca_sn),
        ("DeviceSn", device_sn),
        ("MqttInstanceId", worker.instance_id()),
    ];
    match until_done::<DeviceSnResponse>(worker, &mut a, action, &params).await {
        Ok(_) => a.outcome(done, None),
        Err(state) => a.outcome(state, None),
    }
}
