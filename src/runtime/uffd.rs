//! The Linux primitives that let a workflow's memory cost what it touches:
//! userfaultfd and the page map's `PAGEMAP_SCAN`.
//!
//! - **Asynchronous write protection** (userfaultfd `WP_ASYNC`, Linux
//!   6.7+): the kernel marks a range write-protected; the first write to
//!   each 4 KiB page clears the mark, in the kernel, without a signal or a
//!   handler. `PAGEMAP_SCAN` then lists the pages whose mark was cleared
//!   and sets it again, in one call per range: the pages written since the
//!   last capture, found without reading the memory.
//! - **Filling pages on demand** (`UFFDIO_COPY`): a range registered for
//!   missing pages blocks the thread that first touches a page until
//!   another thread places the page's bytes there; `UFFDIO_COPY` also
//!   places pages without any fault, already write-protected, which is
//!   cheaper than writing them into fresh memory (no zero fill, no fault per
//!   4 KiB page).
//!
//! Without privileges (`CAP_SYS_PTRACE`, or the `vm.unprivileged_userfaultfd`
//! sysctl) a userfaultfd only sees faults from user mode
//! (`UFFD_USER_MODE_ONLY`): that is enough to track writes and to place
//! pages, not to fill pages on demand, since a system call that reads or
//! writes a missing page (`read(2)` into the guest's memory) would fail.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// Every feature asked for: asynchronous write protection, of pages not
/// populated yet too, and of the shared-memory mappings in which wasmtime
/// places a module's initial memory image.
const FEATURES: u64 =
    UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;

const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_REGISTER_MODE_WP: u64 = 2;
const UFFDIO_COPY_MODE_WP: u64 = 2;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

/// `_IOWR(type, nr, size)` of the generic ioctl encoding (x86-64, aarch64,
/// riscv64).
const fn iowr(ty: u64, nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (ty << 8) | nr
}

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct uffd_msg` for a page fault: the event, then the fault's flags
/// and address.
#[repr(C)]
struct UffdMsg {
    event: u8,
    reserved: [u8; 7],
    flags: u64,
    address: u64,
    rest: u64,
}

const UFFDIO_API: u64 = iowr(0xAA, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = iowr(0xAA, 0x00, size_of::<UffdioRegister>());
const UFFDIO_COPY: u64 = iowr(0xAA, 0x03, size_of::<UffdioCopy>());
const UFFDIO_WRITEPROTECT: u64 = iowr(0xAA, 0x06, size_of::<UffdioWriteprotect>());

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const PAGEMAP_SCAN: u64 = iowr(b'f' as u64, 16, size_of::<PmScanArg>());
const PM_SCAN_WP_MATCHING: u64 = 1;
const PM_SCAN_CHECK_WPASYNC: u64 = 2;
const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// The kernel's page size, which every range here is aligned to.
pub(crate) const KERNEL_PAGE: usize = 4096;

/// An open userfaultfd with asynchronous write protection.
pub(crate) struct Userfaultfd {
    fd: OwnedFd,
}

impl Userfaultfd {
    /// Opens one. `kernel_faults`: it must also see faults that system
    /// calls take (needed to fill pages on demand), which takes privileges.
    pub(crate) fn open(kernel_faults: bool) -> io::Result<Userfaultfd> {
        let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        if !kernel_faults {
            flags |= UFFD_USER_MODE_ONLY;
        }
        // SAFETY: a plain system call; the result is a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor this process just got and owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let uffd = Userfaultfd { fd };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: FEATURES,
            ioctls: 0,
        };
        uffd.ioctl(UFFDIO_API, &mut api)?;
        Ok(uffd)
    }

    fn ioctl<T>(&self, request: u64, arg: &mut T) -> io::Result<()> {
        // SAFETY: every request here is paired with the structure the
        // kernel expects for it, which lives for the call.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, arg as *mut T) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Registers `range` for write protection and, if `missing`, for
    /// missing pages.
    pub(crate) fn register(&self, range: Range<usize>, missing: bool) -> io::Result<()> {
        let mut mode = UFFDIO_REGISTER_MODE_WP;
        if missing {
            mode |= UFFDIO_REGISTER_MODE_MISSING;
        }
        let mut register = UffdioRegister {
            range: to_range(range),
            mode,
            ioctls: 0,
        };
        self.ioctl(UFFDIO_REGISTER, &mut register)
    }

    /// Write-protects `range` (registered), pages not populated included.
    pub(crate) fn write_protect(&self, range: Range<usize>) -> io::Result<()> {
        let mut wp = UffdioWriteprotect {
            range: to_range(range),
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        self.ioctl(UFFDIO_WRITEPROTECT, &mut wp)
    }

    /// Places a copy of `bytes` at `dst` (a registered range whose pages
    /// are not populated), write-protected. Returns false if some page
    /// there was populated already (nothing is placed then over it).
    ///
    /// # Safety
    ///
    /// `dst..dst + bytes.len()` must be memory of this process registered
    /// with this userfaultfd, that nothing reads as Rust data meanwhile.
    pub(crate) unsafe fn place(&self, dst: usize, bytes: &[u8]) -> io::Result<bool> {
        let mut copy = UffdioCopy {
            dst: dst as u64,
            src: bytes.as_ptr() as u64,
            len: bytes.len() as u64,
            mode: UFFDIO_COPY_MODE_WP,
            copy: 0,
        };
        match self.ioctl(UFFDIO_COPY, &mut copy) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout_ms` (-1: for ever) for a fault or for `wake`
    /// to become readable. Returns the address of the fault, if one came.
    pub(crate) fn next_fault(&self, wake: &OwnedFd, timeout_ms: i32) -> io::Result<Fault> {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Fault::None)
            } else {
                Err(e)
            };
        }
        if fds[1].revents != 0 {
            return Ok(Fault::Stop);
        }
        if fds[0].revents == 0 {
            return Ok(Fault::None);
        }
        let mut msg = std::mem::MaybeUninit::<UffdMsg>::zeroed();
        // SAFETY: reads at most one message into a buffer of its size.
        let r = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                msg.as_mut_ptr().cast(),
                size_of::<UffdMsg>(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(Fault::None)
            } else {
                Err(e)
            };
        }
        // SAFETY: zeroed, then (partly) written by the kernel: any bytes
        // are a valid UffdMsg.
        let msg = unsafe { msg.assume_init() };
        if msg.event != UFFD_EVENT_PAGEFAULT {
            return Ok(Fault::None);
        }
        Ok(Fault::At(msg.address as usize))
    }
}

