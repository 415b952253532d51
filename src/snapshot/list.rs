//! The non-zero pages of one memory, held in shared runs.
//!
//! Successive snapshots of a workflow share every page that did not
//! change, and most pages of a large memory do not. Were the list one
//! vector of pages, each snapshot would still take a reference to every
//! page of the memory (and drop it again with the snapshot before): at
//! 256 MiB that is 4,096 reference counts, each a cache miss, on the path
//! of every suspension. So the list is a sequence of runs, each shared as
//! a whole: a snapshot takes one reference per run, and rebuilds only the
//! runs that hold a page written since the last one.

use std::sync::Arc;

use super::Page;

/// How many places of a memory one run of a captured [`PageList`] covers:
/// the run of page `i` holds the non-zero pages `i / RUN_PAGES *
/// RUN_PAGES` onwards, at most `RUN_PAGES` of them. A snapshot that
/// changed `c` pages of a memory with `n` non-zero pages rebuilds at most
/// `c` runs (`c * RUN_PAGES` references) and shares the other `n /
/// RUN_PAGES`: 32 keeps both small for the few pages a step usually
/// changes.
pub(crate) const RUN_PAGES: usize = 32;

/// The non-zero pages of a memory, in the order they were given (by
/// ascending index in any valid snapshot).
///
/// It reads like a slice of [`Page`]s (`len`, `iter`, `get`, `[i]`) and
/// is built from a `Vec<Page>`. Cloning it, as a snapshot of a workflow
/// does with the pages that did not change, takes one reference per run
/// of `RUN_PAGES` (32) places, not one per page.
#[derive(Clone, Default)]
pub struct PageList {
    runs: Vec<Arc<[Page]>>,
    len: usize,
}

impl PageList {
    /// A list with no pages: a memory of zeros.
    pub fn new() -> PageList {
        PageList::default()
    }

    /// The list made of `runs`, in that order; empty runs are left out.
    pub(crate) fn from_runs(runs: impl IntoIterator<Item = Arc<[Page]>>) -> PageList {
        let runs: Vec<Arc<[Page]>> = runs.into_iter().filter(|r| !r.is_empty()).collect();
        let len = runs.iter().map(|r| r.len()).sum();
        PageList { runs, len }
    }

    /// The number of pages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list has no pages.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pages, in order.
    pub fn iter(&self) -> Pages<'_> {
        Pages(self.runs.iter().flat_map(|run| run.iter()))
    }

    /// The first page, if any.
    pub fn first(&self) -> Option<&Page> {
        self.runs.first().and_then(|run| run.first())
    }

    /// The page at `position` in the list (not the page of index
    /// `position`: see [`PageList::find`]), in a step per run.
    pub fn get(&self, position: usize) -> Option<&Page> {
        let mut rest = position;
        for run in &self.runs {
            match run.get(rest) {
                Some(page) => return Some(page),
                None => rest -= run.len(),
            }
        }
        None
    }

    /// The page of index `index`, found by binary search in a list sorted
    /// by index (as every valid snapshot's is); `None` where the page is
    /// all zeros.
    pub fn find(&self, index: u32) -> Option<&Page> {
        let after = self
            .runs
            .partition_point(|run| run.first().is_some_and(|p| p.index <= index));
        let run = self.runs.get(after.checked_sub(1)?)?;
        let at = run.binary_search_by_key(&index, |p| p.index).ok()?;
        Some(&run[at])
    }

    /// The pages as one vector (each page shared, not copied).
    pub fn to_vec(&self) -> Vec<Page> {
        self.iter().cloned().collect()
    }

    /// Changes the pages as one vector: `edit` gets them all, and the
    /// list is made again from what it leaves there.
    pub fn edit<T>(&mut self, edit: impl FnOnce(&mut Vec<Page>) -> T) -> T {
        let mut pages = self.to_vec();
        let result = edit(&mut pages);
        *self = pages.into();
        result
    }

    /// The shared runs, in order; none is empty.
    pub(crate) fn runs(&self) -> &[Arc<[Page]>] {
        &self.runs
    }

    /// The list's pages grouped by place: entry `k` holds the pages of
    /// indices `k * RUN_PAGES .. (k + 1) * RUN_PAGES`, for the `slots`
    /// groups of a memory of `slots * RUN_PAGES` pages or fewer. Runs that
    /// already are such groups (a captured list's are) are shared, other
    /// lists are cut again. `None` if the list is not sorted by index or
    /// has a page beyond the last group.
    pub(crate) fn by_place(&self, slots: usize) -> Option<Vec<Option<Arc<[Page]>>>> {
        let mut indices = self.iter().map(|p| p.index);
        let mut previous = indices.next();
        for index in indices {
            if previous.is_some_and(|p| p >= index) {
                return None;
            }
            previous = Some(index);
        }
        let group = |page: &Page| page.index as usize / RUN_PAGES;
        let one_group_each = self
            .runs
            .iter()
            .all(|run| group(&run[0]) == group(&run[run.len() - 1]))
            && self
                .runs
                .windows(2)
                .all(|w| group(&w[0][0]) != group(&w[1][0]));
        let cut_again;
        let runs = if one_group_each {
            &self.runs
        } else {
            cut_again = PageList::from(self.to_vec());
            &cut_again.runs
        };
        let mut grouped: Vec<Option<Arc<[Page]>>> = vec![None; slots];
        for run in runs {
            *grouped.get_mut(group(&run[0]))? = Some(Arc::clone(run));
        }
        Some(grouped)
    }
}

