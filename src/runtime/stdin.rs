//! Standard input that suspends: WASI's `fd_read` for an engine whose
//! options make reads of standard input suspension points
//! ([`Options::suspend_on_stdin`](crate::instrument::Options::suspend_on_stdin)).
//!
//! A read of file descriptor 0 that finds no input buffered suspends the
//! whole workflow, as `wasnap.yield` does, with an empty value. When the
//! workflow is resumed, the same call runs again while the stack rewinds:
//! the reply it was resumed with becomes the input, with a newline added
//! when it has none (a reply is a line typed at a terminal), and the read
//! returns as much of it as the guest's buffers hold. The rest stays
//! buffered, in the snapshot too, for the reads that follow. An empty reply
//! is the end of the input: that read returns 0 bytes, and the next one
//! suspends again.
//!
//! Reads of every other descriptor go to WASI's own `fd_read`.
//!
//! Such a workflow talks to a terminal, a slow one: its stdout is a
//! [`Terminal`], so that the C library buffers it by lines, as at a
//! terminal, and a question is printed before the workflow waits for its
//! answer rather than when a later process flushes the buffer.

use wasmtime::{Caller, Linker};
use wasmtime::{Result, bail};

use super::abi::{self, HostState, Pending};
use crate::instrument::WASI_READ_IMPORT;
use crate::snapshot::Stdin;

/// WASI's error number for success.
const ERRNO_SUCCESS: i32 = 0;

/// Replaces WASI's `fd_read` in `linker` by one whose reads of standard
/// input suspend; reads of other descriptors go to WASI's.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    let (module, name) = WASI_READ_IMPORT
        .split_once('.')
        .expect("the import is module.name");
    linker.allow_shadowing(true);
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, fd: i32, iovs: i32, iovs_len: i32, nread: i32| {
            if fd != 0 {
                return wasi_fd_read(&mut caller, fd, iovs, iovs_len, nread);
            }
            read_stdin(&mut caller, iovs, iovs_len, nread)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A read of standard input: answer from the buffer, or suspend.
fn read_stdin(
    caller: &mut Caller<'_, HostState>,
    iovs: i32,
    iovs_len: i32,
    nread: i32,
) -> Result<i32> {
    let resumed = abi::is_rewinding(caller, "wasi_snapshot_preview1.fd_read")?;
    let host = caller.data_mut();
    let Stdin::Suspending { buffered } = &mut host.stdin else {
        bail!("standard input is not suspending, but the module reads it through wasnap");
    };
    if resumed {
        *buffered = input_of(&host.reply);
        if buffered.is_empty() {
            // The end of the input.
            write_u32(caller, nread, 0)?;
            return Ok(ERRNO_SUCCESS);
        }
    } else if buffered.is_empty() {
        let pending = Pending::Yield {
            import: WASI_READ_IMPORT.into(),
            value: Vec::new(),
            timer: None,
        };
        abi::start_unwind(caller, pending)?;
        return Ok(ERRNO_SUCCESS);
    }
    let mut input = match &mut caller.data_mut().stdin {
        Stdin::Suspending { buffered } => std::mem::take(buffered),
        Stdin::Empty => unreachable!("checked above"),
    };
    let copied = copy_to_iovecs(caller, &input, iovs, iovs_len)?;
    input.drain(..copied);
    caller.data_mut().stdin = Stdin::Suspending { buffered: input };
    write_u32(caller, nread, copied as u32)?;
    Ok(ERRNO_SUCCESS)
}

/// What a reply gives to read: the reply, as a line.
fn input_of(reply: &[u8]) -> Vec<u8> {
    let mut input = reply.to_vec();
    if !input.is_empty() && !input.ends_with(b"\n") {
        input.push(b'\n');
    }
    input
}

/// Copies as much of `input` as the `iovs_len` buffers described at `iovs`
/// (WASI `iovec`s: pointer and length, u32 each) hold, in order; returns
/// the number of bytes copied.
fn copy_to_iovecs(
    caller: &mut Caller<'_, HostState>,
    input: &[u8],
    iovs: i32,
    iovs_len: i32,
) -> Result<usize> {
    let memory = abi::guest_memory(caller, "wasi_snapshot_preview1.fd_read")?;
    let list = abi::guest_range(memory, iovs, iovs_len.saturating_mul(8))?;
    let list = memory[list].to_vec();
    let mut copied = 0;
    for iovec in list.chunks_exact(8) {
        if copied == input.len() {
            break;
        }
        let ptr = u32::from_le_bytes(iovec[..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(iovec[4..].try_into().expect("4 bytes")) as usize;
        let count = len.min(input.len() - copied);
        let range = abi::guest_range(memory, ptr as i32, count as i32)?;
        memory[range].copy_from_slice(&input[copied..copied + count]);
        copied += count;
    }
    Ok(copied)
}

fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, value: u32) -> Result<()> {
    let memory = abi::guest_memory(caller, "wasi_snapshot_preview1.fd_read")?;
    let range = abi::guest_range(memory, ptr, 4)?;
    memory[range].copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// WASI's own `fd_read`, on the workflow's memory 0 (as a WASI import of
/// the module would be). Its generated trait is the only way to reach it
/// from a host function: calling its `Func` from here would find no
/// caller instance, and so no memory.
fn wasi_fd_read(
    caller: &mut Caller<'_, HostState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nread: i32,
) -> Result<i32> {
    use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1 as _;
    let Some(memory) = caller.data().handles.and_then(|h| h.memory) else {
        bail!("the module has no memory 0 for WASI to read into");
    };
    // What WASI may copy in one call, as its own imports are given it.
    let fuel = wasmtime::AsContextMut::as_context_mut(&mut *caller).hostcall_fuel();
    let (bytes, host) = memory.data_and_store_mut(&mut *caller);
    host.wasi.set_hostcall_fuel(fuel);
    let mut guest = wiggle::GuestMemory::Unshared(bytes);
    let iovs = wiggle::GuestPtr::new((iovs as u32, iovs_len as u32));
    let read = wasmtime_wasi::runtime::in_tokio(host.wasi.fd_read(&mut guest, fd.into(), iovs));
    match read {
        Ok(size) => {
            write_u32(caller, nread, size)?;
            Ok(ERRNO_SUCCESS)
        }
        Err(error) => Ok(i32::from(u16::from(error.downcast()?))),
    }
}

/// An output stream that says it is a terminal (see the module
/// documentation); it writes where `S` writes.
pub(crate) struct Terminal<S>(pub S);

impl<S> wasmtime_wasi::cli::IsTerminal for Terminal<S> {
    fn is_terminal(&self) -> bool {
        true
    }
}

impl<S: wasmtime_wasi::cli::StdoutStream> wasmtime_wasi::cli::StdoutStream for Terminal<S> {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        self.0.async_stream()
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        self.0.p2_stream()
    }
}
