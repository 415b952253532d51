//! Query and update handlers: exports `query_NAME` and `update_NAME` of
//! type `() -> ()`, called on a suspended workflow's state.
//!
//! A module may also export `query_*` and `update_*`: handlers for any
//! name, called when there is no export for the name itself. They read
//! the name with `wasnap.handler_name`. That is how an interpreter serves
//! the handlers its script registers at run time (`wasnap.query("status",
//! fn)` in JavaScript), which no export list can name in advance.
//!
//! A suspended workflow's stack is unwound: its frames are bytes kept
//! outside linear memory, the instrumentation is in its normal state, and
//! memory and globals are consistent. So a handler is an ordinary call of
//! an export. Two things make it safe:
//!
//! - it runs with the shadow-stack pointer where the workflow's main
//!   coroutine left it, so that what it puts on the shadow stack goes
//!   below every live frame of the suspended code (a coroutine's own stack
//!   is a region that main allocated, above that pointer or on the heap),
//!   and the pointer is put back afterwards;
//! - it cannot suspend or start a coroutine (see [`super::abi`]), so the
//!   coroutines, their frames and the pending call are exactly as before:
//!   only memory and globals can change.
//!
//! The argument is what `wasnap.reply` copies out during the call; the
//! result is what the handler last passed to `wasnap.respond`.

use anyhow::{Result, bail};
use wasmtime::{ExternType, Val};

use super::Workflow;
use super::abi::{HandlerCall, HandlerFailed};
use crate::snapshot::CoroutineState;

/// Which kind of handler: a query reads, an update changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandlerKind {
    /// `query_NAME`.
    Query,
    /// `update_NAME`.
    Update,
}

impl HandlerKind {
    /// The prefix of the export: `query_` or `update_`.
    pub fn prefix(self) -> &'static str {
        match self {
            HandlerKind::Query => "query_",
            HandlerKind::Update => "update_",
        }
    }

    /// The export that handles any name: `query_*` or `update_*`.
    pub fn any_name_export(self) -> &'static str {
        match self {
            HandlerKind::Query => "query_*",
            HandlerKind::Update => "update_*",
        }
    }

    /// `query` or `update`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerKind::Query => "query",
            HandlerKind::Update => "update",
        }
    }
}

impl Workflow {
    /// Calls the query handler `query_NAME` with `arg` and returns its
    /// result. It runs on this workflow's state: whatever it writes (a C
    /// handler's `malloc` does) stays. To read without leaving a trace, run
    /// it on a freshly restored copy, as
    /// [`Executor::query`](crate::executor::Executor::query) does.
    pub fn query(&mut self, name: &str, arg: &[u8]) -> Result<Vec<u8>> {
        self.handle(HandlerKind::Query, name, arg)
    }

    /// Calls the update handler `update_NAME` with `arg` and returns its
    /// result; the workflow still waits at the same call, with the memory
    /// and globals the handler left.
    pub fn update(&mut self, name: &str, arg: &[u8]) -> Result<Vec<u8>> {
        self.handle(HandlerKind::Update, name, arg)
    }

    /// The names of the handlers of one kind that the module exports
    /// (`*` for a handler of any name).
    pub fn handlers(&self, kind: HandlerKind) -> Vec<String> {
        handler_names(self.module.inner.compiled.exports(), kind)
    }

    /// Calls a handler. When it fails (a trap, a suspension, a wrong
    /// export), the workflow cannot be used any more: memory may be half
    /// changed.
    pub fn handle(&mut self, kind: HandlerKind, name: &str, arg: &[u8]) -> Result<Vec<u8>> {
        self.call_guest(|workflow| workflow.handle_here(kind, name, arg))
    }

