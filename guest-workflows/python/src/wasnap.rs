//! The `wasnap` Python module.
//!
//! ```python
//! import wasnap
//!
//! answer = wasnap.yield_("ask boss for permission")   # "" when no reply
//! answer = wasnap.yield_("approve?", timeout=3 * 86400)  # None: too late
//! wasnap.sleep(2)                                      # a durable timer
//!
//! def workflow():
//!     yield "do something"
//!     is_approved = yield "ask boss for permission"
//!     ...
//!
//! wasnap.run(workflow())
//!
//! @wasnap.query                      # `wasnap query ID status`
//! def status(arg):
//!     return f"waiting ({done} done)"
//!
//! wasnap.update("machines", set_machines)  # `wasnap update ID machines --arg 4`
//! ```
//!
//! `yield_` (`yield` is a keyword) publishes a value, suspends the whole
//! interpreter, and returns the reply the workflow is resumed with.
//! `run` drives a generator as the article's host does with `next()` and
//! `send()`: each value the generator yields is published and suspends the
//! workflow; the reply is sent into the generator as the value of its
//! `yield` expression.
//!
//! `query` and `update` register handlers, which wasnap calls while the
//! workflow is suspended (the module's exports `query_*` and `update_*`
//! answer every name and look the script's handler up here): a handler
//! gets the argument as a `str`; what it returns is the answer (a `str` as
//! it is, `None` as nothing, anything else as JSON); an exception it raises
//! fails the handler with its message.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use rustpython_vm::builtins::{PyBytes, PyStr};
use rustpython_vm::{AsObject, PyObjectRef, PyResult, VirtualMachine};

pub(crate) use wasnap::module_def;

thread_local! {
    /// The interpreter running the script: handlers run while the script
    /// is suspended inside it (see [`enter`]).
    static VM: Cell<Option<*const VirtualMachine>> = const { Cell::new(None) };
    /// The script's handlers by name: queries in `[0]`, updates in `[1]`.
    static HANDLERS: RefCell<[BTreeMap<String, PyObjectRef>; 2]> = RefCell::default();
}

/// Runs the script with `vm` as the interpreter its handlers are called
/// in: the script suspends only inside `run`, so `vm` outlives every
/// handler call.
pub(crate) fn enter<T>(vm: &VirtualMachine, run: impl FnOnce() -> T) -> T {
    VM.set(Some(vm as *const VirtualMachine));
    let result = run();
    VM.set(None);
    result
}

/// Which handlers: `query_*` serves `QUERY`, `update_*` serves `UPDATE`.
const QUERY: usize = 0;
const UPDATE: usize = 1;
const KINDS: [&str; 2] = ["query", "update"];

#[unsafe(export_name = "query_*")]
extern "C" fn query_any() {
    handle(QUERY);
}

#[unsafe(export_name = "update_*")]
extern "C" fn update_any() {
    handle(UPDATE);
}

/// Calls the script's handler for the name asked for, answers with what it
/// returns, or fails the handler with what went wrong.
fn handle(kind: usize) {
    let Some(vm) = VM.get() else {
        wasnap_guest::fail_handler("the script has not started");
    };
    // SAFETY: `enter` set the pointer to the interpreter that runs the
    // script, which is suspended inside `enter` while a handler runs.
    let vm = unsafe { &*vm };
    let name = wasnap_guest::handler_name();
    let handler = HANDLERS.with_borrow(|handlers| handlers[kind].get(&name).cloned());
    let Some(handler) = handler else {
        wasnap_guest::fail_handler(&unknown_handler(kind, &name));
    };
    let arg = vm.ctx.new_str(wasnap_guest::handler_arg_str());
    let answer = handler
        .call((arg,), vm)
        .and_then(|result| answer_bytes(&result, vm));
    // What the handler printed goes out with its answer.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    match answer {
        Ok(bytes) => wasnap_guest::respond(&bytes),
        Err(exception) => wasnap_guest::fail_handler(&exception_text(&exception, vm)),
    }
}

/// Says that the script registered no handler `name`, and which it did.
fn unknown_handler(kind: usize, name: &str) -> String {
    let known: Vec<String> =
        HANDLERS.with_borrow(|handlers| handlers[kind].keys().cloned().collect());
    let known = if known.is_empty() {
        format!("it registered none with wasnap.{}", KINDS[kind])
    } else {
        format!("it has: {}", known.join(", "))
    };
    format!(
        "the script has no {} handler {name:?} ({known})",
        KINDS[kind]
    )
}

