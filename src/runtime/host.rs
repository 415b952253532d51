//! Host functions an embedder declares: plain ones that answer at once, and
//! suspending ones that may instead suspend the whole workflow, like
//! `wasnap.yield`, with a payload of their choosing.
//!
//! A suspending function is called twice for one suspension, as `yield` is:
//! first when the guest calls it (it decides: answer now, or suspend with a
//! payload), then, when the workflow is continued, once more with the same
//! arguments and the reply that was sent ([`HostCall::reply`] is `Some`),
//! when it must answer.
//!
//! What a host function does can differ between runs, so the journal
//! records each answer (values, writes into memory, suspension); a replay
//! does the recorded thing again without calling the handler.

use std::sync::Arc;

use anyhow::{Result, bail};
use wasmtime::{Caller, FuncType, Linker, Val};

use super::abi::{self, HostState, Pending};
use super::journal::{HostAnswer, Journal};
use crate::snapshot::GlobalValue;

/// What a host function decides.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Return these results to the guest now.
    Answer(Vec<Val>),
    /// Suspend the workflow, publishing these bytes as the step's value
    /// ([`crate::Step::Yielded`]); only for suspending functions.
    Suspend(Vec<u8>),
}

/// One call of a host function, as its handler sees it.
pub struct HostCall<'a, 'c> {
    caller: &'a mut Caller<'c, HostState>,
    import: &'a str,
    args: &'a [Val],
    reply: Option<Vec<u8>>,
    /// What the handler wrote, for the journal.
    writes: Vec<(u32, Vec<u8>)>,
}

impl HostCall<'_, '_> {
    /// The arguments the guest passed.
    pub fn args(&self) -> &[Val] {
        self.args
    }

    /// `Some(reply)` when the workflow is being continued after this very
    /// call suspended it: the handler must answer now.
    pub fn reply(&self) -> Option<&[u8]> {
        self.reply.as_deref()
    }

    /// Reads `len` bytes of memory 0 at `ptr`.
    pub fn read(&mut self, ptr: u32, len: u32) -> Result<Vec<u8>> {
        let memory = abi::guest_memory(self.caller, self.import)?;
        Ok(memory[abi::guest_range(memory, ptr as i32, len as i32)?].to_vec())
    }

    /// Writes `bytes` to memory 0 at `ptr`.
    pub fn write(&mut self, ptr: u32, bytes: &[u8]) -> Result<()> {
        write_memory(self.caller, self.import, ptr, bytes)?;
        self.writes.push((ptr, bytes.to_vec()));
        Ok(())
    }
}

fn write_memory(
    caller: &mut Caller<'_, HostState>,
    import: &str,
    ptr: u32,
    bytes: &[u8],
) -> Result<()> {
    let memory = abi::guest_memory(caller, import)?;
    let range = abi::guest_range(memory, ptr as i32, bytes.len() as i32)?;
    memory[range].copy_from_slice(bytes);
    Ok(())
}

/// A handler for a host function.
pub type Handler = Arc<dyn Fn(&mut HostCall<'_, '_>) -> Result<Decision> + Send + Sync>;

/// A host function the embedder declared, for the imports matching a
/// `module.name` pattern.
#[derive(Clone)]
pub(crate) struct HostFunction {
    pub pattern: String,
    pub suspending: bool,
    pub handler: Handler,
}