    fn handle_here(&mut self, kind: HandlerKind, name: &str, arg: &[u8]) -> Result<Vec<u8>> {
        self.check_usable()?;
        let export = format!("{}{name}", kind.prefix());
        let func = self.handler_func(kind, name, &export)?;
        let handles = self.handles();
        // (global, value before, value the handler starts with)
        let stack_pointer = match handles.stack_pointer {
            Some(global) => {
                let saved = global.get(&mut self.store).i32().unwrap_or_default();
                // When main suspended the workflow, the global holds its
                // pointer already; else the coroutine that did left its own.
                let host = self.store.data();
                let entry = match host.coroutine(0) {
                    Some(main) if main.state == CoroutineState::Suspended && host.current != 0 => {
                        main.stack_pointer as i32
                    }
                    _ => saved,
                };
                global.set(&mut self.store, Val::I32(entry))?;
                Some((global, saved, entry))
            }
            None => None,
        };
        let host = self.store.data_mut();
        let saved_reply = std::mem::replace(&mut host.reply, arg.to_vec());
        host.handler = Some(HandlerCall {
            export: export.clone(),
            name: name.to_string(),
            result: Vec::new(),
        });
        self.begin_call();
        self.set_deadline();
        let called = func.call(&mut self.store, &[], &mut []);
        let host = self.store.data_mut();
        let call = host.handler.take().expect("set above");
        host.reply = saved_reply;
        // A shadow-stack pointer is back at its entry value when the call
        // returns: put back the one of the coroutine that suspended. A
        // global that the handler changed for good is no stack pointer (in
        // a module without `__stack_pointer`, a first global of type
        // mutable i32 is taken for one): what the handler wrote stays.
        if let Some((global, saved, entry)) = stack_pointer {
            match global.get(&mut self.store).i32() {
                Some(now) if now == entry => global.set(&mut self.store, Val::I32(saved))?,
                Some(now) => self.keep_as_data(now as u32),
                None => {}
            }
        }
        match called {
            Ok(()) => Ok(call.result),
            Err(error) => {
                let error = handler_error(error, &export);
                self.broken = Some(format!("handler {export} failed"));
                Err(error)
            }
        }
    }

    /// The global taken for the shadow-stack pointer is data the handler
    /// changed: the suspended coroutine's saved pointer follows it, so that
    /// resuming (which sets the global to that pointer) keeps the change.
    fn keep_as_data(&mut self, value: u32) {
        let host = self.store.data_mut();
        let current = host.current;
        if let Ok(coroutine) = host.coroutine_mut(current) {
            coroutine.stack_pointer = value;
        }
    }

    fn handler_func(
        &mut self,
        kind: HandlerKind,
        name: &str,
        export: &str,
    ) -> Result<wasmtime::Func> {
        let found = [export, kind.any_name_export()]
            .into_iter()
            .find_map(|name| Some((name, self.instance.get_func(&mut self.store, name)?)));
        let Some((used, func)) = found else {
            let known = self.handlers(kind);
            let known = if known.is_empty() {
                format!("it has no {} handlers", kind.as_str())
            } else {
                format!("it has: {}", known.join(", "))
            };
            bail!(
                "the module has no {} handler {name:?} (no export {export}; {known})",
                kind.as_str()
            );
        };
        let ty = func.ty(&self.store);
        if ty.params().len() != 0 || ty.results().len() != 0 {
            bail!("export {used} is not a handler: its type must be () -> ()");
        }
        Ok(func)
    }
}

/// The handler names of one kind among a module's exports.
fn handler_names<'a>(
    exports: impl Iterator<Item = wasmtime::ExportType<'a>>,
    kind: HandlerKind,
) -> Vec<String> {
    exports
        .filter(|e| matches!(e.ty(), ExternType::Func(_)))
        .filter_map(|e| e.name().strip_prefix(kind.prefix()).map(str::to_string))
        .collect()
}

/// A handler's failure as one clear error.
fn handler_error(error: wasmtime::Error, export: &str) -> anyhow::Error {
    if let Some(HandlerFailed(message)) = error.downcast_ref::<HandlerFailed>() {
        return anyhow::anyhow!("handler {export} failed: {message}");
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return anyhow::anyhow!("handler {export} exited with status {}", exit.0);
    }
    if error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return anyhow::anyhow!("handler {export} ran past the workflow's time limit");
    }
    anyhow::Error::from(error).context(format!("handler {export} failed"))
}