/// The bytes of a value that is text already: a `str` as UTF-8, `bytes`
/// as they are, `None` as nothing; `None` for any other value.
fn text_bytes(value: &PyObjectRef, vm: &VirtualMachine) -> Option<Vec<u8>> {
    if vm.is_none(value) {
        return Some(Vec::new());
    }
    if let Some(bytes) = value.downcast_ref::<PyBytes>() {
        return Some(bytes.as_bytes().to_vec());
    }
    value
        .downcast_ref::<PyStr>()
        .map(|text| text.as_bytes().to_vec())
}

/// A handler's answer: text as [`text_bytes`] says, anything else as JSON
/// (or its `str()` when it has no JSON).
fn answer_bytes(value: &PyObjectRef, vm: &VirtualMachine) -> PyResult<Vec<u8>> {
    if let Some(bytes) = text_bytes(value, vm) {
        return Ok(bytes);
    }
    let serializer = rustpython_vm::py_serde::PyObjectSerializer::new(vm, value);
    match serde_json::to_vec(&serializer) {
        Ok(json) => Ok(json),
        Err(_) => Ok(value.str(vm)?.as_bytes().to_vec()),
    }
}

/// An exception as one line: `ValueError: not a number`.
fn exception_text(
    exception: &rustpython_vm::builtins::PyBaseExceptionRef,
    vm: &VirtualMachine,
) -> String {
    let class = exception.class().name().to_string();
    match exception.as_object().str(vm) {
        Ok(message) if !message.to_string_lossy().is_empty() => {
            format!("{class}: {}", message.to_string_lossy())
        }
        _ => class,
    }
}

/// Registers `handler` under `name` as a query (`kind` 0) or an update.
fn register(kind: usize, name: String, handler: PyObjectRef) {
    HANDLERS.with_borrow_mut(|handlers| handlers[kind].insert(name, handler));
}

// The module is named after the Python module it defines.
#[allow(clippy::module_inception)]
#[rustpython_vm::pymodule]
mod wasnap {
    use rustpython_vm::FromArgs;
    use rustpython_vm::builtins::PyStr;
    use rustpython_vm::function::{ArgIntoFloat, OptionalArg};
    use rustpython_vm::{AsObject, PyObjectRef, PyResult, VirtualMachine};

    /// The bytes a Python value is published as: text as
    /// [`super::text_bytes`] says (`None` is a bare suspension), anything
    /// else as its `str()`.
    fn value_bytes(value: &PyObjectRef, vm: &VirtualMachine) -> PyResult<Vec<u8>> {
        match super::text_bytes(value, vm) {
            Some(bytes) => Ok(bytes),
            None => Ok(value.str(vm)?.as_bytes().to_vec()),
        }
    }