impl HostFunction {
    /// Defines this function for the import `module.name` of type `ty`.
    pub fn define(
        &self,
        linker: &mut Linker<HostState>,
        module: &str,
        name: &str,
        ty: FuncType,
    ) -> Result<()> {
        let import = format!("{module}.{name}");
        let handler = self.handler.clone();
        let suspending = self.suspending;
        let result_types: Vec<_> = ty.results().collect();
        linker.func_new(module, name, ty, move |mut caller, args, results| {
            let resuming = suspending && abi::is_rewinding(&mut caller, &import)?;
            if resuming && abi::suspended_again(&caller) {
                return Ok(());
            }
            abi::check_not_diverged(&caller)?;
            let journal = caller.data().journal.clone();
            let replayed = {
                let mut journal = Journal::lock(&journal);
                journal
                    .is_replaying()
                    .then(|| journal.replayed_host(&import))
            };
            let answer = match replayed {
                Some(Some(answer)) => {
                    for (ptr, bytes) in &answer.writes {
                        write_memory(&mut caller, &import, *ptr, bytes)
                            .map_err(wasmtime::Error::from_anyhow)?;
                    }
                    answer
                }
                Some(None) => match Journal::lock(&journal).divergence() {
                    Some(divergence) => wasmtime::bail!("the replay diverged: {divergence}"),
                    None => wasmtime::bail!("the replay diverged"),
                },
                None => {
                    let reply = resuming.then(|| caller.data().reply.clone());
                    let mut call = HostCall {
                        caller: &mut caller,
                        import: &import,
                        args,
                        reply,
                        writes: Vec::new(),
                    };
                    let decision = handler(&mut call).map_err(wasmtime::Error::from_anyhow)?;
                    let writes = std::mem::take(&mut call.writes);
                    let answer = match decision {
                        Decision::Answer(values) => HostAnswer {
                            values: values.iter().map(raw_value).collect(),
                            writes,
                            suspended: None,
                        },
                        Decision::Suspend(value) => HostAnswer {
                            values: Vec::new(),
                            writes,
                            suspended: Some(value),
                        },
                    };
                    Journal::lock(&journal).record_host(&import, answer.clone());
                    answer
                }
            };
            match answer.suspended {
                None => {
                    if answer.values.len() != results.len() {
                        wasmtime::bail!(
                            "host function {import} answered {} values for {} results",
                            answer.values.len(),
                            results.len()
                        );
                    }
                    for ((slot, value), ty) in
                        results.iter_mut().zip(&answer.values).zip(&result_types)
                    {
                        *slot = host_value(value, ty);
                    }
                }
                Some(_) if resuming => {
                    wasmtime::bail!("host function {import} must answer when resumed")
                }
                Some(_) if !suspending => {
                    wasmtime::bail!("host function {import} is not declared suspending")
                }
                Some(value) => {
                    abi::check_may_suspend(&caller, &import)?;
                    for (slot, ty) in results.iter_mut().zip(&result_types) {
                        *slot = Val::default_for_ty(ty).unwrap_or(Val::I32(0));
                    }
                    let pending = Pending::Yield {
                        import: import.clone(),
                        value,
                        timer: None,
                    };
                    abi::start_unwind(&mut caller, pending)?;
                }
            }
            Ok(())
        })?;
        Ok(())
    }
}

/// Checks a `module.name` pattern.
pub(crate) fn check_pattern(pattern: &str) -> Result<()> {
    if !pattern.contains('.') {
        bail!("host function pattern {pattern:?} is not of the form module.name");
    }
    Ok(())
}

/// A value a host function returned, as raw bits for the journal.
fn raw_value(value: &Val) -> GlobalValue {
    match *value {
        Val::I32(v) => GlobalValue::I32(v as u32),
        Val::I64(v) => GlobalValue::I64(v as u64),
        Val::F32(bits) => GlobalValue::F32(bits),
        Val::F64(bits) => GlobalValue::F64(bits),
        Val::V128(v) => GlobalValue::V128(v.as_u128()),
        // References cannot be recorded; a replay gives null.
        _ => GlobalValue::NullRef,
    }
}

/// A recorded value as a result of type `ty`.
fn host_value(value: &GlobalValue, ty: &wasmtime::ValType) -> Val {
    match *value {
        GlobalValue::I32(v) => Val::I32(v as i32),
        GlobalValue::I64(v) => Val::I64(v as i64),
        GlobalValue::F32(bits) => Val::F32(bits),
        GlobalValue::F64(bits) => Val::F64(bits),
        GlobalValue::V128(v) => Val::V128(v.into()),
        GlobalValue::NullRef | GlobalValue::FuncRef(_) => {
            Val::default_for_ty(ty).unwrap_or(Val::I32(0))
        }
    }
}
