//! Operations: what one target needs done, call by call. The pipeline is generic over them.
//!
//! An operation provides: its ledger name; whether its calls change something that a repeat
//! could make worse (then the claim records `maybe_applied` before sending, and a resumed target
//! is reconciled first); the first action it sends for a target (so the dispatcher can pace it);
//! and `execute`, which turns one target into one [`OutcomeRecord`] with paced calls. Retries,
//! throttling, halts and the ledger are the pipeline's; an operation only decides what its
//! answers mean.

use crate::api::actions::Action;
use crate::api::request::{self, Request};
use crate::api::{ApiError, DeviceCredential, ErrorClass};
use crate::ledger::{ItemState, OutcomeRecord, WorkItem};
use crate::secret::Secret;
use crate::target::Target;

use super::breaker;
use super::worker::{CallError, Worker};

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

    /// Whether its successful targets hold a credential the ledger can export.
    pub fn leaves_credentials(self) -> bool {
        matches!(
            self,
            Operation::Register { .. } | Operation::Fetch | Operation::Rotate
        )
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

    /// The action that changes something: what a destructive run asks confirmation for.
    pub fn main_action(self) -> Action {
        match self {
            Operation::Register { .. } => Action::RegisterDeviceCredential,
            Operation::Fetch => Action::GetDeviceCredential,
            Operation::Rotate => Action::RefreshDeviceCredential,
            Operation::Revoke => Action::UnRegisterDeviceCredential,
            Operation::CertInactivate => Action::InactivateDeviceCertificate,
            Operation::CertActivate => Action::ActiveDeviceCertificate,
        }
    }

    /// The first action sent for a target (the dispatcher paces it); `maybe_applied` says an
    /// earlier call of ours may have taken effect, so a Register is reconciled with a Get first.
    pub fn first_action(self, maybe_applied: bool) -> Action {
        match self {
            Operation::Register { check_existing } if check_existing || maybe_applied => {
                Action::GetDeviceCredential
            }
            Operation::Register { .. } => Action::RegisterDeviceCredential,
            Operation::Fetch | Operation::Rotate => Action::GetDeviceCredential,
            Operation::Revoke => Action::UnRegisterDeviceCredential,
            Operation::CertInactivate => Action::InactivateDeviceCertificate,
            Operation::CertActivate => Action::ActiveDeviceCertificate,
        }
    }

    /// Every API a run of this operation may call (a fleet worker asks for a share of each).
    pub fn actions(self) -> Vec<Action> {
        let mut actions = vec![
            self.main_action(),
            self.first_action(false),
            self.first_action(true),
        ];
        if matches!(self, Operation::Register { .. }) {
            // `DeviceCredentialExsit` is recovered with a Get.
            actions.push(Action::GetDeviceCredential);
        }
        let mut seen = Vec::new();
        actions.retain(|a| {
            let new = !seen.contains(a);
            seen.push(*a);
            new
        });
        actions
    }

    /// Works one claimed target to its outcome.
    pub async fn execute(
        self,
        worker: &Worker,
        item: WorkItem,
        grant: Option<usize>,
    ) -> OutcomeRecord {
        let mut a = Attempt::new(&item, grant);
        let instance = worker.instance_id();
        match (self, a.target.clone()) {
            (Operation::Register { check_existing }, Target::Device(id)) => {
                register(worker, a, id.as_str(), check_existing).await
            }
            (Operation::Fetch, Target::Device(id)) => {
                let get = request::get_device_credential(instance, id.as_str());
                match until_done(worker, &mut a, &get).await {
                    Ok(found) => a.outcome(ItemState::Fetched, Some(&found.device_credential)),
                    Err(state) => a.outcome(state, None),
                }
            }
            (Operation::Rotate, Target::Device(id)) => rotate(worker, a, id.as_str()).await,
            (Operation::Revoke, Target::Device(id)) => revoke(worker, a, id.as_str()).await,
            (Operation::CertInactivate, Target::Certificate(c)) => {
                let call = request::inactivate_device_certificate(instance, &c.device_sn, &c.ca_sn);
                certificate(worker, a, &call, ItemState::Inactivated).await
            }
            (Operation::CertActivate, Target::Certificate(c)) => {
                let call = request::active_device_certificate(instance, &c.device_sn, &c.ca_sn);
                certificate(worker, a, &call, ItemState::Activated).await
            }
            // The input of each operation decides its kind of target; a ledger that mixes
            // them was written by something else, and nothing is sent for such a row.
            (_, target) => {
                tracing::error!(
                    "{}: {target} is not a target of this operation",
                    self.name()
                );
                a.outcome(ItemState::Invalid, None)
            }
        }
    }
}

