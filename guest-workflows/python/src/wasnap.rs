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
//! ```
//!
//! `yield_` (`yield` is a keyword) publishes a value, suspends the whole
//! interpreter, and returns the reply the workflow is resumed with.
//! `run` drives a generator as the article's host does with `next()` and
//! `send()`: each value the generator yields is published and suspends the
//! workflow; the reply is sent into the generator as the value of its
//! `yield` expression.

pub(crate) use wasnap::module_def;

// The module is named after the Python module it defines.
#[allow(clippy::module_inception)]
#[rustpython_vm::pymodule]
mod wasnap {
    use rustpython_vm::builtins::{PyBytes, PyStr};
    use rustpython_vm::FromArgs;
    use rustpython_vm::function::{ArgIntoFloat, OptionalArg};
    use rustpython_vm::{AsObject, PyObjectRef, PyResult, VirtualMachine};

    /// The bytes a Python value is published as: a `str` as UTF-8, `bytes`
    /// as they are, `None` as nothing (a bare suspension), anything else
    /// as its `str()`.
    fn value_bytes(value: &PyObjectRef, vm: &VirtualMachine) -> PyResult<Vec<u8>> {
        if vm.is_none(value) {
            return Ok(Vec::new());
        }
        if let Some(bytes) = value.downcast_ref::<PyBytes>() {
            return Ok(bytes.as_bytes().to_vec());
        }
        if let Some(text) = value.downcast_ref::<PyStr>() {
            return Ok(text.as_bytes().to_vec());
        }
        Ok(value.str(vm)?.as_bytes().to_vec())
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
