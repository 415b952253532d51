//! The contents of one snapshot page, shared by every snapshot, workflow
//! and store handle that holds the page, and fetched from the store only
//! when someone reads it.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use anyhow::{Result, bail};

use super::PAGE_SIZE;

/// Where the bytes of a page that was not read yet come from: the store
/// that holds it, under a key of its own.
pub(crate) trait PageSource: Send + Sync {
    /// Writes the page's [`PAGE_SIZE`] bytes into `out` and returns its
    /// name, after checking the one against the other, or says why it
    /// cannot.
    fn fetch(&self, key: i64, out: &mut [u8]) -> Result<[u8; 32]>;

    /// The page's name, without reading the page.
    fn name(&self, key: i64) -> Result<[u8; 32]>;

    /// Gets ready to fetch (opens what the first fetch would open), so
    /// that the first page asked for does not wait for it. What fails here
    /// is left to the fetch that meets it, which says why.
    fn prepare(&self) {}
}

/// The contents of one page: exactly [`PAGE_SIZE`] bytes, immutable, and
/// shared rather than copied.
///
/// Successive snapshots of a workflow share the pages that did not change,
/// so a snapshot copies only what changed, and the store recognises an
/// unchanged page by identity ([`PageData::same`]) without reading it. A
/// page loaded from the store may not have been read yet: its bytes are
/// fetched, and checked against its name, the first time
/// [`PageData::bytes`] is called, so that a workflow that touches ten
/// pages of a large memory reads ten pages.
#[derive(Clone)]
pub struct PageData(Arc<Cell>);

struct Cell {
    bytes: OnceLock<Result<Box<[u8]>, String>>,
    /// The page's BLAKE3 hash, once someone has computed or read it.
    name: OnceLock<[u8; 32]>,
    /// For a page not read yet: where to read it from.
    source: Option<(Arc<dyn PageSource>, i64)>,
    /// The page in the store's compressed form, made ahead of a commit on
    /// the thread that ran the workflow, so that a service's single
    /// writer does not compress; the store takes it when it writes the
    /// page.
    compressed: Mutex<Option<Box<[u8]>>>,
}

impl PageData {
    /// A page holding `bytes`.
    pub fn new(bytes: impl Into<Box<[u8]>>) -> PageData {
        PageData(Arc::new(Cell {
            bytes: OnceLock::from(Ok(bytes.into())),
            name: OnceLock::new(),
            source: None,
            compressed: Mutex::new(None),
        }))
    }

    /// A page holding `bytes`, whose name is known to be `name`.
    pub(crate) fn named(bytes: Box<[u8]>, name: [u8; 32]) -> PageData {
        PageData(Arc::new(Cell {
            bytes: OnceLock::from(Ok(bytes)),
            name: OnceLock::from(name),
            source: None,
            compressed: Mutex::new(None),
        }))
    }

    /// The page of `source` under `key`, read on first use.
    pub(crate) fn stored(source: Arc<dyn PageSource>, key: i64) -> PageData {
        PageData(Arc::new(Cell {
            bytes: OnceLock::new(),
            name: OnceLock::new(),
            source: Some((source, key)),
            compressed: Mutex::new(None),
        }))
    }

    /// Gets the store this page would be read from ready to read it (see
    /// [`PageSource::prepare`]), unless the page was read already.
    pub(crate) fn prepare_source(&self) {
        if let (Some((source, _)), None) = (&self.0.source, self.0.bytes.get()) {
            source.prepare();
        }
    }

    /// The page's bytes, read from the store first if they were not yet.
    /// Fails if the store cannot give them (the page is missing, or its
    /// contents do not match its name); the failure is kept, so every
    /// later call says the same.
    pub fn bytes(&self) -> Result<&[u8]> {
        let bytes = self.0.bytes.get_or_init(|| {
            let Some((source, key)) = &self.0.source else {
                unreachable!("a page without a source is created with its bytes");
            };
            let mut bytes = vec![0u8; PAGE_SIZE].into_boxed_slice();
            match source.fetch(*key, &mut bytes) {
                Ok(name) => {
                    let _ = self.0.name.set(name);
                    Ok(bytes)
                }
                Err(e) => Err(format!("{e:#}")),
            }
        });
        match bytes {
            Ok(bytes) => Ok(bytes),
            Err(e) => bail!("{e}"),
        }
    }

    /// Whether the bytes are in memory (they were given, or already read).
    pub fn is_loaded(&self) -> bool {
        self.0.bytes.get().is_some()
    }

    /// The number of bytes: [`PAGE_SIZE`] for any page that was read from
    /// a store.
    pub fn len(&self) -> usize {
        match self.0.bytes.get() {
            Some(Ok(bytes)) => bytes.len(),
            _ => PAGE_SIZE,
        }
    }

    /// Whether the page holds no bytes at all (never true of a valid page).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `self` and `other` are the very same shared page (not merely
    /// equal contents).
    pub fn same(&self, other: &PageData) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The page's BLAKE3 hash, computed once; for a page not read yet,
    /// the name its store gives it.
    pub(crate) fn name(&self) -> Result<[u8; 32]> {
        if let Some(name) = self.0.name.get() {
            return Ok(*name);
        }
        let name = match (&self.0.source, self.is_loaded()) {
            (Some((source, key)), false) => source.name(*key)?,
            _ => *blake3::hash(self.bytes()?).as_bytes(),
        };
        Ok(*self.0.name.get_or_init(|| name))
    }

