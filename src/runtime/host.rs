//! Host functions an embedder declares: plain ones that answer at once, and
//! suspending ones that may instead suspend the whole workflow, like
//! `wasnap.yield`, with a payload of their choosing.
//!
//! A suspending function is called twice for one suspension, as `yield` is:
//! first when the guest calls it (it decides: answer now, or suspend with a
//! payload), then, when the workflow is continued, once more with the same
//! arguments and the reply that was sent ([`HostCall::reply`] is `Some`),
//! when it must answer.

use std::sync::Arc;

use anyhow::{Result, bail};
use wasmtime::{Caller, FuncType, Linker, Val};

use super::abi::{self, HostState, Pending};

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
    args: &'a [Val],
    reply: Option<Vec<u8>>,
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
        let memory = abi::guest_memory(self.caller)?;
        Ok(memory[abi::guest_range(memory, ptr as i32, len as i32)?].to_vec())
    }

    /// Writes `bytes` to memory 0 at `ptr`.
    pub fn write(&mut self, ptr: u32, bytes: &[u8]) -> Result<()> {
        let memory = abi::guest_memory(self.caller)?;
        let range = abi::guest_range(memory, ptr as i32, bytes.len() as i32)?;
        memory[range].copy_from_slice(bytes);
        Ok(())
    }
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
            let resuming = suspending && abi::is_rewinding(&mut caller)?;
            let reply = resuming.then(|| caller.data().reply.clone());
            let mut call = HostCall {
                caller: &mut caller,
                args,
                reply,
            };
            let decision = handler(&mut call).map_err(wasmtime::Error::from_anyhow)?;
            match decision {
                Decision::Answer(values) => {
                    if values.len() != results.len() {
                        wasmtime::bail!(
                            "host function {import} answered {} values for {} results",
                            values.len(),
                            results.len()
                        );
                    }
                    results.copy_from_slice(&values);
                }
                Decision::Suspend(_) if resuming => {
                    wasmtime::bail!("host function {import} must answer when resumed")
                }
                Decision::Suspend(_) if !suspending => {
                    wasmtime::bail!("host function {import} is not declared suspending")
                }
                Decision::Suspend(value) => {
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