/// Groups the pages into runs of one group of `RUN_PAGES` places each
/// (a new run wherever the group changes or the order is broken).
impl From<Vec<Page>> for PageList {
    fn from(pages: Vec<Page>) -> PageList {
        let mut runs: Vec<Arc<[Page]>> = Vec::new();
        let mut start = 0;
        for end in 1..=pages.len() {
            let cut = end == pages.len() || {
                let (a, b) = (pages[end - 1].index, pages[end].index);
                b <= a || a as usize / RUN_PAGES != b as usize / RUN_PAGES
            };
            if cut {
                runs.push(pages[start..end].into());
                start = end;
            }
        }
        PageList::from_runs(runs)
    }
}

impl FromIterator<Page> for PageList {
    fn from_iter<I: IntoIterator<Item = Page>>(pages: I) -> PageList {
        PageList::from(pages.into_iter().collect::<Vec<_>>())
    }
}

/// The pages of a [`PageList`], in order.
#[derive(Clone)]
pub struct Pages<'a>(
    std::iter::FlatMap<std::slice::Iter<'a, Arc<[Page]>>, std::slice::Iter<'a, Page>, RunPages<'a>>,
);

/// The pages of one run.
type RunPages<'a> = fn(&'a Arc<[Page]>) -> std::slice::Iter<'a, Page>;

impl<'a> Iterator for Pages<'a> {
    type Item = &'a Page;

    fn next(&mut self) -> Option<&'a Page> {
        self.0.next()
    }
}

impl DoubleEndedIterator for Pages<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back()
    }
}

impl<'a> IntoIterator for &'a PageList {
    type Item = &'a Page;
    type IntoIter = Pages<'a>;

    fn into_iter(self) -> Pages<'a> {
        self.iter()
    }
}

impl std::ops::Index<usize> for PageList {
    type Output = Page;

    fn index(&self, position: usize) -> &Page {
        match self.get(position) {
            Some(page) => page,
            None => panic!("position {position} is beyond a list of {} pages", self.len),
        }
    }
}

/// Equal pages in the same order, however the two lists are cut into runs.
impl PartialEq for PageList {
    fn eq(&self, other: &PageList) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for PageList {}

impl std::fmt::Debug for PageList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::PageData;

    fn page(index: u32) -> Page {
        Page {
            index,
            data: PageData::new(vec![index as u8; 8]),
        }
    }

    fn indices(list: &PageList) -> Vec<u32> {
        list.iter().map(|p| p.index).collect()
    }

    #[test]
    fn a_vector_is_cut_into_runs_of_one_group_of_places() {
        let list = PageList::from(vec![page(0), page(5), page(31), page(32), page(100)]);
        let runs: Vec<Vec<u32>> = list
            .runs()
            .iter()
            .map(|r| r.iter().map(|p| p.index).collect())
            .collect();
        assert_eq!(runs, [vec![0, 5, 31], vec![32], vec![100]]);
        assert_eq!(list.len(), 5);
        assert_eq!(list[3].index, 32);
        assert_eq!(list.get(5), None);
        assert_eq!(list.find(31).map(|p| p.index), Some(31));
        assert_eq!(list.find(33), None);
        assert_eq!(list.find(100).map(|p| p.index), Some(100));
        assert_eq!(list, PageList::from_runs(list.runs().to_vec()));
    }

    #[test]
    fn any_order_is_kept_as_given() {
        let given = vec![page(3), page(1), page(1), page(2)];
        let list = PageList::from(given.clone());
        assert_eq!(list.to_vec(), given);
        assert_eq!(list.by_place(1), None, "not sorted by index");
    }

    #[test]
    fn grouping_by_place_shares_runs_that_are_groups_already() {
        let list = PageList::from(vec![page(1), page(2), page(40), page(70)]);
        let grouped = list.by_place(3).unwrap();
        assert!(Arc::ptr_eq(grouped[0].as_ref().unwrap(), &list.runs()[0]));
        assert_eq!(grouped[1].as_ref().unwrap()[0].index, 40);
        assert_eq!(grouped[2].as_ref().unwrap()[0].index, 70);
        assert_eq!(PageList::from(vec![page(64)]).by_place(2), None);

        // Runs cut elsewhere are regrouped.
        let odd = PageList::from_runs([
            Arc::from(vec![page(1), page(33)]),
            Arc::from(vec![page(34), page(35)]),
        ]);
        let grouped = odd.by_place(2).unwrap();
        let slot = |k: usize| -> Vec<u32> {
            grouped[k]
                .as_ref()
                .unwrap()
                .iter()
                .map(|p| p.index)
                .collect()
        };
        assert_eq!((slot(0), slot(1)), (vec![1], vec![33, 34, 35]));
        assert_eq!(indices(&odd), [1, 33, 34, 35]);
    }
}
