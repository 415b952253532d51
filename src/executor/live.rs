//! Suspended workflows kept in memory after their versions are committed.
//!
//! A version is immutable once committed, and the live workflow that
//! suspended there holds exactly the state the version stores; so resuming
//! that version may take the live workflow instead of loading the version
//! and restoring it, which for a 1 MiB workflow is most of the cost of a
//! resume. A workflow is taken out while it runs (nothing else can resume
//! it meanwhile) and put back under the version its next run committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::runtime::Workflow;
use crate::store::InstanceId;

/// A bounded set of live workflows, one per instance at most, each with the
/// version it is suspended at. The least recently kept is dropped first.
#[derive(Clone)]
pub struct LiveWorkflows {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    capacity: usize,
    /// By instance: the version, the workflow, and when it was kept.
    kept: HashMap<InstanceId, (u32, Workflow, u64)>,
    clock: u64,
}

impl LiveWorkflows {
    /// Room for `capacity` workflows.
    pub fn new(capacity: usize) -> LiveWorkflows {
        LiveWorkflows {
            inner: Arc::new(Mutex::new(Inner {
                capacity,
                kept: HashMap::new(),
                clock: 0,
            })),
        }
    }

    /// Takes the live workflow of `instance` if it is suspended at
    /// `version`.
    pub fn take(&self, instance: InstanceId, version: u32) -> Option<Workflow> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.kept.get(&instance) {
            Some((kept, _, _)) if *kept == version => {
                inner.kept.remove(&instance).map(|(_, w, _)| w)
            }
            _ => None,
        }
    }

    /// Keeps `workflow`, suspended at the committed `version` of `instance`.
    pub fn put(&self, instance: InstanceId, version: u32, workflow: Workflow) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.capacity == 0 {
            return;
        }
        inner.clock += 1;
        let now = inner.clock;
        inner.kept.insert(instance, (version, workflow, now));
        while inner.kept.len() > inner.capacity {
            let oldest = inner
                .kept
                .iter()
                .min_by_key(|(_, (_, _, kept_at))| *kept_at)
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => inner.kept.remove(&id),
                None => break,
            };
        }
    }

    /// Forgets the live workflow of `instance`, if any.
    pub fn forget(&self, instance: InstanceId) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.kept.remove(&instance);
    }

    /// How many workflows are kept.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kept
            .len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