/// The bookkeeping of one target while it is worked on.
pub(crate) struct Attempt {
    pub target: Target,
    pub attempts: i64,
    pub failures: u32,
    pub maybe_applied: bool,
    pub grant: Option<usize>,
    pub last_error: Option<ApiError>,
    pub previous_secret: Option<Secret>,
    /// The service's answer count at this target's last outage-like failure.
    pub outage_mark: Option<u64>,
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
            outage_mark: None,
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
        // The service is unreachable: not this device's failure; the next call waits for it.
        _ if worker.outage_holds(&e) => {
            if worker.stopping() {
                Next::Finish(ItemState::Pending)
            } else {
                Next::Retry
            }
        }
        // Failing again the way an outage does, with no answer from the service to anyone since
        // the last time: the outage is starting (the breaker opens after a few such failures),
        // and it is not this target's fault. Waits like a retry, uncounted.
        _ if breaker::is_outage(&e) && a.outage_mark == Some(worker.answers_seen()) => {
            if worker.backoff(a.failures.max(1)).await {
                Next::Retry
            } else {
                Next::Finish(ItemState::Pending)
            }
        }
        _ => {
            if breaker::is_outage(&e) {
                a.outage_mark = Some(worker.answers_seen());
            }
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

async fn register(
    worker: &Worker,
    mut a: Attempt,
    client_id: &str,
    check_existing: bool,
) -> OutcomeRecord {
    let get = request::get_device_credential(worker.instance_id(), client_id);
    let register = request::register_device_credential(worker.instance_id(), client_id);
    // An earlier Register of ours may have worked: ask before ever sending another.
    let mut reconcile = check_existing || a.maybe_applied;
    let mut ours = a.maybe_applied;
    loop {
        if reconcile {
            match worker.call(&mut a, &get).await {
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
        match worker.call(&mut a, &register).await {
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
    request: &Request<T>,
) -> Result<T, ItemState> {
    loop {
        match worker.call(a, request).await {
            Ok(v) => return Ok(v),
            Err(e) => match common_error(worker, a, e).await {
                Next::Retry => continue,
                Next::Finish(state) => return Err(state),
            },
        }
    }
}

async fn rotate(worker: &Worker, mut a: Attempt, client_id: &str) -> OutcomeRecord {
    let instance = worker.instance_id();
    // The secret being replaced, kept in the ledger until the new one has been exported.
    let get = request::get_device_credential(instance, client_id);
    match until_done(worker, &mut a, &get).await {
        Ok(current) => a.previous_secret = Some(current.device_credential.device_access_key_secret),
        Err(state) => return a.outcome(state, None),
    }
    // A Refresh whose answer was lost may or may not have rotated; rotating again is harmless,
    // and the secret stored is the one the last answer carried.
    let refresh = request::refresh_device_credential(instance, client_id);
    match until_done(worker, &mut a, &refresh).await {
        Ok(new) => a.outcome(ItemState::Rotated, Some(&new.device_credential)),
        Err(state) => a.outcome(state, None),
    }
}

async fn revoke(worker: &Worker, mut a: Attempt, client_id: &str) -> OutcomeRecord {
    let unregister = request::unregister_device_credential(worker.instance_id(), client_id);
    // An earlier UnRegister of ours that may have worked shows up as "not found": that is ours.
    let mut ours = a.maybe_applied;
    loop {
        a.maybe_applied = true;
        match worker.call(&mut a, &unregister).await {
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

/// Inactivate or activate one device certificate: idempotent, so a plain call until done.
async fn certificate<T: serde::de::DeserializeOwned>(
    worker: &Worker,
    mut a: Attempt,
    call: &Request<T>,
    done: ItemState,
) -> OutcomeRecord {
    match until_done(worker, &mut a, call).await {
        Ok(_) => a.outcome(done, None),
        Err(state) => a.outcome(state, None),
    }
}