    /// Milliseconds from a duration in seconds (an `int` or a `float`),
    /// which may not be negative.
    fn milliseconds(seconds: ArgIntoFloat, vm: &VirtualMachine) -> PyResult<i64> {
        let seconds = seconds.into_float();
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(vm.new_value_error(format!(
                "a duration must be a number of seconds, not negative: {seconds}"
            )));
        }
        Ok((seconds * 1000.0).round() as i64)
    }

    #[derive(FromArgs)]
    struct HandlerArgs {
        #[pyarg(positional)]
        target: PyObjectRef,
        #[pyarg(positional, optional)]
        handler: OptionalArg<PyObjectRef>,
    }

    /// Registers a handler: `query(name, fn)`, or `@query` on a function
    /// named as the handler. Returns the function.
    fn register_handler(kind: usize, args: HandlerArgs, vm: &VirtualMachine) -> PyResult {
        let what = super::KINDS[kind];
        let (name, handler) = match args.handler {
            OptionalArg::Present(handler) => {
                let Some(name) = args.target.downcast_ref::<PyStr>() else {
                    return Err(vm.new_type_error(format!(
                        "wasnap.{what}(name, fn): the name must be a str"
                    )));
                };
                (name.to_string_lossy().into_owned(), handler)
            }
            OptionalArg::Missing => {
                let name = args.target.get_attr("__name__", vm)?.str(vm)?;
                (name.to_string_lossy().into_owned(), args.target)
            }
        };
        if !handler.is_callable() {
            return Err(vm.new_type_error(format!(
                "wasnap.{what}({name:?}, ...): the handler must be callable"
            )));
        }
        super::register(kind, name, handler.clone());
        Ok(handler)
    }

    /// query(name, fn) -> fn, or @query on a function named as the handler
    ///
    /// Registers `fn` as the query handler `name`: `wasnap query ID name
    /// --arg TEXT` calls `fn(TEXT)` on the suspended workflow and prints
    /// what it returns. A query changes nothing that is kept.
    #[pyfunction]
    fn query(args: HandlerArgs, vm: &VirtualMachine) -> PyResult {
        register_handler(super::QUERY, args, vm)
    }

    /// update(name, fn) -> fn, or @update on a function named as the handler
    ///
    /// Registers `fn` as the update handler `name`: `wasnap update ID name
    /// --arg TEXT` calls `fn(TEXT)` on the suspended workflow, and what it
    /// changed is kept as a new version that still waits where it waited.
    #[pyfunction]
    fn update(args: HandlerArgs, vm: &VirtualMachine) -> PyResult {
        register_handler(super::UPDATE, args, vm)
    }

    #[derive(FromArgs)]
    struct YieldArgs {
        #[pyarg(any, optional)]
        value: OptionalArg<PyObjectRef>,
        #[pyarg(named, optional)]
        timeout: OptionalArg<Option<ArgIntoFloat>>,
    }

    /// yield_(value=None, *, timeout=None) -> str | None
    ///
    /// Publishes `value` as this step's value and suspends the workflow;
    /// returns the reply it is resumed with ("" when there is none). With
    /// a `timeout` in seconds the question has a deadline, a timer kept
    /// with the saved version: `None` when it passed before a reply came.
    #[pyfunction]
    fn yield_(args: YieldArgs, vm: &VirtualMachine) -> PyResult<Option<String>> {
        let value = match args.value {
            OptionalArg::Present(value) => value_bytes(&value, vm)?,
            OptionalArg::Missing => Vec::new(),
        };
        let reply = match args.timeout.flatten() {
            Some(seconds) => {
                let ms = milliseconds(seconds, vm)?;
                let text = String::from_utf8_lossy(&value).into_owned();
                wasnap_guest::yield_str_timeout(&text, ms).map(String::into_bytes)
            }
            None => Some(wasnap_guest::yield_bytes(&value)),
        };
        Ok(reply.map(|reply| String::from_utf8_lossy(&reply).into_owned()))
    }

    /// sleep(seconds) -> None
    ///
    /// Suspends the workflow for `seconds`: a timer kept with the saved
    /// version, which `wasnap serve` fires when the time comes (or
    /// `wasnap resume --now` at once), in whatever process that is.
    #[pyfunction]
    fn sleep(seconds: ArgIntoFloat, vm: &VirtualMachine) -> PyResult<()> {
        wasnap_guest::sleep_ms(milliseconds(seconds, vm)?);
        Ok(())
    }

    /// What a reply is sent into a generator as: nothing is `None` (as
    /// `next()` sends), JSON is what it says (`true` is `True`, `3` is
    /// `3`), and any other text is that `str`.
    fn reply_value(reply: &[u8], vm: &VirtualMachine) -> PyObjectRef {
        if reply.is_empty() {
            return vm.ctx.none();
        }
        let mut json = serde_json::Deserializer::from_slice(reply);
        match rustpython_vm::py_serde::deserialize(vm, &mut json) {
            Ok(value) if json.end().is_ok() => value,
            _ => vm
                .ctx
                .new_str(String::from_utf8_lossy(reply).into_owned())
                .into(),
        }
    }

    /// run(generator) -> its return value
    ///
    /// Drives `generator` to its end: each value it yields is published
    /// and suspends the workflow; the reply it is resumed with is sent
    /// into the generator (see `reply_value`).
    #[pyfunction]
    fn run(generator: PyObjectRef, vm: &VirtualMachine) -> PyResult {
        let mut reply = vm.ctx.none();
        loop {
            let value = match vm.call_method(&generator, "send", (reply,)) {
                Ok(value) => value,
                Err(error) if error.fast_isinstance(vm.ctx.exceptions.stop_iteration) => {
                    return Ok(error.get_arg(0).unwrap_or_else(|| vm.ctx.none()));
                }
                Err(error) => return Err(error),
            };
            let answer = wasnap_guest::yield_bytes(&value_bytes(&value, vm)?);
            reply = reply_value(&answer, vm);
        }
    }
}