    /// Whether the page's name is known already (computed, read, or given):
    /// a page a previous snapshot or its store named.
    pub(crate) fn is_named(&self) -> bool {
        self.0.name.get().is_some()
    }

    /// Keeps the page's compressed form until the store writes the page
    /// ([`PageData::take_compressed`]).
    pub(crate) fn set_compressed(&self, compressed: Box<[u8]>) {
        *self.lock_compressed() = Some(compressed);
    }

    /// The compressed form kept by [`PageData::set_compressed`], if any;
    /// it is kept no longer.
    pub(crate) fn take_compressed(&self) -> Option<Box<[u8]>> {
        self.lock_compressed().take()
    }

    fn lock_compressed(&self) -> std::sync::MutexGuard<'_, Option<Box<[u8]>>> {
        // The slot holds plain bytes: a panic while it was held leaves it
        // consistent.
        self.0
            .compressed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A handle that identifies this page without keeping its bytes alive.
    pub(crate) fn downgrade(&self) -> WeakPage {
        WeakPage(Arc::downgrade(&self.0))
    }
}

/// Identifies a [`PageData`] without keeping it alive: a cache of what was
/// stored can hold every page of a large memory at a few bytes each.
#[derive(Clone)]
pub(crate) struct WeakPage(Weak<Cell>);

impl WeakPage {
    /// Whether `page` is the page this handle was made from.
    pub(crate) fn is(&self, page: &PageData) -> bool {
        std::ptr::eq(self.0.as_ptr(), Arc::as_ptr(&page.0))
    }
}

impl From<Vec<u8>> for PageData {
    fn from(bytes: Vec<u8>) -> PageData {
        PageData::new(bytes)
    }
}

impl From<&[u8]> for PageData {
    fn from(bytes: &[u8]) -> PageData {
        PageData::new(bytes)
    }
}

/// Equal contents. Pages that cannot be read are equal to nothing but
/// themselves.
impl PartialEq for PageData {
    fn eq(&self, other: &PageData) -> bool {
        if self.same(other) {
            return true;
        }
        if let (Some(a), Some(b)) = (self.0.name.get(), other.0.name.get()) {
            return a == b;
        }
        match (self.bytes(), other.bytes()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for PageData {}

impl std::fmt::Debug for PageData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.bytes.get() {
            Some(Ok(bytes)) => write!(f, "PageData({} bytes)", bytes.len()),
            Some(Err(e)) => write!(f, "PageData(unreadable: {e})"),
            None => write!(f, "PageData(not read yet)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Page `key` is filled with the byte `key`, except that page 3 does
    /// not match its name.
    struct Counting {
        reads: AtomicUsize,
    }

    impl PageSource for Counting {
        fn fetch(&self, key: i64, out: &mut [u8]) -> Result<[u8; 32]> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            out.fill(key as u8);
            if key == 3 {
                bail!("page {key} does not match its name");
            }
            self.name(key)
        }

        fn name(&self, key: i64) -> Result<[u8; 32]> {
            Ok(*blake3::hash(&vec![key as u8; PAGE_SIZE]).as_bytes())
        }
    }

    #[test]
    fn stored_pages_are_read_once_on_first_use() {
        let source = Arc::new(Counting {
            reads: AtomicUsize::new(0),
        });
        let name = *blake3::hash(&[7u8; PAGE_SIZE]).as_bytes();
        let page = PageData::stored(source.clone(), 7);
        assert!(!page.is_loaded());
        assert_eq!(page.name().unwrap(), name);
        assert_eq!(source.reads.load(Ordering::SeqCst), 0);
        assert_eq!(page.bytes().unwrap(), &[7u8; PAGE_SIZE][..]);
        assert_eq!(page.clone().bytes().unwrap()[0], 7);
        assert_eq!(source.reads.load(Ordering::SeqCst), 1);
        assert_eq!(page, PageData::new(vec![7u8; PAGE_SIZE]));
    }

    #[test]
    fn a_page_that_cannot_be_read_says_why_every_time() {
        let source = Arc::new(Counting {
            reads: AtomicUsize::new(0),
        });
        let page = PageData::stored(source.clone(), 3);
        let first = page.bytes().unwrap_err().to_string();
        assert_eq!(first, "page 3 does not match its name");
        assert_eq!(page.bytes().unwrap_err().to_string(), first);
        assert_eq!(source.reads.load(Ordering::SeqCst), 1);
        assert_ne!(page, PageData::new(vec![3u8; PAGE_SIZE]));
    }

    #[test]
    fn identity_is_not_equality() {
        let a = PageData::new(vec![1u8; 16]);
        let b = PageData::new(vec![1u8; 16]);
        assert!(a.same(&a.clone()) && !a.same(&b));
        assert_eq!(a, b);
        let weak = a.downgrade();
        assert!(weak.is(&a) && !weak.is(&b));
    }
}