/// What [`Userfaultfd::next_fault`] saw.
pub(crate) enum Fault {
    /// A thread touched a missing page at this address.
    At(usize),
    /// Nothing within the timeout.
    None,
    /// The wake descriptor became readable.
    Stop,
}

fn to_range(range: Range<usize>) -> UffdioRange {
    UffdioRange {
        start: range.start as u64,
        len: (range.end - range.start) as u64,
    }
}

/// This process's page map, opened once.
fn pagemap() -> io::Result<&'static File> {
    static PAGEMAP: OnceLock<Result<File, String>> = OnceLock::new();
    match PAGEMAP.get_or_init(|| File::open("/proc/self/pagemap").map_err(|e| e.to_string())) {
        Ok(file) => Ok(file),
        Err(e) => Err(io::Error::other(e.clone())),
    }
}

/// Calls `written` with each run of 4 KiB pages of `range` written since
/// it was last write-protected or scanned, and write-protects them again.
/// `range` must be registered for asynchronous write protection.
pub(crate) fn take_written(
    range: Range<usize>,
    mut written: impl FnMut(Range<usize>),
) -> io::Result<()> {
    let pagemap = pagemap()?;
    let mut regions = [PageRegion::default(); 64];
    let mut start = range.start;
    while start < range.end {
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            start: start as u64,
            end: range.end as u64,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: PAGE_IS_WRITTEN,
            category_anyof_mask: 0,
            return_mask: PAGE_IS_WRITTEN,
        };
        // SAFETY: `arg` and the `regions` it points to live for the call.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for region in &regions[..n as usize] {
            written(region.start as usize..region.end as usize);
        }
        if arg.walk_end as usize <= start {
            return Err(io::Error::other("PAGEMAP_SCAN made no progress"));
        }
        start = arg.walk_end as usize;
    }
    Ok(())
}

/// Replaces `range` (inside a mapping of this process) with fresh
/// anonymous memory: all zeros, no page populated.
///
/// # Safety
///
/// Nothing may hold a Rust reference into `range`, and the range must be
/// memory this process may discard (a workflow's linear memory that is
/// about to be restored).
pub(crate) unsafe fn discard(range: Range<usize>) -> io::Result<()> {
    // SAFETY: the caller vouches for the range; MAP_FIXED replaces exactly
    // it, inside a reservation wasmtime keeps mapped.
    let p = unsafe {
        libc::mmap(
            range.start as *mut libc::c_void,
            range.end - range.start,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A descriptor to wake a thread blocked in [`Userfaultfd::next_fault`].
pub(crate) fn wake_pair() -> io::Result<OwnedFd> {
    // SAFETY: a plain system call; the result is a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor this process just got and owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `wake` readable.
pub(crate) fn wake(wake: &OwnedFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd.
    unsafe { libc::write(wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
}
