//! Operations: what one target needs done, call by call. The pipeline is generic over them; an
//! operation provides its ledger name, the first action it sends for a target (so the dispatcher
//! can pace it), whether its calls change anything (so claims are recorded before sending), and
//! `execute`, which turns one target into one [`OutcomeRecord`] using paced calls.

use crate::api::actions::{Action, DeviceCredentialResponse};
use crate::api::{ApiError, DeviceCredential, ErrorClass};
use crate::ledger::{ItemState, OutcomeRecord, WorkItem};

use super::{CallError, Worker};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// RegisterDeviceCredential, never causing a second credential for a device.
    Register {
        /// GetDeviceCredential before the first Register (devices may already be live).
        check_existing: bool,
    },
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Register { .. } => "register",
        }
    }

    /// Whether a call of this operation may change the service's state.
    pub fn marks_effect(self) -> bool {
        match self {
            Operation::Register { .. } => true,
        }
    }

    pub fn first_action(self, item: &WorkItem) -> Action {
        match self {
            Operation::Register { check_existing } if check_existing || item.maybe_applied => {
                Action::GetDeviceCredential
            }
            Operation::Register { .. } => Action::RegisterDeviceCredential,
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
        }
    }

    pub fn outcome(
        &self,
        state: ItemState,
        credential: Option<&DeviceCredential>,
    ) -> OutcomeRecord {
        let error = if state == ItemState::Registered
            || state == ItemState::Existing
            || state == ItemState::Fetched
        {
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
        }
    }
}

/// What to do after an error that is not the operation's own business.
enum Next {
    /// Try again after a backoff (already slept).
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
        ErrorClass::ItemFailure | ErrorClass::NotFound | ErrorClass::AlreadyExists => {
            Next::Finish(ItemState::Failed)
        }
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
            match worker
                .call::<DeviceCredentialResponse>(
                    &mut a,
                    Action::GetDeviceCredential,
                    &credential_params(worker, &item.target),
                )
                .await
            {
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
        match worker
            .call::<DeviceCredentialResponse>(
                &mut a,
                Action::RegisterDeviceCredential,
                &credential_params(worker, &item.target),
            )
            .await
        {
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
                match common_error(worker, &mut a, e).await {
                    Next::Retry => {}
                    Next::Finish(state) => return a.outcome(state, None),
                }
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
